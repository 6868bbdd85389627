"""maml, fomaml, reptile, imaml and fo-bmaml-jvp against closed forms and each other, float64."""

import pytest
import torch

import bilevel
from bilevel.testing.contracts import PushedByJvp, RunOnly
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic
from tests.conftest import seeded
from tests.toy_problems import SharedDecoderRegression, TinyMLPRegression

CONVERGED = bilevel.solvers.GD(lr=2 / 13, steps=120)  # spectrum [2, 11]: contraction 9/13


def quadratic(per_coordinate_lam=True, **kwargs):
    problem = Quadratic(**{"dim": 6, "kappa": 10.0, "lam": 1.0, "n_tasks": 4,
                           "distinct_val": True} | kwargs)
    h = problem.init_hyper(seeded(1))
    if per_coordinate_lam:
        h["log_lam"] = {"w": torch.linspace(-0.5, 0.5, problem.dim, dtype=torch.float64)}
    return problem, h, problem.all_tasks()


def hypergradient(problem, h, tasks, solver, method, **options):
    return bilevel.hypergradient(problem, h, tasks, solver=solver, method=method, **options)


# Closed forms for K steps of GD on the quadratic, phi_{k+1} = phi_k - lr (M phi_k - r),
# M = A + Lam, r = Lam theta - b, phi_0 = theta. With phi* = M^-1 r and T = I - lr M,
# phi_K = phi* + T^K (theta - phi*); with M = U diag(m) U^T, T^K = U diag(t^K) U^T, t = 1 - lr m.

def k_step_iterate(problem, h, tasks, lr, steps):
    """phi_K and its pieces, batched over tasks."""
    lam = problem._lam_vector(h)
    theta = h["theta"]["w"]
    m, u = torch.linalg.eigh(tasks["A"] + torch.diag(lam))
    t = 1 - lr * m
    phi_star = problem.solutions(h, tasks)
    gap = theta - phi_star

    def power(x):  # T^K x, batched
        return torch.einsum("nij,nj,nkj,nk->ni", u, t**steps, u, x)

    return phi_star + power(gap), {"lam": lam, "u": u, "t": t, "gap": gap, "power": power}


def maml_closed_form(problem, h, tasks, lr, steps):
    """d/dh val_loss(phi_K(h)): the exact gradient of MAML's K-step objective.

    d phi_K / d theta = M^-1 Lam + T^K (I - M^-1 Lam), and along log_lam_j
    d phi_K = (I - T^K) M^-1 e_j s_j + dT^K (theta - phi*),  s = lam (theta - phi*),
    where dT^K, the derivative of T^K along dT = -lr lam_j e_j e_j^T, is (Daleckii-Krein)
    U [(U^T dT U) o L] U^T with L_ab = (t_a^K - t_b^K) / (t_a - t_b), L_aa = K t_a^(K-1).
    """
    phi, p = k_step_iterate(problem, h, tasks, lr, steps)
    lam, u, t = p["lam"], p["u"], p["t"]
    matrix = tasks["A"] + torch.diag(lam)
    v = torch.einsum("nij,nj->ni", tasks["C"], phi) + tasks["d"]  # d_phi val_loss at phi_K
    w = p["power"](v)
    residual = torch.linalg.solve(matrix, v - w)  # M^-1 (I - T^K) v
    grad_theta = w + lam * residual
    difference = t[:, :, None] - t[:, None, :]
    same = difference.abs() < 1e-12
    divided = torch.where(same, steps * t[:, :, None] ** (steps - 1),
                          (t[:, :, None] ** steps - t[:, None, :] ** steps)
                          / torch.where(same, 1.0, difference))
    v_eig = torch.einsum("nja,nj->na", u, v)
    gap_eig = torch.einsum("nja,nj->na", u, p["gap"])
    through_power = -lr * lam * torch.einsum("na,nja,nab,njb,nb->nj", v_eig, u, divided, u,
                                             gap_eig)
    grad_log_lam = residual * lam * p["gap"] + through_power
    grad_log_lam = grad_log_lam.mean(0)
    if isinstance(h["log_lam"], dict):
        grad_log_lam = {"w": grad_log_lam}
    else:
        grad_log_lam = grad_log_lam.sum()
    return {"theta": {"w": grad_theta.mean(0)}, "log_lam": grad_log_lam}


