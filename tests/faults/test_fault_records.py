"""The record of a run cannot lie (issue 22): a checkpoint whose bytes changed is refused on
resume, naming the file, and left as it is; the run's JSON files are strict JSON; what it
learned is in hyper.json and `bilevel show`."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import bilevel
from bilevel import strict_json
from bilevel.cli import main
from bilevel.compare.curves import Curve
from bilevel.compare.report import write as write_compare
from bilevel.training import checkpoint
from bilevel.training.rundir import RunDirectory, write_hyper
from tests.test_training import train


def strict_loads(text):
    """json.loads that fails on NaN / Infinity (which RFC 8259 has not)."""
    def refuse(word):
        raise ValueError(f"not strict JSON: {word}")
    return json.loads(text, parse_constant=refuse)


def flip_one_float_of_h(directory):
    """Change one float of h in the bytes of directory/checkpoint.pt, nothing else."""
    path = directory / checkpoint.FILENAME
    saved = torch.load(path, weights_only=True)
    leaf = torch.utils._pytree.tree_leaves(saved["h"])[0]
    data, pattern = bytearray(path.read_bytes()), leaf.contiguous().numpy().tobytes()
    assert data.count(pattern) == 1
    start = data.index(pattern)
    data[start:start + leaf.element_size()] = (leaf.reshape(-1)[:1] + 1).numpy().tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_checkpoint_with_one_float_of_h_changed_is_refused_and_kept(tmp_path):
    train(out=tmp_path, steps=3)
    path = flip_one_float_of_h(tmp_path)
    damaged = path.read_bytes()
    with pytest.raises(bilevel.RunDirectoryError, match=rf"{path} is damaged"):
        train(out=tmp_path, steps=5, resume=True)
    assert path.read_bytes() == damaged  # nothing overwrote it


def test_a_checkpoint_rewritten_with_another_h_but_its_old_checksum_is_refused(tmp_path):
    train(out=tmp_path, steps=3)
    path = tmp_path / checkpoint.FILENAME
    saved = torch.load(path, weights_only=True)
    saved["h"] = torch.utils._pytree.tree_map(lambda leaf: leaf * 1.5, saved["h"])
    torch.save(saved, path)  # readable, but its checksum is the old content's
    with pytest.raises(bilevel.RunDirectoryError, match=rf"{path} is damaged"):
        train(out=tmp_path, steps=5, resume=True)
    del saved[checkpoint.CHECKSUM]
    torch.save(saved, path)
    with pytest.raises(bilevel.RunDirectoryError, match="records no checksum"):
        train(out=tmp_path, steps=5, resume=True)


def test_a_checkpoint_written_through_save_resumes(tmp_path):
    """What must stay accepted: the library's own writes, after a load round trip."""
    train(out=tmp_path, steps=2)
    checkpoint.save(tmp_path, checkpoint.load(tmp_path))
    assert train(out=tmp_path, steps=3, resume=True).summary["steps_completed"] == 3


# Strict JSON --------------------------------------------------------------------------------


def test_non_finite_numbers_are_words_and_read_back():
    text = strict_json.dumps({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (2, None)})
    assert strict_loads(text) == {"a": "NaN", "b": ["Infinity", "-Infinity", 1.5],
                                  "c": [2, None]}
    assert [float(v) for v in strict_loads(text)["b"][:2]] == [math.inf, -math.inf]


def test_metrics_and_summary_with_a_non_finite_metric_are_strict_json(tmp_path):
    files = RunDirectory(tmp_path, resume=False)
    files.restart_metrics([])
    history = [{"step": 1, "loss": 1.0, "eval_ratio": math.inf},
               {"step": 2, "loss": math.nan}]
    for record in history:
        files.log(record)
    files.finish({"status": "diverged", "last": history[-1]}, history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_loads(line) for line in lines][1] == {"step": 2, "loss": "NaN"}
    assert strict_loads((tmp_path / "summary.json").read_text())["last"]["loss"] == "NaN"


def test_compare_json_with_a_diverged_first_trial_is_strict_json(tmp_path):
    curve = Curve("optuna")
    curve.add(10.0, 0.1, math.nan)  # best so far: +inf until a finite value
    curve.add(20.0, 0.2, 0.5)
    write_compare(tmp_path, {"optuna": curve}, [{"side": "optuna", "best_val_loss": 0.5}],
                  {"title": "t"})
    record = strict_loads((tmp_path / "compare.json").read_text())
    assert record["curves"]["optuna"]["best_val_loss"] == ["Infinity", 0.5]


# What a run learned ------------------------------------------------------------------------


