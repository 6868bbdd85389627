"""Broken configs: `bilevel validate` and `bilevel run` answer each with one message that names
the key path (and the file), exit status 2 and no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from bilevel.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COMPOSED = ["breast_cancer.yaml", "digits_anil.yaml"]
ANY = ["breast_cancer.yaml", "quadratic.yaml", "ridge_python.yaml"]

# (examples, --set overrides, what the message must contain)
BROKEN = [
    (ANY, ["stpes=3"], ["stpes", "did you mean 'steps'"]),
    (ANY, ["solver.lrr=0.1"], ["solver.lrr", "did you mean 'lr'"]),
    (ANY, ["steps=ten"], ["steps", "valid integer"]),
    (ANY, ["solver.lr=fast"], ["solver.lr"]),
    (ANY, ["solver.lr=-0.1"], ["solver.lr", "> 0"]),
    (ANY, ["solver.steps=0"], ["solver.steps"]),
    (ANY, ["steps=0"], ["steps", "greater than or equal to 1"]),
    (ANY, ["tasks_per_step=0"], ["tasks_per_step"]),
    (ANY, ["method={name: fo-bmaml, nu: 0}"], ["method.nu", "> 0"]),
    (ANY, ["method={name: fo-bmaml, scheme: backward}"], ["method.scheme", "symmetric"]),
    (ANY, ["method={name: soba, lr: 0}"], ["method.lr", "> 0"]),
    (ANY, ["method={name: f2sa, delta_lmbda: -1}"], ["method.delta_lmbda", ">= 0"]),
    (ANY, ["method={name: amigo, inner_steps: 0}"], ["method.inner_steps"]),
    (ANY, ["method=fo-bmam"], ["method: unknown name", "did you mean 'fo-bmaml'"]),
    (ANY, ["solver={name: newton, lr: 1, steps: 2}"], ["solver.name", "gd, nesterov"]),
    (ANY, ["solver={name: gd, steps: 2}"], ["solver.lr", "missing"]),
    (ANY, ["outer=adamm"], ["outer", "adam"]),
    (ANY, ["outer.lrr=0.1"], ["outer", "lrr"]),
    (ANY, ["outer.clip=-1"], ["outer.clip"]),
    (ANY, ["dtype=float16"], ["dtype", "float32"]),
    (ANY, ["device=tpu"], ["device"]),
    (ANY, ["eval={every: 0, tasks: 2}"], ["eval.every"]),
    (ANY, ["eval={every: 2}"], ["eval.tasks", "missing"]),
    (ANY, ["checkpoint_every=-5"], ["checkpoint_every"]),
    (ANY, ["seed=-1"], ["seed"]),
    (COMPOSED, ["problem.lam=-1"], ["problem.lam", "greater than 0"]),
    (COMPOSED, ["problem.learn_lam=per-row"], ["problem.learn_lam", "per-feature"]),
    (COMPOSED, ["problem.loss=hinge"], ["problem.loss", "cross-entropy"]),
    (COMPOSED, ["problem.loss=mse"], ["problem.loss", "cross-entropy"]),
    (COMPOSED, ["problem.shared_layers=[7]"], ["problem.shared_layers"]),
    (COMPOSED, ["problem.model={name: mlp, widths: [0]}"], ["problem.model.widths"]),
    (COMPOSED, ["problem.model={name: mlp, activation: swish}"], ["problem.model.activation"]),
    (COMPOSED, ["problem.model=resnet"], ["problem.model: unknown name", "linear, mlp"]),
    (COMPOSED, ["problem.source.name=parquet"], ["problem.source.name", "csv"]),
    (COMPOSED, ["problem.regularizer=none", "problem.learn_lam=scalar"], ["problem.learn_lam"]),
    (COMPOSED, ["problem.source.split={kind: holdout, train: 1000, val: 1000}"],
     ["problem.source.split", "rows"]),
    (COMPOSED, ["problem.source.split={kind: k-fold}"], ["problem.source.split"]),
    (COMPOSED, ["problem.sourse={name: csv}"], ["problem.sourse"]),
    (["breast_cancer.yaml"], ["problem.source.path=missing.csv"],
     ["problem.source.path", "missing.csv"]),
    (["breast_cancer.yaml"], ["problem.source.target=label"],
     ["problem.source.target", "diagnosis"]),
    (["breast_cancer.yaml"], ["problem.source.target=99"], ["problem.source.target"]),
    (["breast_cancer.yaml"], ["problem.source.kind=clustering"], ["problem.source.kind"]),
    (["quadratic.yaml"], ["problem.name=quadratik"], ["problem.name", "did you mean 'quadratic'"]),
    (["quadratic.yaml"], ["problem.kappa=0.5"], ["problem.kappa", ">= 1"]),
    (["quadratic.yaml"], ["problem.dims=3"], ["problem.dims", "did you mean 'dim'"]),
    (["ridge_python.yaml"], ["problem.python=nosuch.module:Ridge"],
     ["problem.python", "nosuch"]),
    (["ridge_python.yaml"], ["problem.python=problems.ridge:Rigde"], ["problem.python"]),
    (["ridge_python.yaml"], ["problem.python=collections:OrderedDict"],
     ["problem.python", "BilevelProblem"]),
    (["ridge_python.yaml"], ["problem.python=not a path"], ["problem.python"]),
    (["ridge_python.yaml"], ["problem.args.bogus=1"], ["problem.args", "bogus"]),
    (["ridge_python.yaml"], ["problem.args.lam=-2"], ["problem.args.lam"]),
]
CASES = [pytest.param(example, overrides, expected, id=f"{example}-{'-'.join(overrides)}")
         for examples, overrides, expected in BROKEN for example in examples]

# Files broken as files: (text, what the message must contain)
BROKEN_FILES = [
    ("problem: [unclosed\nsolver: gd\n", ["not valid YAML", ":2:"]),
    ("- a list\n- not a mapping\n", ["must be a mapping"]),
    ("", ["must be a mapping", "empty"]),
    ("steps: 3\nsteps: 4\n", ["steps", "given twice", ":2:1"]),
    ("problem: {name: quadratic}\nsolver: {name: gd, lr: 0.1, steps: 3}\n"
     "tasks_per_step: 2\n", ["steps", "missing"]),
    ("problem: {name: quadratic}\nsteps: 3\ntasks_per_step: 2\n", ["solver", "missing"]),
    ("problem: {name: quadratic}\nsolver: {name: gd, lr: 0.1, steps: 3}\nsteps: 3\n"
     "tasks_per_step: 2\nouter: {name: sgd, momentum: -1}\n", ["outer", "momentum"]),
    ("problem:\n  source: {name: csv, path: nowhere.csv}\n  model: linear\n"
     "solver: {name: gd, lr: 0.1, steps: 3}\nsteps: 1\ntasks_per_step: 1\n",
     ["problem.source.path", "nowhere.csv"]),
]


def check(capsys, status, expected, where):
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    message = captured.err
    assert message.startswith(f"bilevel {where}: error: ")
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize(("example", "overrides", "expected"), CASES)
def test_broken_key_is_named_by_validate_and_run(example, overrides, expected, tmp_path, capsys):
    arguments = [str(EXAMPLES / example)] + [f"--set={o}" for o in overrides]
    check(capsys, main(["validate", *arguments]), expected, "validate")
    check(capsys, main(["run", *arguments, "--out", str(tmp_path / "run")]), expected, "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(("text", "expected"), BROKEN_FILES)
def test_broken_file_is_placed_by_validate_and_run(text, expected, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    check(capsys, main(["validate", str(path)]), expected + [str(path)], "validate")
    check(capsys, main(["run", str(path), "--out", str(tmp_path / "run")]), expected, "run")


def test_missing_config_file(tmp_path, capsys):
    check(capsys, main(["validate", str(tmp_path / "nope.yaml")]), ["nope.yaml", "cannot read"],
          "validate")


def test_malformed_set(capsys):
    check(capsys, main(["validate", str(EXAMPLES / "quadratic.yaml"), "--set", "steps"]),
          ["--set 'steps'", "key.path=value"], "validate")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_no_traceback_from_the_installed_command(command, tmp_path):
    """The console script itself, as a user runs it: one line on stderr, status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "bilevel.cli", command, str(EXAMPLES / "breast_cancer.yaml"),
         "--set", "problem.source.path=missing.csv", *(["--out", str(tmp_path)] * (
             command == "run"))],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "problem.source.path" in result.stderr
