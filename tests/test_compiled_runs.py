"""Every solve of a compiled run is compiled: the hypergradients, the warm starts, the held-out
validation, the test metrics, and both sides of `bilevel compare` (the Optuna trials too);
and no global torch configuration stays changed. A spy collects the inner steps that run
eagerly (`GD.step` called outside dynamo's tracing); each test's eager run shows that it sees
them. Compiled with "aot_eager" (tests/conftest.py `aot_eager`)."""

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import bilevel
from bilevel import compiled
from bilevel.cli import main
from bilevel.compare import compare
from bilevel.compiled import Compilation
from bilevel.tree import relative_error
from tests.conftest import aot_eager, seeded
from tests.test_compare import config as compare_config
from tests.test_warm_start import FixedQuadratic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def eager_steps(monkeypatch):
    """The index of every inner step that ran eagerly, while the test runs. Compiled code
    does not run Python: a compiled step calls GD.step only while dynamo traces it (where
    `is_compiling()` is True); the memo of compiled functions starts empty, so that each is
    traced in this test."""
    aot_eager(monkeypatch)
    seen, step = [], bilevel.solvers.GD.step

    def watched(self, k, x, aux, grad_fn):
        if not torch.compiler.is_compiling():
            seen.append(k)
        return step(self, k, x, aux, grad_fn)

    monkeypatch.setattr(bilevel.solvers.GD, "step", watched)
    monkeypatch.setattr(compiled, "_cache", OrderedDict())
    return seen


def test_meta_train_compiles_its_hypergradients_warm_starts_and_validation(eager_steps):
    problem = FixedQuadratic(dim=3, kappa=4.0, n_tasks=3, dtype=torch.float64)
    settings = dict(solver=bilevel.solvers.GD(lr=0.2, steps=4), method="fomaml", steps=2,
                    tasks_per_step=2, eval_every=1, eval_tasks=3, warm_start={"steps": 2},
                    progress=False)
    eager = bilevel.meta_train(problem, **settings)
    assert eager_steps  # the spy sees eager solves
    eager_steps.clear()
    fast = bilevel.meta_train(problem, compile="strict", **settings)
    assert eager_steps == []
    assert relative_error(fast.h, eager.h) < 1e-10
    assert fast.history[-1]["eval_val_loss"] == pytest.approx(
        eager.history[-1]["eval_val_loss"], rel=1e-10)


def test_bilevel_run_compiles_every_solve_and_its_test_metrics(eager_steps, tmp_path):
    """wine.yaml: one task, warm-started, validated, with a test split (test.json)."""
    run = ["run", str(EXAMPLES / "wine.yaml"), "--set=steps=2", "--set=progress=false",
           "--set=eval={every: 1, tasks: 1}", "--set=solver={name: gd, lr: 0.1, steps: 4}",
           "--set=warm_start={steps: 2}"]
    assert main([*run, "--out", str(tmp_path / "eager")]) == 0
    assert eager_steps
    eager_steps.clear()
    assert main([*run, "--out", str(tmp_path / "compiled"), "--set=compile=strict"]) == 0
    assert eager_steps == []
    eager, fast = (json.loads((tmp_path / run / "test.json").read_text())
                   for run in ("eager", "compiled"))
    assert fast["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-5)  # float32


def test_compare_compiles_the_optuna_trials(eager_steps, tmp_path):
    """The Optuna side alone (plain trials: every leaf of h searched), eager then compiled;
    then both sides compiled."""
    gd = {"name": "gd", "lr": 0.1, "steps": 10}
    search = {"budget": {"inner_grad_evals": 200}}
    compare(compare_config(solver=gd, search=search), out=tmp_path / "eager", only="optuna")
    assert eager_steps
    eager_steps.clear()
    compare(compare_config(solver=gd, search=search, compile="strict"),
            out=tmp_path / "optuna", only="optuna")
    assert eager_steps == []
    compare(compare_config(solver=gd, search=search, compile="strict"), out=tmp_path / "both")
    assert eager_steps == []


def test_no_global_torch_configuration_stays_changed():
    """The compiled call raises dynamo's recompile limit for itself only."""
    def configurations():
        return {name: module.get_config_copy() for name, module in (
            ("dynamo", torch._dynamo.config), ("functorch", torch._functorch.config))}

    problem = FixedQuadratic(dim=3, kappa=4.0, n_tasks=2, dtype=torch.float64)
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(2)
    before = configurations()
    bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.2, steps=3),
                          method="fo-bmaml", compile=Compilation("strict", backend="aot_eager"))
    assert configurations() == before
