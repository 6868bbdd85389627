"""neumann and darts against closed forms, `exact` and autograd, float64."""

import json

import pytest
import torch
from torch.func import grad, vmap

import bilevel
import bilevel.testing
from bilevel.estimators.neumann import SeriesDivergenceError
from bilevel.inner import solve_inner
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic
from tests.conftest import seeded
from tests.toy_problems import SharedDecoderRegression

CONVERGED = bilevel.solvers.GD(lr=1 / 11, steps=600)  # spectrum [2, 11]: contraction 9/11


def quadratic(dim=8, per_coordinate_lam=False):
    problem = Quadratic(dim=dim, kappa=10.0, lam=1.0, n_tasks=6, distinct_val=True)
    h = problem.init_hyper(seeded(1))
    if per_coordinate_lam:
        h["log_lam"] = {"w": torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)}
    return problem, h, problem.all_tasks()


def hypergradient(problem, h, tasks, method, solver=CONVERGED, **options):
    return bilevel.hypergradient(problem, h, tasks, solver=solver, method=method, **options)


# neumann ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_coordinate_lam", [False, True])
def test_neumann_with_enough_terms_equals_exact(per_coordinate_lam):
    problem, h, tasks = quadratic(per_coordinate_lam=per_coordinate_lam)
    exact, _ = hypergradient(problem, h, tasks, "exact")
    grad_, info = hypergradient(problem, h, tasks, "neumann", terms=200)
    assert relative_error(grad_, exact) < 1e-8
    assert relative_error(grad_["log_lam"], exact["log_lam"]) < 1e-8
    assert info["hvps"] == 6 * 199 and info["mixed_products"] == 6
    assert info["alpha"] == CONVERGED.lr  # the default: the solver's step
    # ... and not by accident: 20 terms are visibly short of it (rate 9/11 per term).
    few, _ = hypergradient(problem, h, tasks, "neumann", terms=20)
    assert relative_error(few, exact) > 1e-3


def test_neumann_truncated_series_matches_its_closed_form():
    """With v_T = alpha sum_{j<T} (I - alpha M)^j b, M = A + lam I, b = C phi* + d (the
    quadratic's B-MAML form): grad_theta = mean lam v_T, grad_log_lam = mean lam <theta -
    phi*, v_T>. T = 3 terms: an off-by-one in the terms would be a visible difference."""
    problem, h, tasks = quadratic()
    alpha, terms = 0.07, 3
    grad_, _ = hypergradient(problem, h, tasks, "neumann", terms=terms, alpha=alpha)
    lam = problem.lam(h)
    phi = problem.solutions(h, tasks)
    b = torch.einsum("nij,nj->ni", tasks["C"], phi) + tasks["d"]
    step = torch.eye(problem.dim, dtype=torch.float64) - alpha * (tasks["A"] + lam * torch.eye(
        problem.dim, dtype=torch.float64))
    term, total = b, b
    for _ in range(terms - 1):
        term = torch.einsum("nij,nj->ni", step, term)
        total = total + term
    v = alpha * total
    reference = {"theta": {"w": (lam * v).mean(0)},
                 "log_lam": (lam * ((h["theta"]["w"] - phi) * v).sum(1)).mean()}
    assert relative_error(grad_, reference) < 1e-12
    torch.testing.assert_close(grad_["log_lam"], reference["log_lam"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha, first", [(1 / 11, 40), (1.9 / 11, 40)],
                         ids=["slowest-smallest", "slowest-largest"])
def test_neumann_error_falls_at_the_rate_of_the_spectrum(alpha, first):
    """error(T) = |(I - alpha H)^T H^-1 b| in the mixed product: each term multiplies it by
    max |1 - alpha lambda| over the inner Hessian's eigenvalues lambda once the slowest mode
    dominates (spectrum {2, 4.16, 11}; alpha = 1/11: lambda = 2 is slowest, 9/11;
    alpha = 1.9/11: lambda = 11 is, 0.9)."""
    problem, h, tasks = quadratic(dim=3)
    exact, _ = hypergradient(problem, h, tasks, "exact")
    eigenvalues = torch.linalg.eigvalsh(tasks["A"] + problem.lam(h) * torch.eye(3))
    predicted = (1 - alpha * eigenvalues).abs().max().item()
    errors = [relative_error(hypergradient(problem, h, tasks, "neumann", terms=terms,
                                           alpha=alpha)[0], exact)
              for terms in range(first, first + 4)]
    ratios = [b / a for a, b in zip(errors[:-1], errors[1:], strict=True)]
    assert errors[-1] > 1e-9  # far above round-off
    for ratio in ratios:
        assert abs(ratio / predicted - 1) < 1e-3, (predicted, ratios)


def test_neumann_diverging_series_raises_a_divergence_error():
    """alpha = 0.3 > 2 / 11: the terms grow by |1 - 0.3 * 11| = 2.3 each."""
    problem, h, tasks = quadratic()
    with pytest.raises(SeriesDivergenceError,
                       match=r"neumann: the Neumann series diverges: its terms grew by up to "
                             r"2\.3 per term in task\(s\) \[0, 1, 2, 3, 4, 5\] of 6; "
                             r"alpha=0\.3 must be below 2 / \(the largest eigenvalue") as error:
        hypergradient(problem, h, tasks, "neumann", alpha=0.3)
    assert isinstance(error.value, bilevel.DivergenceError) and error.value.step is None
    # Just inside the convergence range the terms shrink (rate 0.9) and nothing is raised.
    _, info = hypergradient(problem, h, tasks, "neumann", alpha=1.9 / 11)
    assert 0.85 < info["neumann_growth"].max() <= 0.9 + 1e-12


def test_neumann_divergence_stops_a_run(tmp_path):
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=4)
    with pytest.raises(bilevel.DivergenceError, match="the Neumann series diverges"):
        bilevel.meta_train(problem, solver=bilevel.solvers.GD(lr=0.05, steps=10),
                           method={"name": "neumann", "alpha": 0.5}, steps=3,
                           tasks_per_step=2, progress=False, out=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps_completed"] == 0


def test_neumann_cost_counts_with_one_term_and_with_several():
    """One term takes no Hessian-vector product (and no pull-back); more reuse one."""
    contract = bilevel.testing.EstimatorContract()
    for terms in (1, 5):
        contract.test_cost_counts_the_derivatives_evaluated("neumann", {"terms": terms})


# darts -----------------------------------------------------------------------------------


def darts_by_autograd(problem, h, tasks, solver, xi):
    """d/dh val_loss(phi_K - xi d_phi g(phi_K, h), h) with phi_K held fixed, by autograd
    (second order), averaged over the tasks."""
    phi, _ = vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)

    def one_task(phi, task):
        def unrolled(h):
            g_phi = grad(problem.inner_objective)(phi, h, task)
            return problem.val_loss(tree_map(lambda p, g: p - xi * g, phi, g_phi), h, task)

        return grad(unrolled)(h)

    return tree_map(lambda g: g.mean(0), vmap(one_task)(phi, tasks))


