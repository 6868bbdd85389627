"""The single-loop stochastic solvers (soba, amigo, bome, f2sa) against closed forms on the
paper's quadratic, in float64: with h fixed, their directions tend to the exact
hypergradient (f2sa: to its penalty's direction, in closed form); driving h with the outer
step reaches the bilevel solution; their options and state are checked."""

import pytest
import torch
from torch.func import grad

import bilevel
from bilevel.errors import InvalidInputError
from bilevel.estimators import estimators
from bilevel.problem_view import ProblemView
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic
from tests.conftest import aot_eager

SOLVER = bilevel.solvers.GD(lr=0.25, steps=1)  # inner Hessians' eigenvalues in [2, 4]
EXACT = bilevel.solvers.GD(lr=0.25, steps=200)


def quadratic(n_tasks=2):
    problem = Quadratic(dim=4, kappa=3.0, n_tasks=n_tasks, distinct_val=True, seed=1)
    return problem, problem.init_hyper(torch.Generator().manual_seed(0)), problem.all_tasks()


def iterate(method, problem, h, tasks, calls, outer_lr=0.0, **options):
    """`calls` iterations of the estimator from a fresh state, h <- h - outer_lr direction;
    (the last direction, h, info)."""
    estimator, state = estimators.build(method, options), None
    for _ in range(calls):
        direction, info = estimator(problem, h, tasks, SOLVER, state=state)
        state = info.state
        h = tree_map(lambda x, d: x - outer_lr * d, h, direction)
    return direction, h, info


@pytest.mark.parametrize("method, options, calls", [("soba", {"decay": 0.0}, 150),
                                                    ("amigo", {"inner_steps": 3}, 60)])
def test_with_h_fixed_the_direction_tends_to_the_exact_hypergradient(method, options, calls):
    problem, h, tasks = quadratic()
    exact, _ = bilevel.hypergradient(problem, h, tasks, solver=EXACT, method="exact")
    early, _, _ = iterate(method, problem, h, tasks, 1, **options)
    direction, _, _ = iterate(method, problem, h, tasks, calls, **options)
    assert relative_error(early, exact) > 1e-2  # the premise: it starts far
    assert relative_error(direction, exact) < 1e-8


def penalty_direction(problem, h, task, lam):
    """F2SA's direction at its penalty's solution: y = argmin g + val_loss / lam (the
    quadratic's phi*_nu, nu = 1 / lam), z = phi*: d_h val_loss(y) + lam (d_h g(y) - d_h g(z))."""
    y, z = problem.solution(h, task, nu=1 / lam), problem.solution(h, task)

    def g_h(phi):
        return grad(lambda h: problem.inner_objective(phi, h, task))(h)

    f_h = grad(lambda h: problem.val_loss(y, h, task))(h)
    return tree_map(lambda f, gy, gz: f + lam * (gy - gz), f_h, g_h(y), g_h(z))


@pytest.mark.parametrize("lam", [3.0, 10.0])
def test_f2sa_with_a_fixed_penalty_tends_to_its_closed_form(lam):
    """With delta_lmbda = 0 the penalty stays lam; the direction tends to the penalty's, whose
    distance to the exact hypergradient falls like 1 / lam."""
    problem, h, tasks = quadratic(n_tasks=1)
    task = {k: v[0] for k, v in tasks.items()}
    expected = penalty_direction(problem, h, task, lam)
    direction, _, info = iterate("f2sa", problem, h, tasks, 60, lmbda0=lam, delta_lmbda=0.0,
                                 decay=False, lr=0.2 / lam, inner_steps=10)
    assert relative_error(direction, expected) < 1e-8
    assert info["lmbda"].tolist() == [lam]
    exact, _ = bilevel.hypergradient(problem, h, tasks, solver=EXACT, method="exact")
    assert 0.1 / lam < relative_error(direction, exact) < 3 / lam


def test_f2sa_grows_its_penalty_on_benchmark_bilevels_schedule():
    """lambda_{t+1} = lambda_t + delta_lmbda / (t + 1)^(1/7) from lmbda0 (benchmark_bilevel's
    solvers/f2sa.py); info["lmbda"] is the penalty the call used."""
    problem, h, tasks = quadratic()
    used = []
    estimator, state = estimators.build("f2sa", {"lr": 0.05, "inner_steps": 1}), None
    for _ in range(4):
        _, info = estimator(problem, h, tasks, SOLVER, state=state)
        state = info.state
        used.append(info["lmbda"][0].item())
    expected = [1.0]
    for t in range(3):
        expected.append(expected[-1] + 0.1 / (t + 1) ** (1 / 7))
    assert used == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method, options, calls, tol", [
    ("soba", {"decay": 0.0}, 300, 1e-6),
    ("amigo", {"inner_steps": 3}, 200, 1e-3),
    ("bome", {"inner_steps": 5}, 200, 1e-2),
    ("f2sa", {"lmbda0": 1.0, "delta_lmbda": 0.0, "decay": False, "lr": 0.2, "inner_steps": 5},
     200, 1e-2),
])
def test_driving_h_reaches_the_bilevel_solution(method, options, calls, tol):
    """theta learned with lam = 1 fixed: phi*(theta) = (A + I)^-1 (theta - b) and
    val_loss is least at phi = -C^-1 d, so theta* = b - (A + I) C^-1 d. (F2SA's fixed point
    is theta* for any lambda here: its direction lam (z - y) vanishes only at y = z.)"""
    base, h, tasks = quadratic(n_tasks=1)
    problem = ProblemView(base, fixed={("log_lam",): h["log_lam"]})
    task = {k: v[0] for k, v in tasks.items()}
    theta = task["b"] - (task["A"] + torch.eye(4, dtype=torch.float64)) @ torch.linalg.solve(
        task["C"], task["d"])
    start = {"theta": h["theta"]}
    _, learned, _ = iterate(method, problem, start, tasks, calls, outer_lr=0.5, **options)
    assert relative_error(start["theta"]["w"], theta) > 0.5
    assert relative_error(learned["theta"]["w"], theta) < tol


