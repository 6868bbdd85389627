"""Run directories that cannot lose or mix data (issue: nothing silent): foreign files are
never overwritten, a checkpoint must be this run's, a run killed before its first checkpoint
resumes from step 0, stray temporary files are cleaned, metrics survive their deletion."""

import json
import shutil

import pytest
import torch

import bilevel
from bilevel.training import checkpoint
from tests.test_training import quadratic, train, without_time


def records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_refuses_a_directory_with_files_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(bilevel.RunDirectoryError, match="notes.txt"):
        train(out=tmp_path, steps=2)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_refuses_a_file_or_a_path_below_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(bilevel.RunDirectoryError, match="is a file"):
        train(out=target, steps=1)
    with pytest.raises(bilevel.RunDirectoryError, match="cannot create"):
        train(out=target / "below", steps=1)


def test_a_checkpoint_of_another_run_is_refused_even_without_settings(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    train(out=first, steps=2, seed=0)
    train(out=second, steps=2, seed=1)
    shutil.copy(first / checkpoint.FILENAME, second / checkpoint.FILENAME)
    with pytest.raises(bilevel.RunDirectoryError, match="not a checkpoint of this run"):
        train(out=second, steps=3, seed=1, resume=True)
    (second / "settings.json").unlink()
    with pytest.raises(bilevel.RunDirectoryError, match="not a checkpoint of this run"):
        train(out=second, steps=3, seed=1, resume=True)


def test_a_checkpoint_whose_step_was_edited_is_refused(tmp_path):
    train(out=tmp_path, steps=3)
    state = torch.load(tmp_path / checkpoint.FILENAME, weights_only=True)
    checkpoint.save(tmp_path, state | {"step": 1})
    with pytest.raises(bilevel.RunDirectoryError, match="inconsistent: step 1 after 3"):
        train(out=tmp_path, steps=5, resume=True)


def test_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path):
    whole = train(out=tmp_path / "whole", steps=3)
    killed = tmp_path / "killed"
    train(out=killed, steps=3)
    (killed / checkpoint.FILENAME).unlink()  # as if killed after settings.json, before it
    (killed / ".checkpoint.pt.4242.tmp").write_bytes(b"torn")
    with pytest.raises(bilevel.RunDirectoryError, match="resume=True"):
        train(out=killed, steps=3)
    resumed = train(out=killed, steps=3, resume=True)
    assert without_time(resumed.history) == without_time(whole.history)
    assert not list(killed.glob(".*.tmp"))


def test_metrics_deleted_mid_run_are_whole_at_the_end(tmp_path):
    problem = quadratic()
    sample = problem.sample_tasks

    def deleting(n, generator=None):
        (tmp_path / "metrics.jsonl").unlink(missing_ok=True)
        return sample(n, generator)

    problem.sample_tasks = deleting
    result = train(problem, out=tmp_path, steps=3)
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3] == [
        r["step"] for r in result.history]