def zero_log_lam(h):
    """Both approximations give log_lam only the direct term, zero on the quadratic."""
    return {"log_lam": tree_map(torch.zeros_like, h["log_lam"])}


@pytest.mark.parametrize("steps", [1, 5, 20])
@pytest.mark.parametrize("per_coordinate_lam", [False, True])
def test_maml_matches_the_closed_form_of_the_k_step_gradient(steps, per_coordinate_lam):
    problem, h, tasks = quadratic(per_coordinate_lam)
    solver = bilevel.solvers.GD(lr=0.07, steps=steps)
    grad, info = hypergradient(problem, h, tasks, solver, "maml")
    reference = maml_closed_form(problem, h, tasks, 0.07, steps)
    assert relative_error(grad, reference) < 1e-9
    # log_lam checked on its own, since theta dominates the norm (exactly 0 at one step).
    torch.testing.assert_close(grad["log_lam"], reference["log_lam"], rtol=1e-9, atol=1e-14)
    assert info["inner_grad_evals"] == 4 * steps and info["hvps"] == 4 * steps
    # The K-step gradient is not the hypergradient of the converged problem.
    assert relative_error(grad, problem.meta_gradient(h, tasks)) > 1e-2


@pytest.mark.parametrize("method, options", [("maml", {}), ("imaml", {"cg_steps": 12}),
                                              ("fo-bmaml-jvp", {})])
def test_converged_estimators_match_the_closed_form(method, options):
    problem, h, tasks = quadratic()
    grad, info = hypergradient(problem, h, tasks, CONVERGED, method, **options)
    assert info["inner_grad_norm"].max() < 1e-13
    assert relative_error(grad, problem.meta_gradient(h, tasks)) < 1e-10


def test_fomaml_and_reptile_match_their_closed_forms_and_are_biased():
    problem, h, tasks = quadratic()
    lr, steps = 0.07, 15
    phi, _ = k_step_iterate(problem, h, tasks, lr, steps)
    solver = bilevel.solvers.GD(lr=lr, steps=steps)
    fomaml, info = hypergradient(problem, h, tasks, solver, "fomaml")
    val_gradient = torch.einsum("nij,nj->ni", tasks["C"], phi) + tasks["d"]
    reference = {"theta": {"w": val_gradient.mean(0)}} | zero_log_lam(h)
    assert relative_error(fomaml, reference) < 1e-12
    reptile, _ = hypergradient(problem, h, tasks, solver, "reptile")
    reference = {"theta": {"w": (h["theta"]["w"] - phi).mean(0) / (steps * lr)}} | zero_log_lam(h)
    assert relative_error(reptile, reference) < 1e-12
    assert info["hvps"] == 0 and info["inner_grad_evals"] == 4 * steps
    exact = problem.meta_gradient(h, tasks)
    for method in ("fomaml", "reptile"):
        converged, _ = hypergradient(problem, h, tasks, CONVERGED, method)
        assert relative_error(converged, exact) > 0.5


def test_reptile_needs_a_step_size():
    class NoStepSize(bilevel.solvers.InnerSolver):
        steps = 3

        def run(self, grad_fn, init):
            return init, {}

    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.BilevelError, match="reptile needs a solver with a step size lr"):
        hypergradient(problem, h, tasks, NoStepSize(), "reptile")


def test_imaml_error_falls_with_cg_steps_and_tol_stops_early():
    problem, h, tasks = quadratic()
    exact = problem.meta_gradient(h, tasks)
    errors = [relative_error(hypergradient(problem, h, tasks, CONVERGED, "imaml",
                                           cg_steps=k)[0], exact) for k in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2] and errors[0] > 1e-2, errors
    grad, info = hypergradient(problem, h, tasks, CONVERGED, "imaml", cg_steps=40, tol=1e-9)
    assert info["hvps"] == 4 * 40 and (info["cg_residual"] <= 1e-9).all()
    # dim 6: CG is exact after 6 steps, up to round-off
    assert (info["cg_steps"] >= 4).all() and (info["cg_steps"] <= 7).all()
    assert relative_error(grad, exact) < 1e-10


