"""meta_train in subprocesses (tests/train_quadratic.py): a run killed with SIGKILL or
interrupted with SIGINT, then resumed, ends bit for bit where an uninterrupted run does;
two processes under torchrun end where one process does."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bilevel.errors import RunDirectoryError
from bilevel.training import checkpoint
from bilevel.tree import relative_error, tree_leaves, tree_map

SCRIPT = Path(__file__).with_name("train_quadratic.py")
ROOT = SCRIPT.parents[1]
STEPS = 12  # train_quadratic.SETTINGS["steps"]


def launch(out, *extra, sleep=0.0):
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--sleep", str(sleep), *extra]
    return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=60):
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stderr


def records(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def wait_for_lines(out, n, process, timeout=60):
    deadline = time.monotonic() + timeout
    path = Path(out) / "metrics.jsonl"
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "the run did not reach the step in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final checkpoint and metrics."""
    out = tmp_path_factory.mktemp("reference")
    finish(launch(out))
    return checkpoint.load(out), records(out)


def load_script():
    """tests/train_quadratic.py as a module, its problem named as when launched."""
    spec = importlib.util.spec_from_file_location("train_quadratic", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.SlowQuadratic.__module__ = "__main__"  # as settings.json names it when launched
    return script


def assert_same_run(out, reference):
    saved, history = checkpoint.load(out), records(out)
    expected, expected_history = reference
    assert saved["step"] == STEPS and history == expected_history
    for a, b in zip(torch.utils._pytree.tree_leaves(saved["h"]),
                    torch.utils._pytree.tree_leaves(expected["h"]), strict=True):
        assert torch.equal(a, b)
    assert str(saved["optimizer"]) == str(expected["optimizer"])


def test_a_killed_run_resumes_to_the_same_result_bitwise(tmp_path, reference):
    run = launch(tmp_path, sleep=0.1)
    wait_for_lines(tmp_path, 5, run)  # checkpoints every 2 steps: one at step 4 at least
    run.send_signal(signal.SIGKILL)
    run.wait()
    step = checkpoint.load(tmp_path)["step"]
    assert 4 <= step < STEPS and len(records(tmp_path)) > step
    finish(launch(tmp_path, "--resume"))
    assert_same_run(tmp_path, reference)


def test_a_killed_warm_started_run_resumes_to_the_same_result_bitwise(tmp_path_factory):
    """The warm starts (the last inner solutions) are in the checkpoint: killed after a
    checkpoint, the resumed run continues them and ends where an uninterrupted one does."""
    expected = tmp_path_factory.mktemp("warm-reference")
    script = load_script()
    script.train(expected, warm_start=True)  # in this process (as the resume): quicker
    out = tmp_path_factory.mktemp("warm")
    run = launch(out, "--warm-start", sleep=0.1)
    wait_for_lines(out, 5, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    saved = checkpoint.load(out)
    assert 4 <= saved["step"] < STEPS and saved["warm_start"]["phi"] is not None
    script.train(out, resume=True, warm_start=True)
    assert_same_run(out, (checkpoint.load(expected), records(expected)))
    history = records(out)
    assert history[0]["inner_grad_evals"] == 5 * (10 + 2 * 4)  # 5 tasks: cold, then stencil
    assert {r["inner_grad_evals"] for r in history[1:]} == {5 * (3 + 2 * 4)}
    assert history[0]["warm_start_inner_grad_evals"] == 50


def test_a_killed_single_loop_run_resumes_to_the_same_result_bitwise(tmp_path_factory):
    """soba's state (z, v and its step counter, per task) is in the checkpoint: killed after
    a checkpoint, the resumed run continues it and ends where an uninterrupted one does; a
    checkpoint whose state has other task slots is refused."""
    expected = tmp_path_factory.mktemp("soba-reference")
    script = load_script()
    script.train(expected, method="soba")
    out = tmp_path_factory.mktemp("soba")
    run = launch(out, "--method", "soba", sleep=0.1)
    wait_for_lines(out, 5, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    saved = checkpoint.load(out)
    assert 4 <= saved["step"] < STEPS and saved["estimator_state"]["t"].tolist() == [
        saved["step"]] * 5
    torn = tmp_path_factory.mktemp("soba-torn")
    for name in ("settings.json", "metrics.jsonl"):
        (torn / name).write_text((out / name).read_text())
    checkpoint.save(torn, saved | {"estimator_state": tree_map(lambda t: t[:3],
                                                               saved["estimator_state"])})
    with pytest.raises(RunDirectoryError, match="3] task slots, but a step has tasks_per_step=5"):
        script.train(torn, resume=True, method="soba")
    script.train(out, resume=True, method="soba")
    reference = checkpoint.load(expected)
    assert_same_run(out, (reference, records(expected)))
    for a, b in zip(tree_leaves(checkpoint.load(out)["estimator_state"]),
                    tree_leaves(reference["estimator_state"]), strict=True):
        assert torch.equal(a, b)


def test_ctrl_c_checkpoints_the_last_completed_step_and_resumes(tmp_path, reference):
    run = launch(tmp_path, sleep=0.1)
    wait_for_lines(tmp_path, 3, run)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode != 0
    step = checkpoint.load(tmp_path)["step"]
    assert f"checkpoint of step {step} written to {tmp_path}" in stderr
    assert f"resume with meta_train(..., out={str(tmp_path)!r}, resume=True)" in stderr
    assert len(records(tmp_path)) == step and STEPS > step >= 3
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    finish(launch(tmp_path, "--resume"))
    assert_same_run(tmp_path, reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_torchrun_match_one_process(tmp_path, reference):
    """Batches of 5 tasks split 2 + 3: the weighted all-reduce gives the one-process mean."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               str(SCRIPT), "--out", str(tmp_path)]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 0, result.stderr
    saved, expected = checkpoint.load(tmp_path), reference[0]
    for a, b in zip(torch.utils._pytree.tree_leaves(saved["h"]),
                    torch.utils._pytree.tree_leaves(expected["h"]), strict=True):
        assert relative_error(a, b) < 1e-6
    history, expected_history = records(tmp_path), reference[1]
    assert [r["inner_grad_evals_total"] for r in history] == \
        [r["inner_grad_evals_total"] for r in expected_history]
    assert json.loads((tmp_path / "settings.json").read_text())["world_size"] == 2
    for record, expected_record in zip(history, expected_history, strict=True):
        assert record.keys() == expected_record.keys()
        for key in ("grad_norm", "eval_val_loss", "inner_grad_norm_mean", "inner_grad_norm_max"):
            if key in expected_record:
                assert record[key] == pytest.approx(expected_record[key], rel=1e-6)


def test_fifteen_kills_at_random_moments_then_resume_give_the_same_run(tmp_path, reference):
    """SIGKILL fifteen times, in turn during start-up, right after settings.json is written
    (before the run's next checkpoint), and right after a checkpoint step's record (while
    its checkpoint is written), each at a seeded random moment, resuming each time a run
    directory exists: the run still ends bit for bit where the uninterrupted one does."""
    import random

    moments = random.Random(0)
    settings = tmp_path / "settings.json"
    for kill in range(15):
        launched = time.time()
        run = launch(tmp_path, *(["--resume"] if settings.exists() else []), sleep=0.1)
        if kill % 3 == 0:  # importing torch, building the problem
            time.sleep(moments.uniform(0.05, 0.8))
        elif kill % 3 == 1:  # settings.json (re)written, the next checkpoint not yet
            while not (settings.exists() and settings.stat().st_mtime >= launched) \
                    and run.poll() is None:
                time.sleep(0.002)
        else:  # a checkpoint step's record logged: its checkpoint is being written
            target = 2 * moments.randint(1, STEPS // 2 - 1)
            wait_for_lines(tmp_path, target, run)
            time.sleep(moments.uniform(0.0, 0.02))
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
        run.wait()
    finish(launch(tmp_path, *(["--resume"] if settings.exists() else [])))
    assert_same_run(tmp_path, reference)
    assert not list(tmp_path.glob(".*.tmp"))
