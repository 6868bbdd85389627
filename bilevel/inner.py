"""The inner problem of one task and the outer objective it defines."""

import torch
from torch.func import grad, vmap


def solve_inner(problem, h, task, solver, init=None):
    """phi*(h) = argmin_phi g(phi, h) for one task (eq. 15), by `solver` from
    `init` (default `problem.inner_init`). Returns (phi, solver stats)."""
    if init is None:
        init = problem.inner_init(h, task)
    return solver.run(grad(lambda phi: problem.inner_objective(phi, h, task)), init)


def at_inner_solutions(metric, problem, h, tasks, solver, *, with_stats: bool = False):
    """metric(phi*_i(h), h, task_i) for every task of the batch `tasks`, the inner problems
    solved in one vmapped batch: one value (or dict of values) per task, stacked; with
    `with_stats`, also the solver's stats of every task. Costs solver.steps inner gradient
    evaluations per task."""

    def one_task(task):
        phi, stats = solve_inner(problem, h, task, solver)
        return metric(phi, h, task), stats

    values, stats = vmap(one_task)(tasks)
    return (values, stats) if with_stats else values


def grad_ratio(stats: dict) -> torch.Tensor | None:
    """How far each solve got: the final inner gradient norm over the first (0 for a solve
    that starts at a stationary point), from a solver's stats; None if the solver does not
    report its first gradient norm ("grad_norm_start")."""
    start = stats.get("grad_norm_start")
    if start is None:
        return None
    return torch.where(start > 0, stats["grad_norm"] / start.clamp_min(1e-300), 0.0)


def outer_loss(problem, h, tasks, solver) -> torch.Tensor:
    """F(h) = mean over tasks of val_loss(phi*_i(h), h, task_i) (eq. 5), solves batched."""
    return at_inner_solutions(problem.val_loss, problem, h, tasks, solver).mean()
