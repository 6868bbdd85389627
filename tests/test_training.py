"""meta_train in-process: outer optimizers, run directory, determinism, divergence, errors."""

import json
import math
import os
import signal

import pytest
import torch

import bilevel
from bilevel.training import checkpoint
from bilevel.training.trainer import _Interrupts
from problems.quadratic import Quadratic

SOLVER = bilevel.solvers.GD(lr=0.05, steps=10)


def quadratic(**options):
    return Quadratic(dim=4, kappa=10.0, n_tasks=4, **options)


def train(problem=None, **options):
    settings = dict(solver=SOLVER, steps=4, tasks_per_step=3, progress=False)
    return bilevel.meta_train(problem or quadratic(), **(settings | options))


def without_time(history):
    return [{k: v for k, v in record.items() if k != "time"} for record in history]


def flat(h):
    return torch.cat([leaf.reshape(-1) for leaf in torch.utils._pytree.tree_leaves(h)])


# Outer optimizers ------------------------------------------------------------------------


@pytest.mark.parametrize("g, expected_scale", [([3.0, 4.0], 0.2), ([0.3, 0.4], 1.0)])
def test_clipped_gd_follows_the_paper(g, expected_scale):
    """theta <- theta - lr min(1, c / ||g||) g, with c = max_norm = 1, ||g|| = 5 or 0.5."""
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = bilevel.training.ClippedGD([theta], lr=0.1, max_norm=1.0)
    theta.grad = torch.tensor(g, dtype=torch.float64)
    optimizer.step()
    assert torch.allclose(theta.detach(), -0.1 * expected_scale * theta.grad, rtol=1e-15)


def test_normalized_gd_follows_the_paper_over_every_parameter():
    """theta <- theta - lr g / (beta + ||g||), ||g|| the norm over both tensors (= 5)."""
    a = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = bilevel.training.NormalizedGD([a, b], lr=0.5, beta=1.0)
    a.grad = torch.tensor([3.0], dtype=torch.float64)
    b.grad = torch.tensor([4.0], dtype=torch.float64)
    optimizer.step()
    assert a.item() == pytest.approx(-0.5 * 3 / 6) and b.item() == pytest.approx(-0.5 * 4 / 6)


class FixedStart(Quadratic):
    def init_hyper(self, generator=None):
        return super().init_hyper(torch.Generator().manual_seed(0))


def test_global_norm_clipping_scales_the_hypergradient_to_norm_clip():
    """With outer sgd (lr=1) and clip=c < ||g||, the update of h has norm c (up to torch's
    1e-6 in c / (||g|| + 1e-6))."""
    problem = FixedStart(dim=4, kappa=10.0, n_tasks=4)
    clip = 1e-3
    start = flat(problem.init_hyper())
    result = train(problem, steps=1, outer={"name": "sgd", "lr": 1.0, "clip": clip})
    assert result.history[0]["grad_norm"] > clip
    assert (flat(result.h) - start).norm().item() == pytest.approx(clip, rel=1e-5)


def test_schedule_sets_the_learning_rate_of_each_step():
    outer = {"name": "sgd", "lr": 0.1, "schedule": {"name": "step", "step_size": 2, "gamma": 0.5}}
    history = train(outer=outer, steps=5).history
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


@pytest.mark.parametrize("name", bilevel.optimizers.optimizers.names())
def test_every_registered_outer_optimizer_lowers_the_outer_loss(name):
    problem = Quadratic(dim=4, kappa=10.0, n_tasks=4, lam=10.0)
    tasks = problem.all_tasks()
    start = problem.init_hyper(torch.Generator().manual_seed(0))
    lr = {"adadelta": 1.0, "asgd": 0.1, "sgd": 0.1, "rprop": 0.01, "adagrad": 0.1}.get(name, 0.01)
    result = train(problem, outer={"name": name, "lr": lr}, tasks_per_step=4, steps=3)
    assert problem.outer_loss(result.h, tasks) < problem.outer_loss(start, tasks)


# Run directory, determinism, evaluation ---------------------------------------------------


