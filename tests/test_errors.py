"""Invalid arguments raise BilevelError naming the argument and the value."""

import pytest
import torch

import bilevel
from problems.quadratic import Quadratic
from tests.conftest import seeded

SOLVER = bilevel.solvers.GD(lr=0.05, steps=5)


@pytest.fixture
def setting():
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=3)
    return problem, problem.init_hyper(seeded(0)), problem.all_tasks()


@pytest.mark.parametrize(
    "options, message",
    [({"method": "newton"}, "unknown method 'newton'; expected one of amigo, bome, "
                             "darts, exact, f2sa, fo-bmaml, fo-bmaml-jvp, fomaml, imaml, maml, "
                             "neumann, reptile, soba"),
     ({"scheme": "backward"}, "scheme must be one of 'forward', 'symmetric', 'five-point', "
                              "got 'backward'"),
     ({"nu": 0.0}, "nu must be a finite number > 0, got 0.0"),
     ({"nu": -1e-3}, "nu must be a finite number > 0, got -0.001"),
     ({"nu": "small"}, "nu must be a finite number > 0, got 'small'"),
     ({"nu": float("nan")}, "nu must be a finite number > 0, got nan"),
     ({"warm_start_steps": 0}, "warm_start_steps must be an integer >= 1, got 0"),
     ({"cg_steps": 3}, "unknown option(s) cg_steps for method 'fo-bmaml'; valid options are "
                       "nu, scheme, warm_start_steps"),
     ({"method": "exact", "nu": 1e-3}, "unknown option(s) nu for method 'exact'")],
)
def test_invalid_estimator_arguments(setting, options, message):
    problem, h, tasks = setting
    with pytest.raises(bilevel.BilevelError) as error:
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, **options)
    assert message in str(error.value)


def test_tasks_with_disagreeing_leading_dimensions(setting):
    problem, h, tasks = setting
    tasks["b"] = tasks["b"][:2]
    expected = r"tasks: every leaf must have the same leading dimension, got tasks\['A'\]: 3, "
    with pytest.raises(bilevel.BilevelError, match=expected + r"tasks\['b'\]: 2"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER)


def test_hyperparameters_without_theta(setting):
    problem, h, tasks = setting
    del h["theta"]
    with pytest.raises(bilevel.BilevelError, match="h has no key 'theta'.*keys \\['log_lam'\\]"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER)


@pytest.mark.parametrize(
    "h, message",
    [({}, "h must be a non-empty dict of tensors, got dict"),
     ([1.0], "h must be a non-empty dict of tensors, got list"),
     ({"theta": {"w": torch.zeros(4, dtype=torch.long)}},
      r"h\['theta'\]\['w'\] must be a floating-point tensor")],
)
def test_malformed_hyperparameters(setting, h, message):
    problem, _, tasks = setting
    with pytest.raises(bilevel.BilevelError, match=message):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER)


def test_bad_problem_and_solver(setting):
    problem, h, tasks = setting
    with pytest.raises(bilevel.BilevelError, match="problem must be a bilevel.BilevelProblem, "
                                                   "got dict"):
        bilevel.hypergradient({}, h, tasks, solver=SOLVER)
    with pytest.raises(bilevel.BilevelError, match="solver must be an inner solver"):
        bilevel.hypergradient(problem, h, tasks, solver=42)
    with pytest.raises(bilevel.BilevelError, match="solver: solver 'gd' needs option"):
        bilevel.hypergradient(problem, h, tasks, solver="gd")


def test_lam_of_the_wrong_shape(setting):
    problem, h, tasks = setting
    h["log_lam"] = torch.zeros(4, dtype=torch.float64)
    expected = r"lam\(h\) must be a scalar tensor or a dict shaped like phi, got a tensor of shape"
    with pytest.raises(bilevel.BilevelError, match=expected + r" \(4,\)"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER)
