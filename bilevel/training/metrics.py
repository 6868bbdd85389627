"""The pieces of a run that a caller other than `meta_train` can reuse (a `compare`
layer, a notebook): its random streams, its held-out tasks, their evaluation with its
cost. The numbers an estimator reports are `bilevel.info.Info`, which also states how
every logged entry combines over processes."""

import math

import torch

from bilevel.compiled import Compilation
from bilevel.info import INNER_GRAD_RATIO, Cost
from bilevel.inner import at_inner_solutions, grad_ratio
from bilevel.training import distributed


def held_out(problem, h, tasks, solver, *,
             compile: bool | str | Compilation = False) -> dict[str, torch.Tensor]:
    """The sum over the tasks of `problem.eval_metrics(phi*_i(h), h, task_i)`, and of how far
    each solve got (INNER_GRAD_RATIO, `bilevel.inner.grad_ratio`), the inner problems solved
    in one vmapped batch (costing `Cost.solve(solver.steps)` per task), compiled as `compile`
    says (`hypergradient`'s values). Sums, so that processes holding different numbers of
    tasks can add theirs before dividing by the total."""
    metrics, stats = at_inner_solutions(problem.eval_metrics, problem, h, tasks, solver,
                                        with_stats=True, compilation=Compilation.of(compile))
    ratio = grad_ratio(stats)
    if ratio is not None:
        metrics = metrics | {INNER_GRAD_RATIO: ratio}
    return {name: value.sum(0) for name, value in metrics.items()}


def non_finite(values: dict, names) -> str | None:
    """The first of `names` whose value in `values` is NaN or +-Inf, else None."""
    for name in names:
        value = values.get(name)
        if value is not None and not math.isfinite(value):
            return name
    return None


def run_generator(seed: int, index: int) -> torch.Generator:
    """Generator `index` of a run seeded with `seed` (0: init_hyper, 1: tasks, 2: held-out
    tasks), seeded with the index-th draw of a generator seeded with `seed`: independent
    streams."""
    root = torch.Generator().manual_seed(seed)
    seeds = torch.randint(2**62, (3,), generator=root)
    return torch.Generator().manual_seed(int(seeds[index]))


def held_out_tasks(problem, n: int, seed: int):
    """The n held-out tasks of a run seeded with `seed`, drawn once for the whole run."""
    return problem.sample_tasks(n, run_generator(seed, 2))


def evaluate_held_out(problem, h, tasks, solver, n_total: int,
                      processes: distributed.Processes | None = None, *,
                      compile: bool | str | Compilation = False) -> tuple[dict, Cost]:
    """({"eval_<metric>": mean over the n_total held-out tasks}, the cost of their solves,
    all processes together); `tasks`: this process's share of them; solves compiled as
    `compile` says."""
    processes = processes or distributed.Processes()
    sums = distributed.sum_over_processes(held_out(problem, h, tasks, solver, compile=compile),
                                          processes)
    names = sorted(sums)
    means = torch.stack([sums[k].to(torch.float64) for k in names]) / n_total
    metrics = {f"eval_{k}": v for k, v in zip(names, means.tolist(), strict=True)}
    return metrics, Cost.solve(solver.steps) * n_total