def test_run_directory_holds_settings_metrics_summary_plots_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = train(out=out, steps=5, eval_every=2, eval_tasks=3, seed=7, checkpoint_every=2,
                   outer={"name": "clipped-gd", "lr": 0.1})
    names = {"settings.json", "metrics.jsonl", "summary.json", "loss.png", "eval.png",
             "checkpoint.pt"}
    assert names <= {p.name for p in out.iterdir()}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 7 and settings["outer"]["name"] == "clipped-gd"
    assert settings["method"] == {"name": "fo-bmaml", "nu": "auto", "scheme": "symmetric",
                                  "warm_start_steps": None}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history and [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in lines if "eval_val_loss" in r] == [2, 4, 5]
    evals = [r["inner_grad_evals"] for r in lines]
    assert evals == [3 * 2 * 10] * 5  # tasks x stencil points x inner steps
    assert [r["inner_grad_evals_total"] for r in lines] == [60, 120, 180, 240, 300]
    assert all(math.isfinite(r["grad_norm"]) and r["time"] > 0 for r in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == 5
    saved = checkpoint.load(out)
    assert saved["step"] == 5 and torch.equal(flat(saved["h"]), flat(result.h))


def test_same_seed_same_run_and_another_seed_another_run():
    first, second, other = (train(seed=seed, eval_every=2, eval_tasks=2) for seed in (1, 1, 2))
    assert torch.equal(flat(first.h), flat(second.h))
    assert without_time(first.history) == without_time(second.history)
    assert not torch.equal(flat(first.h), flat(other.h))


class WithNorm(Quadratic):
    def eval_metrics(self, phi, h, task):
        return super().eval_metrics(phi, h, task) | {"phi_norm": phi["w"].norm()}


def test_evaluation_averages_eval_metrics_over_the_held_out_tasks():
    """With eval_tasks = n_tasks every task is held out once: eval_val_loss = F(h) with the
    same solver, and the extra metric of the eval_metrics override is averaged too."""
    problem = WithNorm(dim=4, kappa=10.0, n_tasks=4)
    result = train(problem, steps=2, eval_every=1, eval_tasks=4)
    tasks = problem.all_tasks()
    loss = bilevel.outer_loss(problem, result.h, tasks, SOLVER)
    assert result.history[-1]["eval_val_loss"] == pytest.approx(loss.item(), rel=1e-12)
    norms = [bilevel.solve_inner(problem, result.h, {k: v[i] for k, v in tasks.items()},
                                 SOLVER)[0]["w"].norm() for i in range(4)]
    assert result.history[-1]["eval_phi_norm"] == pytest.approx(torch.stack(norms).mean().item())
    # "loss" is the step's own batch: val_loss at its inner solutions, before the update
    assert all(math.isfinite(record["loss"]) for record in result.history)


def test_resume_of_a_finished_run_changes_nothing_and_checks_settings(tmp_path):
    first = train(out=tmp_path, steps=3)
    again = train(out=tmp_path, steps=3, resume=True)
    assert torch.equal(flat(first.h), flat(again.h)) and again.history == first.history
    with pytest.raises(bilevel.BilevelError, match=r"settings differ .*seed: 0 -> 5"):
        train(out=tmp_path, steps=3, resume=True, seed=5)


# Divergence and interrupts ---------------------------------------------------------------


class PoisonedAfter(Quadratic):
    """Tasks whose linear terms are NaN from the `after`-th batch on."""

    def __init__(self, after):
        super().__init__(dim=4, kappa=10.0, n_tasks=4)
        self.after, self.calls = after, 0

    def sample_tasks(self, n, generator=None):
        self.calls += 1
        tasks = super().sample_tasks(n, generator)
        if self.calls >= self.after:
            tasks["b"] = torch.full_like(tasks["b"], math.nan)
        return tasks


def test_divergence_names_the_step_and_quantity_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(bilevel.DivergenceError) as error:
        train(PoisonedAfter(5), out=tmp_path, steps=8, checkpoint_every=3)
    # the step's loss (val_loss at its inner solutions) is the first quantity checked
    assert error.value.step == 5 and "loss" in error.value.quantity
    assert str(error.value).startswith("diverged at step 5: the loss (loss) is not finite")
    assert "last good checkpoint (step 3)" in str(error.value)
    saved = checkpoint.load(tmp_path)
    assert saved["step"] == 3 and torch.isfinite(flat(saved["h"])).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps_completed"] == 4
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_interrupt_in_a_deferred_block_waits_for_its_end():
    with _Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached_the_end = True
        assert reached_the_end and not interrupts.torn
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside a deferred block: at once


# Errors and helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [({"outer": "newton"}, "unknown outer optimizer 'newton'; expected one of adadelta, "),
     ({"outer": {"name": "adam", "momentum": 0.9}},
      "outer: unknown option(s) momentum for outer optimizer 'adam'; valid options are amsgrad,"),
     ({"outer": {"name": "sgd", "clip": 0}}, "outer['clip'] must be a finite number > 0, got 0"),
     ({"outer": {"name": "sgd", "schedule": {"name": "cosine"}}},
      "unknown learning-rate schedule 'cosine'; expected one of constant, cosine-annealing,"),
     ({"outer": {"name": "sgd", "schedule": "cosine-annealing"}},
      "outer['schedule']: learning-rate schedule 'cosine-annealing' needs option(s) T_max"),
     ({"outer": {"name": "clipped-gd", "max_norm": -1.0}},
      "outer optimizer 'clipped-gd': max_norm must be a finite number > 0, got -1.0"),
     ({"outer": {"lr": 0.1}}, "outer must be a name or a dict with a 'name' key"),
     ({"method": {"name": "fo-bmaml", "cg_steps": 2}},
      "method: unknown option(s) cg_steps for method 'fo-bmaml'"),
     ({"steps": 0}, "steps must be an integer >= 1, got 0"),
     ({"eval_every": 2}, "eval_every and eval_tasks must be both 0 (no evaluation) or both >= 1"),
     ({"resume": True}, "resume and checkpoint_every need a run directory: pass out=DIR")],
)
def test_invalid_arguments(options, message):
    with pytest.raises(bilevel.BilevelError) as error:
        train(**options)
    assert message in str(error.value)


