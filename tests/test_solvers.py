"""Inner solvers: convergence, tolerance masking under vmap, option checks."""

import pytest
import torch
from torch.func import vmap

import bilevel
from bilevel.solvers import solvers
from problems.quadratic import Quadratic
from tests.conftest import DEVICES, seeded


def problem_and_tasks(device="cpu"):
    problem = Quadratic(dim=6, kappa=10.0, lam=1.0, n_tasks=5, device=device)
    return problem, problem.init_hyper(seeded(0)), problem.all_tasks()


def solve_all(problem, h, tasks, solver):
    return vmap(bilevel.solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "solver",
    [bilevel.solvers.GD(lr=1 / 11, steps=500), bilevel.solvers.Nesterov(lr=1 / 11, steps=300),
     bilevel.solvers.Nesterov(lr=1 / 11, steps=200, momentum=0.5)],
    ids=["gd", "nesterov", "nesterov-constant-momentum"],
)
def test_solvers_reach_the_closed_form_solution(device, solver):
    problem, h, tasks = problem_and_tasks(device)
    phi, stats = solve_all(problem, h, tasks, solver)
    torch.testing.assert_close(phi["w"], problem.solutions(h, tasks), rtol=1e-10, atol=1e-10)
    assert phi["w"].device.type == device and phi["w"].dtype == torch.float64
    assert stats["grad_norm"].shape == (5,) and (stats["steps"] == solver.steps).all()


@pytest.mark.parametrize("name", solvers.names())
def test_tolerance_freezes_each_task_without_breaking_the_batch(name):
    problem, h, tasks = problem_and_tasks()
    tasks["b"] = tasks["b"] * torch.logspace(0, 4, 5, dtype=torch.float64)[:, None]  # far apart
    solver = solvers.build(name, {"lr": 1 / 11, "steps": 400, "tol": 1e-6})
    phi, stats = solve_all(problem, h, tasks, solver)
    assert (stats["grad_norm"] <= 1e-6).all()
    assert (stats["steps"] < 400).all() and len(set(stats["steps"].tolist())) > 1
    for i in range(5):  # each task alone stops where it stopped in the batch
        task = {k: v[i] for k, v in tasks.items()}
        alone, alone_stats = bilevel.solve_inner(problem, h, task, solver)
        torch.testing.assert_close(alone["w"], phi["w"][i], rtol=1e-12, atol=0)
        assert alone_stats["steps"] == stats["steps"][i]


def test_warm_start_from_a_solution_stays_there():
    problem, h, tasks = problem_and_tasks()
    task = {k: v[0] for k, v in tasks.items()}
    exact = {"w": problem.solutions(h, tasks)[0]}
    phi, stats = bilevel.solve_inner(problem, h, task, bilevel.solvers.GD(lr=0.09, steps=3),
                                     init=exact)
    torch.testing.assert_close(phi["w"], exact["w"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options, message",
    [({"lr": 0.0, "steps": 5}, "lr must be a finite number > 0, got 0.0"),
     ({"lr": 0.1, "steps": 0}, "steps must be an integer >= 1, got 0"),
     ({"lr": 0.1, "steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
     ({"lr": 0.1, "steps": 5, "tol": -1}, "tol must be a finite number > 0, got -1"),
     ({"lr": 0.1, "steps": 5, "momentum": 1.0}, "momentum must be in [0, 1)")],
)
def test_invalid_solver_options(options, message):
    with pytest.raises(bilevel.BilevelError) as error:
        bilevel.solvers.Nesterov(**options)
    assert message in str(error.value)


def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(bilevel.BilevelError, match="unknown solver 'adam'; expected one of gd, "
                                                   "nesterov"):
        solvers.get("adam")


def test_a_solver_given_by_spec_is_the_same_solver():
    problem, h, tasks = problem_and_tasks()
    spec = {"name": "nesterov", "lr": 1 / 11, "steps": 30}
    by_spec, _ = bilevel.hypergradient(problem, h, tasks, solver=spec, method="fomaml")
    by_object, _ = bilevel.hypergradient(problem, h, tasks, method="fomaml",
                                         solver=bilevel.solvers.Nesterov(lr=1 / 11, steps=30))
    torch.testing.assert_close(by_spec, by_object, rtol=0, atol=0)


def test_with_steps_and_name():
    solver = bilevel.solvers.Nesterov(lr=0.1, steps=5, momentum=0.5)
    assert solver.with_steps(7) == bilevel.solvers.Nesterov(lr=0.1, steps=7, momentum=0.5)
    assert solver.name == "nesterov" and solvers.name_of(bilevel.solvers.GD) == "gd"
