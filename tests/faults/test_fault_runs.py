"""meta_train under faults (issue 10): finite blow-ups of the inner solves and of the outer
loop stop the run with the last checkpoint intact and loadable (class 1); a directory it
cannot write in is refused at once (class 5); unconverged solves are reported by every
estimator and warned about by those that assume convergence (class 7)."""

import errno
import json
import pathlib
import warnings

import pytest
import torch

import bilevel
from bilevel.estimators import estimators
from bilevel.training import checkpoint
from problems.quadratic import Quadratic
from tests.test_blowups import SteeperAfter
from tests.test_training import train

METHODS = estimators.names()
IMPLICIT = [m for m in METHODS if estimators.get(m).assumes_converged_inner]


def assert_stopped_with_checkpoint(directory, step):
    saved = checkpoint.load(directory)  # loadable through the library's own reader
    assert saved["step"] == step
    assert all(torch.isfinite(leaf).all() for leaf in torch.utils._pytree.tree_leaves(saved["h"]))
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps_completed"] == step
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == step


@pytest.mark.parametrize("solver", [bilevel.solvers.GD(lr=0.05, steps=10),
                                    bilevel.solvers.Nesterov(lr=0.05, steps=10)],
                         ids=["gd", "nesterov"])
def test_one_task_of_much_higher_curvature_stops_the_run(tmp_path, solver):
    with pytest.raises(bilevel.DivergenceError,
                       match=r"diverged at step 3: an inner solve blew up: its gradient norm "
                             r"grew .*-fold over the solve .*lower the solver's lr") as error:
        train(SteeperAfter(after=3, first_only=True), solver=solver, out=tmp_path, steps=5,
              checkpoint_every=1)
    assert error.value.step == 3
    assert_stopped_with_checkpoint(tmp_path, 2)


def test_the_blown_up_task_is_visible_in_info():
    """hypergradient itself does not stop: info says which solve blew up."""
    problem = SteeperAfter(after=1, first_only=True)
    tasks = problem.sample_tasks(4, torch.Generator().manual_seed(0))
    _, info = bilevel.hypergradient(problem, problem.init_hyper(torch.Generator().manual_seed(0)),
                                    tasks, solver=bilevel.solvers.GD(lr=0.05, steps=10),
                                    method="fomaml")
    ratio = info["inner_grad_ratio"]
    assert ratio[0] > 1e3 and (ratio[1:] < 1).all()


def test_an_outer_loop_blow_up_stops_the_run(tmp_path):
    with pytest.raises(bilevel.DivergenceError,
                       match=r"diverged at step \d+: the loss blew up: .* \(more than "
                             r"divergence_factor=1000 times\); lower the outer lr") as error:
        train(out=tmp_path, steps=12, outer={"name": "sgd", "lr": 100.0}, checkpoint_every=1)
    assert_stopped_with_checkpoint(tmp_path, error.value.step - 1)
    # The trainer resumes from the kept checkpoint, and meets the same blow-up at the same step.
    with pytest.raises(bilevel.DivergenceError) as again:
        train(out=tmp_path, steps=12, outer={"name": "sgd", "lr": 100.0}, checkpoint_every=1,
              resume=True)
    assert again.value.step == error.value.step and str(again.value) == str(error.value)


@pytest.mark.parametrize("out", ["/proc/bilevel-run", "/dev/null/run"])
def test_a_directory_that_cannot_be_created(out):
    with pytest.raises(bilevel.RunDirectoryError,
                       match=rf"out='{out}': cannot create the run directory \("):
        train(out=out, steps=1)


def test_a_directory_it_may_not_write_in_is_refused_before_the_run(tmp_path, monkeypatch):
    """(Simulated: the tests may run as root, for whom permissions do not deny writes.)"""
    write = pathlib.Path.write_text

    def deny(self, *args, **kwargs):
        if self.is_relative_to(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", deny)
    calls = []
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=4)
    problem.sample_tasks = lambda *a, sample=problem.sample_tasks: calls.append(1) or sample(*a)
    with pytest.raises(bilevel.RunDirectoryError,
                       match=r"cannot write in the run directory \(Permission denied\)"):
        train(problem, out=tmp_path / "run", steps=2)
    assert calls == []  # refused before any step ran


@pytest.mark.parametrize("method", [m for m in METHODS if m != "fomaml"
                                    and not estimators.get(m).stateful])
def test_every_estimator_reports_how_far_its_solves_got(method):
    """(The single-loop methods' first call takes steps of its own after the solve:
    tests/test_single_loop.py checks their ratio.)"""
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=4, dtype=torch.float64)
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.sample_tasks(4, torch.Generator().manual_seed(0))
    for steps, low, high in ((3, 0.1, 1.0), (100, 0.0, 1e-8)):  # contraction 0.82 per step
        _, info = bilevel.hypergradient(problem, h, tasks, method=method,
                                        solver=bilevel.solvers.GD(lr=0.09, steps=steps))
        assert info["inner_grad_ratio"].shape == (4,)
        assert low <= info["inner_grad_ratio"].max() <= high, (steps, info["inner_grad_ratio"])


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("fo-bmaml", "fomaml")])
def test_unconverged_solves_warn_once_exactly_for_estimators_that_assume_convergence(method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(solver=bilevel.solvers.GD(lr=0.05, steps=3), method=method, steps=3)
    unconverged = [w for w in caught if "far from converged" in str(w.message)]
    assert len(unconverged) == (1 if method in IMPLICIT else 0)
    if unconverged:
        assert f"'{method}' assumes converged inner solutions" in str(unconverged[0].message)


def test_convergence_is_in_the_metrics_file(tmp_path):
    train(solver=bilevel.solvers.GD(lr=0.05, steps=3), method="fomaml", steps=2, out=tmp_path,
          eval_every=1, eval_tasks=2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert 0.1 < record["inner_grad_ratio_mean"] <= record["inner_grad_ratio_max"] < 1
        assert 0.1 < record["eval_inner_grad_ratio"] < 1
