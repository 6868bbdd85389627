"""Blow-ups that stay finite stop a run like NaNs do, and unconverged inner solves are
reported (info, metrics) and warned about once for the estimators that assume convergence."""

import warnings

import pytest
import torch

import bilevel
from bilevel.training import checkpoint
from problems.quadratic import Quadratic
from tests.test_training import train


class SteeperAfter(Quadratic):
    """Tasks whose curvature is 100 times larger from the `after`-th batch on (every task of
    the batch, or with first_only the first), so that GD's fixed lr exceeds 2/L and their
    inner solves blow up (finite, in float64)."""

    def __init__(self, after, first_only=False):
        super().__init__(dim=4, kappa=10.0, n_tasks=4, dtype=torch.float64)
        self.after, self.first_only, self.calls = after, first_only, 0

    def sample_tasks(self, n, generator=None):
        self.calls += 1
        tasks = super().sample_tasks(n, generator)
        if self.calls >= self.after:
            steep = tasks["A"][:1] if self.first_only else tasks["A"]
            tasks["A"] = torch.cat([100 * steep, tasks["A"][len(steep):]])
        return tasks


def test_a_finite_inner_blow_up_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(bilevel.DivergenceError, match="diverged at step 3: an inner solve blew "
                                                      "up: its gradient norm grew") as error:
        train(SteeperAfter(after=3), out=tmp_path, steps=5, checkpoint_every=1)
    assert error.value.step == 3
    saved = torch.load(tmp_path / checkpoint.FILENAME, weights_only=True)
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["h"]["theta"].values())
    assert '"status": "diverged"' in (tmp_path / "summary.json").read_text()


def test_the_factor_is_the_users(tmp_path):
    result = train(SteeperAfter(after=3), steps=3, divergence_factor=1e300)
    assert result.history[-1]["inner_grad_ratio_max"] > 1e3
    with pytest.raises(bilevel.InvalidInputError, match="divergence_factor"):
        train(steps=1, divergence_factor=-1)


def test_info_reports_how_far_each_solve_got():
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=4, dtype=torch.float64)
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.sample_tasks(4)
    for steps, low, high in ((3, 0.1, 1.0), (300, 0.0, 1e-8)):
        _, info = bilevel.hypergradient(problem, h, tasks, method="fomaml",
                                        solver=bilevel.solvers.GD(lr=0.05, steps=steps))
        assert info["inner_grad_ratio"].shape == (4,)
        assert low <= info["inner_grad_ratio"].max() <= high


@pytest.mark.parametrize(("method", "warns"), [("fo-bmaml", True), ("fomaml", False)])
def test_unconverged_solves_warn_once_for_implicit_estimators(method, warns):
    solver = bilevel.solvers.GD(lr=0.05, steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(solver=solver, method=method, steps=3)
    unconverged = [w for w in caught if "far from converged" in str(w.message)]
    assert len(unconverged) == (1 if warns else 0)


def test_the_held_out_evaluation_reports_how_far_its_solves_got():
    short = train(solver=bilevel.solvers.GD(lr=0.05, steps=3), method="fomaml", steps=2,
                  eval_every=1, eval_tasks=2)
    long = train(solver=bilevel.solvers.GD(lr=0.05, steps=300), method="fomaml", steps=2,
                 eval_every=1, eval_tasks=2)
    assert short.history[-1]["eval_inner_grad_ratio"] > 0.1
    assert long.history[-1]["eval_inner_grad_ratio"] < 1e-6
