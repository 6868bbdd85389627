"""Warm-started inner solves (`meta_train(..., warm_start=...)`): the hypergradient from a
warm start against the closed form, the cost counted, the tasks checked, the settings
recorded. (tests/test_training_runs.py kills a warm-started run and resumes it.)"""

import json

import pytest
import torch

import bilevel
from bilevel.errors import InvalidInputError, RunDirectoryError
from bilevel.training.warm_start import WarmStart, WarmStarts
from bilevel.tree import relative_error
from problems.quadratic import Quadratic


class FixedQuadratic(Quadratic):
    """The quadratic whose batch is the first n tasks of its pool at every step."""

    def sample_tasks(self, n, generator=None):
        return {k: v[:n] for k, v in self.pool.items()}


def problem():
    return FixedQuadratic(dim=4, kappa=10.0, n_tasks=4, dtype=torch.float64)


def test_a_warm_started_hypergradient_is_the_closed_form():
    """Solve at h0, move h, continue from there: fo-bmaml's stencil starts at the continued
    solution and gives the closed-form hypergradient at the new h."""
    quadratic, solver = problem(), bilevel.solvers.GD(lr=0.05, steps=200)
    tasks = quadratic.sample_tasks(3)
    warm = WarmStarts(WarmStart(steps=60, estimator_steps=150), quadratic)
    h0 = quadratic.init_hyper(torch.Generator().manual_seed(0))
    _, new, _, steps = warm.prepare(h0, tasks, solver, step=1)
    assert steps == 200  # the first solve is cold, with the solver's steps
    warm.commit(new)
    h1 = {"theta": {"w": h0["theta"]["w"] + 0.3}, "log_lam": h0["log_lam"] - 0.2}
    (started, started_tasks, short), _, stats, steps = warm.prepare(h1, tasks, solver, step=2)
    assert steps == 60 and short.steps == 150
    grad, info = bilevel.hypergradient(started, h1, started_tasks, solver=short,
                                       method="fo-bmaml", scheme="symmetric", nu=1e-4)
    assert info["inner_grad_evals"] == 3 * 2 * 150
    expected = quadratic.meta_gradient(h1, tasks)
    assert relative_error(grad["theta"]["w"], expected["theta"]["w"]) < 1e-4
    assert relative_error(grad["log_lam"], expected["log_lam"]) < 1e-4
    assert float(stats["grad_ratio"].max()) < 1e-3  # the continued solves converged


def test_warm_start_counts_its_solves_and_is_recorded(tmp_path):
    settings = dict(solver=bilevel.solvers.GD(lr=0.05, steps=20), steps=3, tasks_per_step=2,
                    progress=False, out=tmp_path, warm_start={"steps": 4})
    result = bilevel.meta_train(problem(), **settings)
    evals = [r["inner_grad_evals"] for r in result.history]
    assert evals == [2 * (20 + 2 * 4), 2 * (4 + 2 * 4), 2 * (4 + 2 * 4)]
    assert [r["warm_start_inner_grad_evals"] for r in result.history] == [40, 8, 8]
    assert result.summary["inner_grad_evals_total"] == sum(evals)
    recorded = json.loads((tmp_path / "settings.json").read_text())["warm_start"]
    assert recorded == {"steps": 4, "estimator_steps": None}
    with pytest.raises(RunDirectoryError, match="warm_start"):
        bilevel.meta_train(problem(), **settings | {"resume": True,
                                                    "warm_start": {"steps": 5}})


def test_warm_start_needs_the_same_tasks_every_step():
    changing = Quadratic(dim=4, kappa=10.0, n_tasks=8, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="tasks of outer step 2 differ"):
        bilevel.meta_train(changing, solver=bilevel.solvers.GD(lr=0.05, steps=5), steps=3,
                           tasks_per_step=2, progress=False, warm_start={"steps": 2})


@pytest.mark.parametrize("value, message", [
    ({"step": 3}, "warm_start must be None or a dict"),
    ({"steps": 0}, "warm_start.steps"),
    ({"steps": 2, "estimator_steps": 1.5}, "warm_start.estimator_steps"),
    (5, "warm_start must be None or a dict"),
])
def test_warm_start_arguments_are_checked(value, message):
    with pytest.raises(InvalidInputError, match=message):
        bilevel.meta_train(problem(), solver={"name": "gd", "lr": 0.05, "steps": 5}, steps=1,
                           tasks_per_step=1, progress=False, warm_start=value)