def test_imaml_with_tol_batched_equals_each_task_alone():
    problem, h, tasks = quadratic(dim=12, kappa=1000.0)
    tasks["d"] = tasks["d"] * torch.logspace(0, 6, 4, dtype=torch.float64)[:, None]
    solver = bilevel.solvers.GD(lr=1 / 1002, steps=20)
    batched, info = hypergradient(problem, h, tasks, solver, "imaml", cg_steps=20, tol=1e-6)
    assert len(set(info["cg_steps"].tolist())) > 1  # the tasks stopped at different steps
    singles = [hypergradient(problem, h, {k: v[i:i + 1] for k, v in tasks.items()}, solver,
                             "imaml", cg_steps=20, tol=1e-6)[0] for i in range(4)]
    looped = tree_map(lambda *g: torch.stack(g).mean(0), *singles)
    assert relative_error(batched, looped) < 1e-13


def test_forward_mode_is_the_limit_of_lock_stepped_differences_not_maml():
    """At finite K the JVP differentiates the K-step perturbed iterate: symmetric lock-stepped
    differences with a small nu converge to it, while MAML's K-step gradient and the exact
    hypergradient are different quantities."""
    problem, h, tasks = quadratic(kappa=100.0)
    solver = bilevel.solvers.GD(lr=1 / 102, steps=60)
    forward, info = hypergradient(problem, h, tasks, solver, "fo-bmaml-jvp")
    assert info["inner_grad_norm"].min() > 1e-2  # far from converged
    assert info["hvps"] == info["inner_grad_evals"] == 4 * 60
    errors = [relative_error(hypergradient(problem, h, tasks, solver, "fo-bmaml", nu=nu)[0],
                             forward) for nu in (1e-4, 1e-6)]
    assert errors[1] < 1e-9 and 5e3 < errors[0] / errors[1] < 2e4, errors  # O(nu^2) to it
    maml, _ = hypergradient(problem, h, tasks, solver, "maml")
    assert relative_error(maml, forward) > 1e-2
    assert relative_error(forward, problem.meta_gradient(h, tasks)) > 1e-2


@pytest.mark.parametrize("solver", [
    bilevel.solvers.GD(lr=0.05, steps=8),
    bilevel.solvers.Nesterov(lr=0.05, steps=8, momentum=0.7),
    bilevel.solvers.Nesterov(lr=0.05, steps=8, tol=0.04),  # tasks freeze after 3-8 steps
], ids=["gd", "nesterov", "nesterov-tol"])
def test_tangent_recursion_is_forward_mode_through_the_solve(solver):
    """fo-bmaml-jvp's tangent recursion (HVPs by reverse over reverse; the solver's steps
    mapping the tangents, or pushed by jvp) gives the derivative that forward mode through
    the whole K-step solve gives, on an MLP far from its solution."""
    problem = TinyMLPRegression()
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(5, seeded(1))
    reference, _ = hypergradient(problem, h, tasks, RunOnly(solver), "fo-bmaml-jvp")
    assert relative_error(reference, hypergradient(problem, h, tasks, solver, "fomaml")[0]) > 1e-3
    for recursion in (solver, PushedByJvp(solver)):
        grad, info = hypergradient(problem, h, tasks, recursion, "fo-bmaml-jvp")
        assert info["inner_grad_norm"].min() > 1e-3
        assert relative_error(grad, reference) < 1e-12


@pytest.mark.parametrize("problem_class, solver", [
    (SharedDecoderRegression, bilevel.solvers.Nesterov(lr=0.5, steps=100, momentum=0.6)),
    (TinyMLPRegression, bilevel.solvers.Nesterov(lr=0.1, steps=100, momentum=0.7)),
])
def test_nonlinear_problems_match_exact(problem_class, solver):
    problem = problem_class()
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(5, seeded(1))
    exact, info = hypergradient(problem, h, tasks, solver, "exact")
    assert info["inner_grad_norm"].max() < 1e-12
    for method, options in [("imaml", {"cg_steps": 40}), ("fo-bmaml-jvp", {}), ("maml", {})]:
        grad, _ = hypergradient(problem, h, tasks, solver, method, **options)
        assert relative_error(grad, exact) < 1e-10, method
    fomaml, _ = hypergradient(problem, h, tasks, solver, "fomaml")
    assert relative_error(fomaml, exact) > 1e-2


