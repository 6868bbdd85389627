"""`bilevel compare` counts all spent work and reports within the budget only (issue 22): a
budget too small for one point is one line, a killed trial's work is counted and the trial
finished, the Optuna side's test numbers come from its best trial within the budget."""

import json

import optuna
import pytest
import yaml

from bilevel.cli import main
from bilevel.compare import compare
from bilevel.compare.study import best_within, study_curve
from bilevel.errors import InvalidInputError
from tests.test_compare import config


@pytest.mark.parametrize("only, budget, side", [
    ("bilevel", 30, "the bilevel side's first validated point"),  # a step and a validation
    ("optuna", 10, "one Optuna trial")])  # one solve of 20 steps
def test_a_budget_too_small_for_one_point_is_one_error(tmp_path, only, budget, side):
    with pytest.raises(InvalidInputError, match=rf"search.budget: {budget} inner gradient "
                                                rf"evaluations do not buy {side}"):
        compare(config(search={"budget": {"inner_grad_evals": budget}}), out=tmp_path,
                only=only)


def test_the_cli_says_so_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config(search={"budget": {"inner_grad_evals": 30}}).resolved))
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bilevel compare: error: search.budget: 30 inner gradient")
    assert len(error.splitlines()) == 1


def test_a_killed_trials_work_is_counted_and_the_trial_finished(tmp_path):
    """A trial left RUNNING by a killed worker 0, with the cost it recorded: the next run
    of worker 0 fails it and counts that cost before its own trials."""
    study = optuna.create_study(study_name="compare", direction="minimize",
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    killed = study.ask()
    killed.set_user_attr("worker", 0)
    killed.set_user_attr("cost", 123.0)
    killed.set_user_attr("seconds", 0.5)
    compare(config(), out=tmp_path, only="optuna")
    study = optuna.load_study(study_name="compare", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [trial.state for trial in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states
    curve = study_curve(study, "inner_grad_evals", 1e9)
    assert curve.cost[0] == 123.0 and curve.best[0] == float("inf")


def test_the_best_trial_within_the_budget_is_reported():
    study = optuna.create_study(direction="minimize")
    for value, cost in [(2.0, 100.0), (3.0, 100.0), (1.0, 100.0)]:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"cost": cost}))
    assert best_within(study, "inner_grad_evals", 250).value == 2.0  # not the 1.0 at 300
    assert best_within(study, "inner_grad_evals", 300).value == 1.0
    assert best_within(study, "inner_grad_evals", 50) is None


def test_the_bilevel_side_is_a_study_beside_optunas(tmp_path):
    """optuna-dashboard shows the bilevel side: its own study in the same storage, read back
    through Optuna's API, equal to compare.json's curve."""
    compare(config(), out=tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    bilevel = optuna.load_study(study_name="compare-bilevel", storage=storage)
    (trial,) = bilevel.trials
    saved = json.loads((tmp_path / "compare.json").read_text())["curves"]["bilevel"]
    assert sorted(trial.intermediate_values) == [round(c) for c in saved["cost"]]
    assert trial.value == saved["best_val_loss"][-1]
    assert {"test_loss", "test_accuracy", "seconds"} <= set(trial.user_attrs)
    for name in ("compare", "compare-bilevel"):
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        assert attrs["budget"] == 600 and attrs["budget_unit"] == "inner_grad_evals"
    compare(config(), out=tmp_path)  # resumed: the bilevel study is written anew, not doubled
    assert len(optuna.load_study(study_name="compare-bilevel", storage=storage).trials) == 1


def test_a_diverging_hybrid_trials_work_is_counted(tmp_path):
    """Each hybrid trial's first step blows up (an inner solve grows 1.46-fold, more than
    divergence_factor 1.2): the trial fails, and the hypergradient that step spent (two
    solves of 20 steps: 40 inner gradient evaluations, in no record) is counted."""
    search = {"space": {}, "budget": {"inner_grad_evals": 200},
              "config": {"solver.lr": {"choices": [50.0]}}}
    compare(config(search=search, steps=3, divergence_factor=1.2), out=tmp_path, only="optuna")
    study = optuna.load_study(study_name="compare", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert {trial.state for trial in study.trials} == {optuna.trial.TrialState.FAIL}
    assert [trial.user_attrs["cost"] for trial in study.trials] == [40.0] * 5
    assert study_curve(study, "inner_grad_evals", 200).cost == [40.0, 80.0, 120.0, 160.0, 200.0]


@pytest.mark.parametrize("url, fragment", [
    ("notaurl", "Could not parse SQLAlchemy URL"),
    ("sqlite:////nonexistent/folder/study.db", "unable to open database file")])
def test_a_storage_that_does_not_open_is_one_line_before_any_work(tmp_path, capsys, url,
                                                                  fragment):
    """The storage is opened before the bilevel side trains (it was opened after it)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config().resolved | {"out": None}))
    assert main(["compare", str(path), "--out", str(tmp_path / "out"), "--storage", url]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"storage {url!r}: cannot open it" in error
    assert fragment in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml"]
