"""Pure functions behind the numbers a run logs: held-out evaluation and the scalars of
one step's info, each tagged with how processes combine it (`bilevel.training.distributed`).

Combination rules ("op"): "mean" is a per-task average (weighted by each process's
number of tasks), "sum" a count (integers in info: gradient evaluations, tasks, ...),
"max" a maximum, "same" a value every process already shares (floats in info are
settings such as nu; the all-reduced hypergradient's norm).
"""

import math

import torch
from torch.func import vmap

from bilevel.inner import solve_inner

# Every estimator reports the outer loss of its tasks, val_loss(phi_i, h, task_i) at the
# inner solutions, in info under this key (one value per task); the trainer logs its mean
# over the step's tasks as "loss".
LOSS_KEY = "val_loss"


def evaluate(problem, h, tasks, solver) -> dict[str, torch.Tensor]:
    """Sum over the tasks of `problem.eval_metrics(phi*_i(h), h, task_i)`, the inner
    problems solved in one vmapped batch. Sums, so that processes holding different
    numbers of tasks can add theirs before dividing by the total."""

    def one_task(task):
        phi, _ = solve_inner(problem, h, task, solver)
        return problem.eval_metrics(phi, h, task)

    return {name: value.sum(0) for name, value in vmap(one_task)(tasks).items()}


def info_scalars(info: dict, device) -> list[tuple[str, torch.Tensor, str]]:
    """(name, 0-dim float64 tensor, op) for the numeric entries of an estimator's info.

    A per-task tensor gives "<name>_mean" and "<name>_max"; info[LOSS_KEY] gives "loss";
    strings and other values are left out (they are settings, recorded once).
    """
    entries = []
    for name, value in info.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().to(torch.float64)
            if name == LOSS_KEY:
                entries.append(("loss", value.mean(), "mean"))
            elif value.ndim == 0:
                entries.append((name, value, "mean"))
            else:
                entries += [(f"{name}_mean", value.mean(), "mean"),
                            (f"{name}_max", value.max(), "max")]
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            entries.append((name, torch.tensor(value, dtype=torch.float64, device=device), "sum"))
        elif isinstance(value, float):
            entries.append((name, torch.tensor(value, dtype=torch.float64, device=device), "same"))
    return entries


def non_finite(values: dict, names) -> str | None:
    """The first of `names` whose value in `values` is NaN or +-Inf, else None."""
    for name in names:
        value = values.get(name)
        if value is not None and not math.isfinite(value):
            return name
    return None