@pytest.mark.parametrize("method, options, message", [
    ("imaml", {"cg_steps": 0}, "cg_steps must be an integer >= 1, got 0"),
    ("imaml", {"cg_steps": 2.5}, "cg_steps must be an integer >= 1, got 2.5"),
    ("imaml", {"tol": -1.0}, "tol must be a finite number > 0, got -1.0"),
    ("imaml", {"nu": 1e-3}, "unknown option(s) nu for method 'imaml'; valid options are "
                            "cg_steps, tol"),
    ("maml", {"cg_steps": 3}, "unknown option(s) cg_steps for method 'maml'"),
    ("fo-bmaml-jvp", {"nu": 1e-3}, "unknown option(s) nu for method 'fo-bmaml-jvp'"),
])
def test_invalid_options_name_the_option(method, options, message):
    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.BilevelError) as error:
        hypergradient(problem, h, tasks, CONVERGED, method, **options)
    assert message in str(error.value)


def test_an_estimator_object_is_used_as_given_and_equals_its_name_and_options(monkeypatch):
    """method= an Estimator object: the same result as its name and options, bit for bit,
    and nothing is built from a name (a run builds its estimator once, not per step)."""
    problem, h, tasks = quadratic()
    by_name, _ = hypergradient(problem, h, tasks, CONVERGED, "fo-bmaml", nu=1e-4,
                               scheme="five-point")
    estimator = bilevel.estimators.fobmaml.FOBMAML(nu=1e-4, scheme="five-point")
    builds = []
    monkeypatch.setattr(bilevel.estimators.estimators, "build",
                        lambda *args, **kwargs: builds.append(args))
    for _ in range(2):
        by_object, info = hypergradient(problem, h, tasks, CONVERGED, estimator)
        for a, b in zip(torch.utils._pytree.tree_leaves(by_name),
                        torch.utils._pytree.tree_leaves(by_object), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert builds == [] and info.method == "fo-bmaml" and info["nu"] == 1e-4


def test_an_estimator_object_takes_no_options_and_a_method_must_be_one(monkeypatch):
    class Plain:  # registered, but not an Estimator: its capabilities are undeclared
        def __call__(self, problem, h, tasks, solver):
            raise AssertionError("never called")

    monkeypatch.setitem(bilevel.estimators.estimators._entries, "plain", Plain)
    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.InvalidInputError, match="method: 'plain' is registered as "
                                                        ".*Plain, which does not subclass"):
        hypergradient(problem, h, tasks, CONVERGED, "plain")
    estimator = bilevel.estimators.fobmaml.FOBMAML()
    with pytest.raises(bilevel.InvalidInputError, match="options nu given with the estimator"):
        hypergradient(problem, h, tasks, CONVERGED, estimator, nu=1e-3)
    with pytest.raises(bilevel.InvalidInputError, match="method must be a registered name or "
                                                        "a bilevel.estimators.Estimator"):
        hypergradient(problem, h, tasks, CONVERGED, 42)


def test_capabilities_are_declared_on_the_estimator_base():
    """Every registered estimator subclasses Estimator, whose capabilities have defaults."""
    base = bilevel.estimators.Estimator
    assert base.assumes_converged_inner is False and base.not_compiled is None
    for name in bilevel.estimators.estimators.names():
        unit = bilevel.estimators.estimators.get(name)
        assert issubclass(unit, base) and unit().name == name
    assert bilevel.estimators.estimators.get("exact").not_compiled is not None
    assert bilevel.estimators.estimators.get("imaml").assumes_converged_inner
    assert not bilevel.estimators.estimators.get("maml").assumes_converged_inner
