"""The record of a run cannot lie (issue 22): another problem, a run directory in use, a
resume with fewer steps than done are refused before anything is written."""

import json

import pytest
import yaml

import bilevel
from bilevel.cli import main
from bilevel.training.rundir import RunDirectory
from problems.quadratic import Quadratic
from tests.faults.fault_problems import cli_run

SOLVER = bilevel.solvers.GD(lr=0.05, steps=10)


def train(problem=None, **options):
    settings = dict(solver=SOLVER, steps=3, tasks_per_step=2, progress=False)
    return bilevel.meta_train(problem or Quadratic(dim=4, kappa=10.0, n_tasks=4),
                              **(settings | options))


@pytest.mark.parametrize("other", [{"kappa": 20.0}, {"seed": 1}])
def test_resume_with_another_problem_is_refused(tmp_path, other):
    train(out=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(bilevel.RunDirectoryError, match="Quadratic's tasks differ from those"):
        train(Quadratic(dim=4, n_tasks=4, **({"kappa": 10.0} | other)), out=tmp_path,
              steps=4, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


class ShiftedStart(Quadratic):
    def init_hyper(self, generator=None):
        h = super().init_hyper(generator)
        return h | {"theta": {k: v + 1 for k, v in h["theta"].items()}}


def test_resume_with_another_init_hyper_names_it(tmp_path):
    train(out=tmp_path)
    with pytest.raises(bilevel.RunDirectoryError, match=r"problem\.class: .*; "
                                                        r"problem\.init_hyper: '[0-9a-f]+' "):
        train(ShiftedStart(dim=4, kappa=10.0, n_tasks=4), out=tmp_path, steps=4, resume=True)


def test_a_run_directory_in_use_is_refused(tmp_path):
    holder = RunDirectory(tmp_path, resume=False)  # as a run in another process holds it
    try:
        with pytest.raises(bilevel.RunDirectoryError, match="in use by another run"):
            train(out=tmp_path)
    finally:
        holder.close()
    train(out=tmp_path)  # released: the run starts


def test_resume_with_fewer_steps_than_done_is_refused_and_the_record_kept(tmp_path, capsys):
    config, out = cli_run(tmp_path)
    recorded = (out / "config.yaml").read_text()
    assert main(["run", str(config), "--out", str(out), "--resume", "--set", "steps=2"]) == 2
    assert "has done 3 steps, more than steps=2" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == recorded
    assert json.loads((out / "settings.json").read_text())["steps"] == 3
    assert main(["run", str(config), "--out", str(out), "--resume", "--set", "steps=5"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 5


@pytest.mark.parametrize("name, content", [
    ("metrics.jsonl", b'{"step": 1, "loss": 0.5, "theirs": true}\n'),
    ("checkpoint.pt", b"not ours"), ("summary.json", b"{}\n")])
def test_out_holding_a_run_file_of_someone_else_is_refused_before_anything(tmp_path, name,
                                                                           content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(bilevel.RunDirectoryError, match=f"holds {name} but no settings.json"):
        train(out=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [name]
    assert (tmp_path / name).read_bytes() == content


def test_cli_out_holding_a_foreign_checkpoint_is_one_line_and_nothing_written(tmp_path,
                                                                                capsys):
    config, _ = cli_run(tmp_path)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not ours")
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds checkpoint.pt but no settings.json" in err
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]