@pytest.mark.parametrize("problem_name", ["quadratic", "shared-decoder"])
def test_darts_equals_the_derivative_of_its_unrolled_step(problem_name):
    """On these problems d_h g is quadratic in phi, so the central difference is exact: the
    estimator equals the autograd derivative to round-off. The shared decoder's val_loss
    reads h (a direct term); 5 inner steps leave phi_K away from phi*."""
    if problem_name == "quadratic":
        problem, h, tasks = quadratic(per_coordinate_lam=True)
    else:
        problem = SharedDecoderRegression()
        h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(4, seeded(1))
    solver, xi = bilevel.solvers.GD(lr=0.05, steps=5), 0.03
    estimate, info = hypergradient(problem, h, tasks, "darts", solver=solver, xi=xi)
    reference = darts_by_autograd(problem, h, tasks, solver, xi)
    assert relative_error(estimate, reference) < 1e-10
    for key in reference:
        assert relative_error(estimate[key], reference[key]) < 1e-10, key
    n = tasks["A" if "A" in tasks else "x"].shape[0]
    assert info["xi"] == xi and info["hvps"] == 0 and info["mixed_products"] == 0
    assert info["grad_evals"] == n * (5 + 3) and info["inner_grad_evals"] == n * 5


def test_darts_default_step_is_the_solvers_and_it_is_biased():
    """At converged solves phi' = phi_K = phi*: darts is the implicit gradient with H^-1
    replaced by xi I (neumann with one term and alpha = xi), far from grad F."""
    problem, h, tasks = quadratic()
    estimate, info = hypergradient(problem, h, tasks, "darts")
    assert info["xi"] == CONVERGED.lr
    one_term, _ = hypergradient(problem, h, tasks, "neumann", terms=1)
    assert relative_error(estimate, one_term) < 1e-12
    assert relative_error(estimate, problem.meta_gradient(h, tasks)) > 0.5


# Options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method, options, message", [
    ("neumann", {"terms": 0}, "terms must be an integer >= 1, got 0"),
    ("neumann", {"terms": 2.5}, "terms must be an integer >= 1, got 2.5"),
    ("neumann", {"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
    ("neumann", {"alpha": -0.1}, "alpha must be a finite number > 0, got -0.1"),
    ("neumann", {"alpha": float("inf")}, "alpha must be a finite number > 0, got inf"),
    ("darts", {"xi": 0.0}, "xi must be a finite number > 0, got 0.0"),
    ("darts", {"xi": -1}, "xi must be a finite number > 0, got -1"),
])
def test_bad_options_are_one_line_errors_naming_the_key(method, options, message):
    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.InvalidInputError) as error:
        hypergradient(problem, h, tasks, method, **options)
    assert str(error.value) == message


@pytest.mark.parametrize("method, key", [("neumann", "alpha"), ("darts", "xi")])
def test_a_solver_without_lr_needs_the_step_given(method, key):
    class NoStepSize(bilevel.solvers.InnerSolver):
        steps = 3

        def run(self, grad_fn, init):
            return init, {"grad_norm": torch.tensor(1.0), "steps": torch.tensor(3)}

    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.InvalidInputError,
                       match=rf"^{method} needs {key}, or a solver with a step size lr"):
        hypergradient(problem, h, tasks, method, solver=NoStepSize())
    grad_, _ = hypergradient(problem, h, tasks, method, solver=NoStepSize(), **{key: 0.05})
    assert torch.isfinite(grad_["theta"]["w"]).all()
