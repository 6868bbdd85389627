"""The bilevel side: `meta_train` with the config's method, every leaf of h learned, for as
many outer steps as the budget buys, validated as the config's `eval` says."""

import dataclasses
import math
from pathlib import Path

import torch

from bilevel.compare.cost import solve_cost, step_cost
from bilevel.compare.curves import Curve
from bilevel.errors import InvalidInputError
from bilevel.training import meta_train
from bilevel.training.spec import Evaluation, RunSpec


def evaluation(spec: RunSpec) -> Evaluation:
    """Validation: the spec's `eval`, else every step on `tasks_per_step` held-out tasks."""
    return spec.eval or Evaluation(every=1, tasks=spec.tasks_per_step)


def train(built, *, out=None, resume: bool = False, callbacks=(), **changes):
    """meta_train on `built` as its spec says, validated as `evaluation` says, without a
    progress bar; `changes` replace fields of the spec."""
    spec = built.spec.replace(eval=evaluation(built.spec), progress=False)
    return meta_train(built.problem, spec.replace(**changes), out=out, resume=resume,
                      callbacks=callbacks)


def history_curve(name: str, history: list, built, eval_tasks: int, start=(0.0, 0.0),
                  curve: Curve | None = None) -> tuple[Curve, float]:
    """Add a point per validation of `history` to `curve`, costs counted from `start`
    (cost, seconds); returns the curve and the cost at the history's end."""
    curve = curve if curve is not None else Curve(name)
    cost, seconds0 = start
    for record in history:
        cost += step_cost(record)
        if "eval_val_loss" in record:
            cost += solve_cost(built.spec.solver, eval_tasks)
            curve.add(cost, seconds0 + record["time"], record["eval_val_loss"])
    return curve, cost


def steps_for(built, unit: str, budget: float) -> int:
    """Outer steps that the budget buys, from one timed step (the first step, so the time
    is an overestimate and the side may end early; its curve is cut at the budget); with
    `warm_start`, from two: the first step's cold solve, then the warm steps' cost."""
    every, tasks = dataclasses.astuple(evaluation(built.spec))
    probe = 1 if built.spec.warm_start is None else 2
    history = train(built, steps=probe, eval=Evaluation(every=1, tasks=tasks)).history
    if unit == "seconds":
        return max(1, math.floor(budget / history[0]["time"]))
    validation = solve_cost(built.spec.solver, tasks) / every
    first, per_step = step_cost(history[0]) + validation, step_cost(history[-1]) + validation
    first_point = first + (every - 1) * per_step  # the first validation's cost, steps included
    if budget < first_point:
        raise InvalidInputError(
            f"search.budget: {budget:g} inner gradient evaluations do not buy the bilevel "
            f"side's first validated point ({first_point:g}: {every} outer step(s) and one "
            "validation); give a larger budget")
    return max(1, 1 + math.floor((budget - first) / per_step))


def run_bilevel(built, directory: Path, unit: str, budget: float):
    """meta_train in `directory` (resumed where it stopped) on the budget; returns
    (curve within the budget, final h)."""
    steps = steps_for(built, unit, budget)
    torch.manual_seed(built.spec.seed)
    result = train(built, steps=steps, out=directory,
                   resume=(directory / "settings.json").exists(), progress=built.spec.progress)
    curve, _ = history_curve("bilevel", result.history, built, evaluation(built.spec).tasks)
    return curve.within(unit, budget), result.h
