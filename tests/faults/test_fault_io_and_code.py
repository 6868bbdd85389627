"""A run directory that cannot be written, a full disk, and problem code that reads a
hyperparameter outside autograd (issue 22): each one clear error, the checkpoint kept.

Tests run as root, where chmod does not stop writes: a read-only directory and a full disk
are simulated by making the OS calls that write under it raise the OSError the kernel would.
"""

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import bilevel
from bilevel import problem_checks
from bilevel.cli import main
from bilevel.training import checkpoint
from bilevel.training.rundir import write_atomically
from bilevel.training.trainer import _Run
from problems.quadratic import Quadratic
from tests.faults import fault_problems as fp
from tests.faults.fault_problems import cli_run, setting

SOLVER = bilevel.solvers.GD(lr=0.05, steps=10)
SHORT = bilevel.solvers.GD(lr=0.1, steps=20)


def train(out, **options):
    settings = dict(solver=SOLVER, steps=3, tasks_per_step=2, progress=False, out=out)
    return bilevel.meta_train(Quadratic(dim=4, kappa=10.0, n_tasks=4), **(settings | options))


def refuse_writes(monkeypatch, directory: Path, code: int, allowed=()) -> None:
    """Opening a file under `directory` for writing (but the names in `allowed`), and
    renaming onto one there, raise OSError(code), as on a read-only file system."""
    open_, replace = io.open, os.replace

    def inside(path) -> bool:
        path = Path(path)
        return path.parent == directory and path.name not in allowed

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+") and inside(file):
            raise OSError(code, os.strerror(code), str(file))
        return open_(file, mode, *args, **kwargs)

    def guarded_replace(source, target, *args, **kwargs):
        if inside(target):
            raise OSError(code, os.strerror(code), str(target))
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "replace", guarded_replace)


def no_work(monkeypatch) -> None:
    def fail(self, interrupts):
        raise AssertionError("a step ran in a run directory it cannot write")

    monkeypatch.setattr(_Run, "train_step", fail)


# A read-only run directory on resume ---------------------------------------------------

@pytest.mark.parametrize("code, allowed", [(errno.EROFS, ()), (errno.EACCES, (".lock",))],
                         ids=["read-only file system", "lock file writable, directory not"])
def test_resume_in_a_read_only_directory_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                    code, allowed):
    train(tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    refuse_writes(monkeypatch, tmp_path, code, allowed)
    no_work(monkeypatch)
    with pytest.raises(bilevel.RunDirectoryError,
                       match=f"cannot write in the run directory \\({os.strerror(code)}"):
        train(tmp_path, steps=5, resume=True)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert train(tmp_path, steps=5, resume=True).summary["steps_completed"] == 5  # writable


def test_cli_resume_in_a_read_only_directory_is_one_line_and_exit_2(tmp_path, monkeypatch,
                                                                     capsys):
    config, out = cli_run(tmp_path)
    saved = (out / checkpoint.FILENAME).read_bytes()
    capsys.readouterr()
    refuse_writes(monkeypatch, out, errno.EROFS)
    no_work(monkeypatch)
    assert main(["run", str(config), "--out", str(out), "--resume", "--set", "steps=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("bilevel run: error: ") and "Read-only file system" in err
    assert (out / checkpoint.FILENAME).read_bytes() == saved


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a directory without w permission")
def test_resume_in_a_chmod_read_only_directory_is_refused(tmp_path):
    train(tmp_path)
    before = (tmp_path / checkpoint.FILENAME).read_bytes()
    for path in [*tmp_path.iterdir(), tmp_path]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with pytest.raises(bilevel.RunDirectoryError, match="cannot write in the run directory"):
            train(tmp_path, steps=5, resume=True)
    finally:
        for path in [tmp_path, *tmp_path.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert (tmp_path / checkpoint.FILENAME).read_bytes() == before


# A full disk while checkpointing --------------------------------------------------------

def fill_disk_after(monkeypatch, saves: int) -> None:
    """torch.save writes part of the file, then fails with ENOSPC, from the (saves + 1)-th
    call on."""
    save, calls = torch.save, []

    def full(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) <= saves:
            return save(obj, file, *args, **kwargs)
        file.write(b"PK\x03\x04 torn")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)


def test_a_full_disk_while_checkpointing_stops_the_run_and_keeps_the_last_one(tmp_path,
                                                                              monkeypatch):
    fill_disk_after(monkeypatch, saves=2)
    with pytest.raises(bilevel.RunWriteError, match=(
            r"stopped after step 3: cannot write .*checkpoint\.pt \(No space left on device\); "
            r"the previous checkpoint is left as it was; the last good checkpoint \(step 2\) "
            "is kept")):
        train(tmp_path, steps=5, checkpoint_every=1)
    assert checkpoint.load(tmp_path)["step"] == 2  # loadable, its checksum intact
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()  # the disk freed: the run resumes from step 2
    resumed = train(tmp_path, steps=5, checkpoint_every=1, resume=True)
    assert resumed.summary["steps_completed"] == 5
    uninterrupted = train(tmp_path / "again", steps=5)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in uninterrupted.history]


def test_cli_full_disk_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "problem": {"name": "quadratic", "dim": 4, "kappa": 10.0, "n_tasks": 4},
        "solver": {"name": "gd", "lr": 0.05, "steps": 10}, "steps": 3, "tasks_per_step": 2,
        "checkpoint_every": 1, "progress": False}))
    fill_disk_after(monkeypatch, saves=1)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("bilevel run: stopped: stopped after step 2: cannot write")
    assert "No space left on device" in err and checkpoint.load(out)["step"] == 1