def test_hyper_json_holds_every_leaf_and_lam_as_in_the_checkpoint(tmp_path):
    result = train(out=tmp_path, steps=3)
    record = strict_loads((tmp_path / "hyper.json").read_text())
    saved = checkpoint.load(tmp_path)
    assert record["step"] == saved["step"] == 3
    leaves, _ = torch.utils._pytree.tree_flatten(result.h)
    written = torch.utils._pytree.tree_leaves(
        record["h"], is_leaf=lambda node: isinstance(node, dict) and "shape" in node)
    assert len(written) == len(leaves)
    for leaf, entry in zip(leaves, written, strict=True):
        assert entry["shape"] == list(leaf.shape)
        assert torch.equal(torch.tensor(entry["value"], dtype=leaf.dtype), leaf)
    lam = torch.tensor(record["lam"]["value"], dtype=torch.float64)
    assert torch.allclose(lam, result.h["log_lam"].double().exp())


def test_show_prints_status_metrics_and_hyperparameters(tmp_path, capsys):
    train(out=tmp_path, steps=2)
    (tmp_path / "hyper.json").unlink()  # read from the checkpoint then
    assert main(["show", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "completed after 2 steps" in text and "hyperparameters (step 2)" in text
    assert "loss" in text


def test_show_summarises_big_leaves_and_refuses_a_folder_without_a_run(tmp_path, capsys):
    big = {"theta": {"w": torch.arange(1000.0)}, "log_lam": torch.zeros(())}
    write_hyper(tmp_path, big, 7)
    assert main(["show", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "1000 values: min 0, mean 499.5, max 999" in text and "lam " in text
    assert "998" not in text
    assert main(["show", str(tmp_path / "none")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_version_from_the_package_metadata(capsys):
    from importlib import metadata
    assert bilevel.__version__ == metadata.version("bilevel")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"bilevel {bilevel.__version__}\n"


def test_ctrl_c_of_bilevel_run_prints_the_command_that_resumes_it(tmp_path):
    """SIGINT to `bilevel run`: the checkpoint of the last step, and the CLI command (not a
    Python call) that resumes it, which works as printed, from another directory."""
    root = Path(__file__).resolve().parents[2]
    config, out = tmp_path / "long.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump({
        "problem": {"name": "quadratic", "dim": 4, "kappa": 10.0, "n_tasks": 4},
        "solver": {"name": "gd", "lr": 0.05, "steps": 10}, "steps": 100000,
        "tasks_per_step": 2, "progress": False}))
    run = subprocess.Popen([sys.executable, "-m", "bilevel.cli", "run", str(config), "--out",
                            str(out)], cwd=root, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in stderr
    step = checkpoint.load(out)["step"]
    command = f"bilevel run {out / 'config.yaml'} --resume"
    assert f"resume with {command} (same settings; steps may grow)" in stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run([sys.executable, "-m", "bilevel.cli", *command.split()[1:],
                              "--set", f"steps={step + 2}"], cwd=elsewhere, text=True,
                             capture_output=True, env=os.environ | {"PYTHONPATH": str(root)})
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"completed: {step + 2} steps in {out}")


@pytest.mark.parametrize("command", [["validate"], ["gradcheck", "--methods", "maml,exact",
                                                    "--repeats", "1"]])
def test_validate_and_gradcheck_show_progress_on_long_work(tmp_path, monkeypatch, capsys,
                                                           command):
    """A bar on stderr once the work lasts PROGRESS_DELAY seconds (here: at once), naming
    the command and counting its stages or methods; none with `progress: false`."""
    from bilevel.config import runs

    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({
        "problem": {"name": "quadratic", "dim": 4, "kappa": 10.0, "n_tasks": 4},
        "solver": {"name": "gd", "lr": 0.05, "steps": 10}, "steps": 3, "tasks_per_step": 2}))
    monkeypatch.setattr(runs, "PROGRESS_DELAY", 0.0)
    assert main([command[0], str(config), *command[1:]]) == 0
    captured = capsys.readouterr()
    unit = "stage" if command[0] == "validate" else "method"
    assert f"\r{command[0]}: " in captured.err and "/2 [" in captured.err  # 2 stages, methods
    assert f"{unit}/s]" in captured.err and "Traceback" not in captured.err and captured.out
    assert main([command[0], str(config), *command[1:], "--set", "progress=false"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name, text, what", [
    ("summary.json", "[1, 2]\n", "TypeError"), ("summary.json", '{"status": "x"}\n', "KeyError"),
    ("hyper.json", '{"step": 2}\n', "KeyError: 'h'"), ("hyper.json", '{"step": 2, "h": 5}\n',
                                                        "AttributeError"),
    ("hyper.json", '{"step": 2, "h": {"w": {"shape": [1], "dtype": "float32", "value": ["x"]}}}',
     "ValueError")])
def test_show_of_an_edited_record_names_it_in_one_line(tmp_path, capsys, name, text, what):
    write_hyper(tmp_path, {"log_lam": torch.zeros(())}, 3)
    (tmp_path / name).write_text(text)
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / name} is not as a run writes it ({what}" in err
    assert main(["show", str(tmp_path / name)]) == 2  # a file, not a run directory
    assert "is not a run directory (a file)" in capsys.readouterr().err