def test_a_directory_holding_a_run_is_not_overwritten(tmp_path):
    train(out=tmp_path, steps=1)
    with pytest.raises(bilevel.BilevelError, match="already holds a run .*pass resume=True"):
        train(out=tmp_path, steps=1)
    with pytest.raises(bilevel.BilevelError, match="does not exist: no checkpoint to resume"):
        train(out=tmp_path / "empty", steps=1, resume=True)


def test_devices_and_dtypes():
    assert bilevel.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert bilevel.resolve_device("auto").type == expected
    assert bilevel.resolve_dtype("float64") is torch.float64
    assert bilevel.resolve_dtype("float32") is torch.float32
    with pytest.raises(bilevel.BilevelError, match="dtype must be one of 'float32', 'float64', "
                                                   "got 'half'"):
        bilevel.resolve_dtype("half")
    with pytest.raises(bilevel.BilevelError, match="device must be one of 'auto', 'cpu', 'cuda'"):
        bilevel.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(bilevel.BilevelError, match="torch sees no CUDA device"):
            bilevel.resolve_device("cuda")


def test_a_solver_spec_trains_as_the_solver_object(tmp_path):
    spec = {"name": "gd", "lr": 0.05, "steps": 10}
    by_spec = train(solver=spec, out=tmp_path / "spec")
    by_object = train()
    assert without_time(by_spec.history) == without_time(by_object.history)
    settings = json.loads((tmp_path / "spec" / "settings.json").read_text())
    assert settings["solver"] == spec | {"tol": None}


def test_held_out_solves_are_counted():
    result = train(eval_every=2, eval_tasks=5)
    evaluated = [r for r in result.history if "eval_val_loss" in r]
    assert [r["held_out_inner_grad_evals"] for r in evaluated] == [5 * 10, 5 * 10]
    last = result.history[-1]
    assert last["total_inner_grad_evals"] == last["inner_grad_evals_total"] + 2 * 5 * 10
    assert result.summary["total_inner_grad_evals"] == last["total_inner_grad_evals"]