@pytest.mark.parametrize("method, options, key", [
    ("soba", {"lr": 0.0}, "lr"), ("soba", {"decay": -0.5}, "decay"),
    ("amigo", {"inner_steps": 0}, "inner_steps"), ("bome", {"eta": -1.0}, "eta"),
    ("bome", {"inner_steps": 0}, "inner_steps"), ("f2sa", {"lmbda0": 0.0}, "lmbda0"),
    ("f2sa", {"delta_lmbda": -0.1}, "delta_lmbda"), ("f2sa", {"lr": float("nan")}, "lr"),
])
def test_bad_options_are_one_line_errors_naming_the_key(method, options, key):
    with pytest.raises(InvalidInputError, match=key) as error:
        estimators.build(method, options)
    assert "\n" not in str(error.value)


def test_state_goes_with_stateful_estimators_only():
    problem, h, tasks = quadratic()
    _, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="soba")
    with pytest.raises(InvalidInputError, match="state: method 'exact'"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="exact",
                              state=info.state)
    with pytest.raises(InvalidInputError, match="on_non_finite='drop'"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="soba",
                              on_non_finite="drop")
    with pytest.raises(InvalidInputError, match=r"state\['v'\]\['w'\]"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="soba",
                              state=info.state | {"v": {"w": info.state["v"]["w"][:, :3]}})
    assert bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="exact")[1].state is None


def test_meta_train_keeps_the_state_across_steps():
    """meta_train with soba equals the loop of its calls with SGD on h."""
    base, h, tasks = quadratic(n_tasks=1)
    result = bilevel.meta_train(base, solver=SOLVER, method={"name": "soba", "decay": 0.0},
                                outer={"name": "sgd", "lr": 0.1}, steps=5, tasks_per_step=1,
                                seed=0, progress=False)
    start = base.init_hyper(bilevel.training.metrics.run_generator(0, 0))
    _, looped, _ = iterate("soba", base, start, tasks, 5, outer_lr=0.1, decay=0.0)
    assert relative_error(result.h, looped) < 1e-14
    last = result.history[-1]
    assert last["lr"] == 0.1 and last["inner_lr"] == 0.25  # the outer and the inner step


@pytest.mark.parametrize("method", ["soba", "bome"])
def test_compiled_iterations_equal_eager(method, monkeypatch):
    """compile="strict" (traced with aot_eager) gives the eager directions and states: soba
    (its products by one pull-back) and bome (its multiplier's clamp and division); amigo and
    f2sa, whose loops are those of soba's and bome's operations, passed too (30 s each
    compiling on the shared CPU, left out)."""
    aot_eager(monkeypatch)
    problem, h, tasks = quadratic()
    options = {} if method == "soba" else {"inner_steps": 2}
    runs = []
    for compile in (False, "strict"):
        state = None
        for _ in range(2):
            direction, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER,
                                                    method=method, compile=compile,
                                                    state=state, **options)
            state = info.state
        runs.append((direction, state))
    (eager, eager_state), (fast, fast_state) = runs
    assert relative_error(fast, eager) < 1e-10
    assert relative_error(fast_state, eager_state) < 1e-12


def test_inner_grad_ratio_judges_the_carried_iterate_against_the_first_start():
    """info["inner_grad_ratio"]: ||d_phi g|| at the carried iterate over its value at
    inner_init (kept in the state): at the first call, at phi_3 after 3 solver steps, the
    solver's ratio of 4 steps (its last gradient is taken at phi_3); a step size too large
    for g (0.9 > 2 / 4) makes it grow past meta_train's divergence_factor."""
    problem, h, tasks = quadratic()
    solver = bilevel.solvers.GD(lr=0.25, steps=3)
    _, first = bilevel.hypergradient(problem, h, tasks, solver=solver, method="soba")
    _, solved = bilevel.hypergradient(problem, h, tasks, solver=solver.with_steps(4),
                                      method="fomaml")
    torch.testing.assert_close(first["inner_grad_ratio"], solved["inner_grad_ratio"],
                               rtol=1e-12, atol=0)
    _, _, info = iterate("soba", problem, h, tasks, 20, lr=0.9, decay=0.0)
    assert info["inner_grad_ratio"].min() > 1e3
