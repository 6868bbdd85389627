"""RunSpec: a run's options defined once; meta_train takes one; its record; callbacks."""

import dataclasses
import inspect
import json

import pytest
import yaml

import bilevel
from bilevel.config import from_dict, run
from bilevel.config.schema import run_config_model
from bilevel.training.spec import OPTIONS, RESUMABLE, Evaluation, RunSpec
from problems.quadratic import Quadratic

SOLVER = bilevel.solvers.GD(lr=0.05, steps=10)


def quadratic():
    return Quadratic(dim=4, kappa=10.0, n_tasks=4)


def spec(**changes):
    return RunSpec(solver=SOLVER, steps=4, tasks_per_step=3, progress=False).replace(**changes)


def test_every_run_option_is_a_field_of_the_spec_and_defined_nowhere_else():
    """The config's keys are the spec's fields and the keys that build the problem or say
    where; meta_train's keywords are the spec's fields and where to run."""
    config_keys = set(run_config_model().model_fields)
    assert config_keys - set(OPTIONS) == {"problem", "device", "dtype", "out", "search"}
    assert set(OPTIONS) <= config_keys
    schema = run_config_model().model_fields
    for field in dataclasses.fields(RunSpec):
        assert schema[field.name].description == field.metadata["doc"]
    parameters = set(inspect.signature(bilevel.meta_train).parameters)
    assert parameters == {"problem", "spec", "out", "resume", "callbacks", "options"}
    assert RESUMABLE == {"steps", "checkpoint_every", "threads", "progress"}


def test_a_spec_builds_its_units_once_and_checks_its_options():
    built = RunSpec(solver={"name": "gd", "lr": 0.1, "steps": 5}, method="fomaml",
                    outer={"name": "sgd", "lr": 0.1}, steps=2, tasks_per_step=1,
                    eval={"every": 1, "tasks": 2})
    assert built.solver == bilevel.solvers.GD(lr=0.1, steps=5)
    assert type(built.method).__name__ == "FOMAML" and built.method.name == "fomaml"
    assert built.eval == Evaluation(every=1, tasks=2) and built.outer.name == "sgd"
    assert built.replace(steps=3).method is built.method  # not rebuilt
    for bad, match in [({"steps": 0}, "steps must be an integer >= 1"),
                       ({"divergence_factor": 1.0}, "divergence_factor must be a finite "
                                                    "number > 1"),
                       ({"progress": "yes"}, "progress must be true or false"),
                       ({"method": "nope"}, "unknown method 'nope'"),
                       ({"eval": {"every": 0, "tasks": 1}}, "eval.every"),
                       ({"compile": "fast"}, "compile must be")]:
        with pytest.raises(bilevel.InvalidInputError, match=match):
            spec(**bad)


def test_meta_train_takes_a_spec_or_its_keywords_with_the_same_result():
    by_spec = bilevel.meta_train(quadratic(), spec(eval=Evaluation(every=2, tasks=2)))
    by_keywords = bilevel.meta_train(quadratic(), solver=SOLVER, steps=4, tasks_per_step=3,
                                     progress=False, eval_every=2, eval_tasks=2)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in by_spec.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in by_keywords.history]
    with pytest.raises(bilevel.InvalidInputError, match="not both"):
        bilevel.meta_train(quadratic(), spec(), steps=3)
    with pytest.raises(bilevel.InvalidInputError, match="unknown run option"):
        bilevel.meta_train(quadratic(), solver=SOLVER, steps=1, tasks_per_step=1, stepz=2)


def test_settings_json_and_config_yaml_record_the_spec_alike(tmp_path):
    config = from_dict({"problem": {"name": "quadratic", "dim": 4, "n_tasks": 4},
                        "solver": {"name": "gd", "lr": 0.05, "steps": 5}, "steps": 2,
                        "tasks_per_step": 2, "progress": False, "eval": {"every": 1,
                                                                        "tasks": 2}})
    run(config, out=tmp_path)
    settings = json.loads((tmp_path / "settings.json").read_text())
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert {key: settings[key] for key in OPTIONS} == {key: recorded[key] for key in OPTIONS}
    assert set(settings) - set(OPTIONS) == {"problem", "world_size", "device", "dtype", "torch"}


class Recorder(bilevel.Callback):
    def __init__(self, stop_at=None):
        self.steps, self.evaluations, self.stop_at = [], [], stop_at

    def on_step(self, record, h):
        self.steps.append(record["step"])
        if record["step"] == self.stop_at:
            raise RuntimeError("enough")

    def on_evaluation(self, record, h):
        self.evaluations.append((record["step"], record["eval_val_loss"]))


def test_callbacks_hear_every_step_and_evaluation():
    recorder = Recorder()
    result = bilevel.meta_train(quadratic(), spec(eval=Evaluation(every=3, tasks=2)),
                                callbacks=[recorder])
    assert recorder.steps == [1, 2, 3, 4]
    assert recorder.evaluations == [(r["step"], r["eval_val_loss"]) for r in result.history
                                    if "eval_val_loss" in r] and len(recorder.evaluations) == 2


def test_a_callback_that_raises_stops_the_run_with_its_step_kept(tmp_path):
    with pytest.raises(RuntimeError, match="enough"):
        bilevel.meta_train(quadratic(), spec(), out=tmp_path, callbacks=[Recorder(stop_at=2)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps_completed"] == 2
    assert "RuntimeError: enough" in summary["message"]
    resumed = bilevel.meta_train(quadratic(), spec(), out=tmp_path, resume=True)
    whole = bilevel.meta_train(quadratic(), spec())
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