def fill_disk_in_metrics(monkeypatch, records: int) -> None:
    """metrics.jsonl, opened for appending, takes `records` lines; the next write puts part
    of its line into the file and fails with ENOSPC, as every one after it."""
    open_ = Path.open

    class Full:
        def __init__(self, file):
            self.file, self.left = file, records

        def write(self, text):
            if self.left == 0:
                self.file.write(text[:7])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= 1
            return self.file.write(text)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def guarded(self, mode="r", *args, **kwargs):
        file = open_(self, mode, *args, **kwargs)
        return Full(file) if self.name == "metrics.jsonl" and "a" in mode else file

    monkeypatch.setattr(Path, "open", guarded)


def test_a_full_disk_while_logging_metrics_stops_the_run_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch):
    fill_disk_in_metrics(monkeypatch, records=2)
    with pytest.raises(bilevel.RunWriteError, match=(
            r"^stopped after step 3: cannot write .*metrics\.jsonl \(No space left on "
            r"device\); the last good checkpoint \(step 2\) is kept in ")):
        train(tmp_path, steps=5, checkpoint_every=1)
    assert checkpoint.load(tmp_path)["step"] == 2  # step 3 never saved
    monkeypatch.undo()  # the disk freed: the run resumes from step 2, its record whole
    resumed = train(tmp_path, steps=5, checkpoint_every=1, resume=True)
    uninterrupted = train(tmp_path / "again", steps=5)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in uninterrupted.history]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]


def test_cli_full_disk_in_metrics_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    config, out = cli_run(tmp_path)  # 3 steps, checkpointed at the end
    capsys.readouterr()
    fill_disk_in_metrics(monkeypatch, records=1)
    assert main(["run", str(config), "--out", str(out), "--resume", "--set", "steps=6"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("bilevel run: stopped: stopped after step 5: cannot write ")
    assert "metrics.jsonl (No space left on device)" in err
    assert "the last good checkpoint (step 3) is kept" in err
    assert checkpoint.load(out)["step"] == 3


def test_a_full_disk_while_writing_a_record_leaves_it_and_no_temporary_file(tmp_path,
                                                                            monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("{}\n")
    write_text = Path.write_text

    def full(self, text, *args, **kwargs):
        write_text(self, text[:3], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(bilevel.RunWriteError,
                       match=r"cannot write .*summary\.json \(No space left on device\)"):
        write_atomically(path, '{"status": "completed"}\n')
    monkeypatch.undo()
    assert path.read_text() == "{}\n" and [f.name for f in tmp_path.iterdir()] == [path.name]


# A hyperparameter read outside autograd --------------------------------------------------

def hypergradient(problem, method="fo-bmaml"):
    problem, h, tasks = setting(problem)
    return bilevel.hypergradient(problem, h, tasks, solver=SHORT, method=method)


@pytest.mark.parametrize("problem, message", [
    (fp.ItemOnHyper(), r"problem\.train_loss reads h\['log_lam'\] outside autograd"),
    (fp.IfOnHyper(), r"problem\.val_loss reads h\['w'\] outside autograd"),
    (fp.FloatInLam(), r"problem\.inner_objective \(train_loss \+ lam\(h\) \* regularizer\) reads "
                      r"h\['log_lam'\] outside autograd"),
], ids=["item", "if", "float in lam"])
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
@pytest.mark.parametrize("method", ["fo-bmaml", "maml", "exact"])
def test_a_hyperparameter_read_outside_autograd_is_named(problem, message, method):
    with pytest.raises(bilevel.InvalidInputError, match=message + r" \(\.item\(\), float\(\), "
                                                                  r"or a Python `if`"):
        hypergradient(problem, method)


def test_the_read_is_found_on_the_first_call_and_costs_nothing_after(monkeypatch):
    problem, h, tasks = setting(fp.Ridge())
    bilevel.hypergradient(problem, h, tasks, solver=SHORT, method="fomaml")
    calls = []
    monkeypatch.setattr(problem_checks, "_check_reads_hyper", lambda *a: calls.append(a))
    bilevel.hypergradient(problem, h, tasks, solver=SHORT, method="fomaml")
    assert calls == []  # cached with the problem's other checks


def test_a_leaf_no_loss_reads_is_accepted():
    grad, _ = hypergradient(fp.UnusedHyper(), "exact")
    assert torch.equal(grad["spare"], torch.zeros(2, dtype=torch.float64))
    assert grad["log_lam"].abs() > 0  # the other leaves still get their gradient


def test_theta_read_only_through_inner_init_is_accepted():
    grad, _ = hypergradient(fp.Unregularized(), "maml")
    assert grad["theta"]["w"].abs().sum() > 0
