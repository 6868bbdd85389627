"""A run directory is movable (issue 22): its config.yaml records a data path given relative
as relative to the run directory, and the run directory of a run's own record is the folder
it is in, so a run moved together with its data resumes bit for bit; an absolute path stays
absolute; data left behind is one line naming the key and the file."""

import json
import shutil
from pathlib import Path

import torch
import yaml

from bilevel.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUICK = ["--set=solver.steps=20", "--set=progress=false", "--set=eval.every=2"]


def project(folder: Path) -> Path:
    """folder/{breast_cancer.yaml, data/breast_cancer.csv}: the README's example, its data
    path relative to the config."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(EXAMPLES / "breast_cancer.yaml", folder)
    shutil.copy(EXAMPLES / "data" / "breast_cancer.csv", folder / "data")
    return folder / "breast_cancer.yaml"


def records(directory: Path) -> list[dict]:
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def same_run(one: Path, other: Path) -> bool:
    h1, h2 = (torch.load(d / "checkpoint.pt", weights_only=True)["h"] for d in (one, other))
    return records(one) == records(other) and all(
        torch.equal(h1[k][n], h2[k][n]) for k in h1 for n in h1[k]) and (
        (one / "test.json").read_text() == (other / "test.json").read_text())


def test_a_run_moved_with_its_data_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project(tmp_path / "project").parent)
    assert main(["run", "breast_cancer.yaml", "--out", "runs/whole", "--set=steps=4",
                 *QUICK]) == 0
    assert main(["run", "breast_cancer.yaml", "--out", "runs/part", "--set=steps=2",
                 *QUICK]) == 0
    recorded = yaml.safe_load(Path("runs/part/config.yaml").read_text())
    assert recorded["problem"]["source"]["path"] == "../../data/breast_cancer.csv"
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    (tmp_path / "project").rename(moved)  # the old place no longer exists
    capsys.readouterr()
    # The command Ctrl-C prints, from another working directory, without --out.
    assert main(["run", str(moved / "runs/part/config.yaml"), "--resume", "--set=steps=4"]) == 0
    assert capsys.readouterr().out.startswith(f"completed: 4 steps in {moved / 'runs/part'}")
    assert same_run(moved / "runs/part", moved / "runs/whole")
    assert main(["show", str(moved / "runs/part")]) == 0
    assert "completed after 4 steps" in capsys.readouterr().out


def test_an_absolute_data_path_stays_absolute_and_data_left_behind_is_named(tmp_path,
                                                                            capsys):
    config = project(tmp_path / "project")
    data = config.parent / "data" / "breast_cancer.csv"
    part, alone = tmp_path / "part", tmp_path / "alone"
    quick = [*QUICK, f"--set=problem.source.path={data}"]
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--set=steps=4",
                 *quick]) == 0
    assert main(["run", str(config), "--out", str(part), "--set=steps=2", *quick]) == 0
    assert yaml.safe_load((part / "config.yaml").read_text())["problem"]["source"][
        "path"] == str(data)
    part.rename(alone)  # the run without its data: the absolute path still finds it
    assert main(["run", str(alone / "config.yaml"), "--resume", "--set=steps=4"]) == 0
    assert same_run(alone, tmp_path / "whole")
    relative = tmp_path / "relative"  # a relative path, the run moved without its data
    assert main(["run", str(config), "--out", str(relative), "--set=steps=2", *QUICK]) == 0
    moved = tmp_path / "deeper" / "relative"
    moved.parent.mkdir()
    relative.rename(moved)
    capsys.readouterr()
    assert main(["run", str(moved / "config.yaml"), "--resume", "--set=steps=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "problem.source.path" in err and "data/breast_cancer.csv: No such file" in err
    assert json.loads((moved / "summary.json").read_text())["steps_completed"] == 2
