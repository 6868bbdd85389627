"""`bilevel run` end to end: every YAML example runs, a run directory's config.yaml reproduces
the run bit for bit, --resume continues it and refuses a changed config."""

import json
from pathlib import Path

import pytest
import torch

from bilevel.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--set=steps=2", "--set=eval={every: 1, tasks: 2}", "--set=solver.steps=5",
         "--set=progress=false"]


def records(directory: Path) -> list[dict]:
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_yaml_example_runs(example, tmp_path, capsys):
    assert main(["run", str(EXAMPLES / example), "--out", str(tmp_path), *QUICK]) == 0
    assert capsys.readouterr().out.startswith(f"completed: 2 steps in {tmp_path}")
    assert len(records(tmp_path)) == 2
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_saved_config_reproduces_the_run_bit_for_bit(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", str(EXAMPLES / "sinusoid.yaml"), "--out", str(first), *QUICK]) == 0
    assert main(["run", str(first / "config.yaml"), "--out", str(second)]) == 0
    assert records(first) == records(second)
    h1 = torch.load(first / "checkpoint.pt", weights_only=True)["h"]
    h2 = torch.load(second / "checkpoint.pt", weights_only=True)["h"]
    assert all(torch.equal(a, b) for a, b in zip(h1["theta"].values(), h2["theta"].values(),
                                                 strict=True))


def test_resume_continues_and_refuses_a_changed_config(tmp_path, capsys):
    config = str(EXAMPLES / "breast_cancer.yaml")
    quick = ["--set=solver.steps=20", "--set=progress=false", "--set=eval.every=2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["run", config, "--out", str(whole), "--set=steps=4", *quick]) == 0
    assert main(["run", config, "--out", str(part), "--set=steps=2", *quick]) == 0
    assert main(["run", config, "--out", str(part), "--set=steps=2", *quick]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["run", config, "--out", str(part), "--resume", "--set=steps=4",
                 "--set=solver.steps=30", "--set=progress=false", "--set=eval.every=2"]) == 2
    message = capsys.readouterr().err
    assert "solver.steps: 20 -> 30" in message and "steps:" not in message.replace(
        "solver.steps", "")
    assert main(["run", config, "--out", str(part), "--resume", "--set=steps=4", *quick]) == 0
    assert records(part) == records(whole)
    test = json.loads((part / "test.json").read_text())
    assert set(test) == {"test_loss", "test_accuracy"} and test["test_accuracy"] > 0.8


def test_few_shot_test_classes_report_mean_test_metrics(tmp_path, capsys):
    assert main(["run", str(EXAMPLES / "digits_anil.yaml"), "--out", str(tmp_path), *QUICK,
                 "--set=problem.source.split.test_tasks=7"]) == 0
    test = json.loads((tmp_path / "test.json").read_text())
    assert 0 <= test["test_accuracy"] <= 1 and 0 < test["test_loss"] < 10


def test_npz_file_source(tmp_path, capsys):
    """A user's .npz of features and targets, few-shot split by class, as a config."""
    import numpy as np
    from sklearn.datasets import load_iris

    data = load_iris()
    np.savez(tmp_path / "iris.npz", features=data.data, labels=data.target)
    (tmp_path / "iris.yaml").write_text(
        "problem:\n"
        "  source: {name: npz, path: iris.npz, x: features, y: labels,\n"
        "           split: {kind: holdout, train: 60, val: 45}}\n"
        "  model: linear\n  loss: cross-entropy\n  regularizer: l2\n  theta: fixed\n"
        "solver: {name: gd, lr: 0.5, steps: 50}\nsteps: 2\ntasks_per_step: 1\n"
        "progress: false\n")
    assert main(["run", str(tmp_path / "iris.yaml"), "--out", str(tmp_path / "run")]) == 0
    test = json.loads((tmp_path / "run" / "test.json").read_text())
    assert test["test_accuracy"] > 0.8
    assert main(["validate", str(tmp_path / "iris.yaml"), "--set=problem.source.x=X"]) == 2
    assert "problem.source.x" in capsys.readouterr().err
