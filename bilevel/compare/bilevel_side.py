"""The bilevel side: `meta_train` with the config's method, every leaf of h learned, for as
many outer steps as the budget buys, validated as the config's `eval` says."""

import math
from pathlib import Path

import torch

from bilevel.compare.cost import solve_cost, step_cost
from bilevel.compare.curves import Curve
from bilevel.training import meta_train


def evaluation(resolved: dict) -> tuple[int, int]:
    """(every, tasks) of validation: the config's `eval`, else every step on
    `tasks_per_step` held-out tasks."""
    spec = resolved["eval"] or {"every": 1, "tasks": resolved["tasks_per_step"]}
    return spec["every"], spec["tasks"]


def train(built, resolved: dict, **options):
    """meta_train on `built` with the config's settings; `options` override them."""
    every, tasks = evaluation(resolved)
    settings = dict(solver=built.solver, method=built.method, outer=built.outer,
                    steps=resolved["steps"], tasks_per_step=resolved["tasks_per_step"],
                    eval_every=every, eval_tasks=tasks, seed=resolved["seed"],
                    divergence_factor=resolved["divergence_factor"],
                    compile=resolved["compile"], warm_start=resolved["warm_start"],
                    hyper_penalty=resolved["hyper_penalty"], progress=False)
    return meta_train(built.problem, **(settings | options))


def history_curve(name: str, history: list, built, eval_tasks: int, start=(0.0, 0.0),
                  curve: Curve | None = None) -> tuple[Curve, float]:
    """Add a point per validation of `history` to `curve`, costs counted from `start`
    (cost, seconds); returns the curve and the cost at the history's end."""
    curve = curve if curve is not None else Curve(name)
    cost, seconds0 = start
    for record in history:
        cost += step_cost(record)
        if "eval_val_loss" in record:
            cost += solve_cost(built.solver, eval_tasks)
            curve.add(cost, seconds0 + record["time"], record["eval_val_loss"])
    return curve, cost


def steps_for(built, resolved: dict, unit: str, budget: float) -> int:
    """Outer steps that the budget buys, from one timed step (the first step, so the time
    is an overestimate and the side may end early; its curve is cut at the budget); with
    `warm_start`, from two: the first step's cold solve, then the warm steps' cost."""
    every, tasks = evaluation(resolved)
    probe = 1 if resolved["warm_start"] is None else 2
    history = train(built, resolved, steps=probe, eval_every=1, eval_tasks=tasks).history
    if unit == "seconds":
        return max(1, math.floor(budget / history[0]["time"]))
    validation = solve_cost(built.solver, tasks) / every
    first, per_step = step_cost(history[0]) + validation, step_cost(history[-1]) + validation
    return max(1, 1 + math.floor((budget - first) / per_step))


def run_bilevel(built, resolved: dict, directory: Path, unit: str, budget: float):
    """meta_train in `directory` (resumed where it stopped) on the budget; returns
    (curve within the budget, final h)."""
    steps = steps_for(built, resolved, unit, budget)
    torch.manual_seed(resolved["seed"])
    result = train(built, resolved, steps=steps, out=directory,
                   resume=(directory / "checkpoint.pt").exists(),
                   progress=resolved["progress"])
    _, tasks = evaluation(resolved)
    curve, _ = history_curve("bilevel", result.history, built, tasks)
    return curve.within(unit, budget), result.h
