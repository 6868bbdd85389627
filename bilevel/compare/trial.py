"""One Optuna trial: set the searched config keys, fix the searched leaves of h, then
meta-train the other leaves (the hybrid: intermediate validation losses reported, so a
pruner may stop the trial) or, when none is left, solve and validate once. Each trial
records what it cost (`bilevel.compare.cost`) as the user attributes "cost", "seconds",
and which worker ran it as "worker"."""

import dataclasses
import functools
import math
import time
from pathlib import Path

import optuna
import torch

from bilevel.compare.bilevel_side import evaluation, history_curve, train
from bilevel.compare.cost import solve_cost, step_cost
from bilevel.compare.space import fixed_values, parameter_names
from bilevel.config.build import build
from bilevel.config.load import from_dict
from bilevel.errors import DivergenceError
from bilevel.problem_view import ProblemView
from bilevel.training.callbacks import Callback
from bilevel.training.metrics import held_out, held_out_tasks


def suggest(trial, name: str, spec: dict):
    """The trial's value for one searched key: a Range (float or int, linear or log) or
    Choices (any YAML values; Optuna stores them by index when they are not scalars)."""
    if "choices" in spec:
        choices = spec["choices"]
        if all(isinstance(c, str | int | float | bool) or c is None for c in choices):
            return trial.suggest_categorical(name, choices)
        return choices[trial.suggest_categorical(name, list(range(len(choices))))]
    low, high, log = spec["low"], spec["high"], spec["scale"] == "log"
    if spec["type"] == "int":
        return trial.suggest_int(name, math.ceil(low), math.floor(high), log=log)
    return trial.suggest_float(name, low, high, log=log)


def with_values(config, values: dict):
    """`config` with each dotted key path set to its value, validated again."""
    data = _copy(config.resolved)
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {"name": node[part]} if isinstance(node.get(part), str) else {}
            node = node[part]
        node[parts[-1]] = value
    return from_dict(data, file=config.file)


def _copy(tree):
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return list(map(_copy, tree)) if isinstance(tree, list) else tree


class Trial:
    """The objective: validation loss (mean over the held-out tasks) of one trial."""

    def __init__(self, config, built, search: dict, directory: Path, worker: int = 0):
        self.config, self.built, self.search, self.directory = config, built, search, directory
        self.worker = worker

    def configured(self, values: dict):
        """(config, built) with the searched config keys set to `values`."""
        if not values:
            return self.config, self.built
        config = with_values(self.config, values)
        return config, build(config)

    def fixed(self, trial, built) -> dict:
        h0 = built.problem.init_hyper(torch.Generator().manual_seed(0))  # for shapes
        names = parameter_names(h0, self.search["space"])
        return fixed_values(h0, self.search["space"],
                            {name: suggest(trial, name, spec) for name, spec in names.items()})

    def __call__(self, trial) -> float:
        start, spent = time.perf_counter(), [0.0]
        trial.set_user_attr("worker", self.worker)
        # Recorded as the work is spent, so that a trial whose process is killed counts
        # what it spent (a later run fails it: `study.fail_own_stale_trials`).
        record = functools.partial(_record_spent, trial, spent, start)
        try:
            _, built = self.configured({key: suggest(trial, key, spec)
                                        for key, spec in self.search["config"].items()})
            problem = ProblemView(built.problem, fixed=self.fixed(trial, built))
            if problem.init_hyper(torch.Generator().manual_seed(0)):
                return self.meta_train(trial, dataclasses.replace(built, problem=problem),
                                       spent, record)
            return self.validate(built, problem.full({}), spent, record)
        except DivergenceError as error:  # the steps before it counted by `_Reporter`
            spent[0] += step_cost(error.spent) + error.spent.get("held_out_inner_grad_evals", 0)
            return math.nan  # Optuna records the trial as failed; its cost still counts
        finally:
            record()

    def validate(self, built, h: dict, spent: list, record) -> float:
        """Solve and validate once at h; its cost is recorded before the solve."""
        n = evaluation(built.spec).tasks
        spent[0] += solve_cost(built.spec.solver, n)
        record()
        sums = held_out(built.problem, h, held_out_tasks(built.problem, n, built.spec.seed),
                        built.spec.solver, compile=built.spec.compile)
        return sums["val_loss"].item() / n

    def meta_train(self, trial, built, spent: list, record) -> float:
        """Meta-train the learned leaves in the trial's own run directory, reporting each
        validation to the pruner (which may stop the trial after it)."""
        reporter = _Reporter(trial, built, spent, record)
        train(built, out=self.directory / str(trial.number), callbacks=[reporter])
        return reporter.value


def _record_spent(trial, spent: list, start: float) -> None:
    """The trial's user attributes "cost" (spent so far) and "seconds" (since `start`)."""
    trial.set_user_attr("cost", spent[0])
    trial.set_user_attr("seconds", time.perf_counter() - start)


class _Reporter(Callback):
    """A hybrid trial's callback: counts each step's cost as it completes (so a pruned or
    diverged trial's work is counted), reports each validation to the pruner."""

    def __init__(self, trial, built, spent: list, record_spent):
        self.trial, self.built, self.spent, self.value = trial, built, spent, math.nan
        self.record_spent = record_spent

    def on_step(self, record: dict, h: dict) -> None:
        _, self.spent[0] = history_curve("trial", [record], self.built,
                                         evaluation(self.built.spec).tasks,
                                         start=(self.spent[0], 0.0))
        self.record_spent()

    def on_evaluation(self, record: dict, h: dict) -> None:
        self.value = record["eval_val_loss"]
        self.trial.report(self.value, record["step"])
        if self.trial.should_prune():
            raise optuna.TrialPruned()
