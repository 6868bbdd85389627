"""The inner problem of one task and the outer objective it defines."""

import torch
from torch.func import grad, vmap


def solve_inner(problem, h, task, solver, init=None):
    """phi*(h) = argmin_phi g(phi, h) for one task (eq. 15), by `solver` from
    `init` (default `problem.inner_init`). Returns (phi, solver stats)."""
    if init is None:
        init = problem.inner_init(h, task)
    return solver.run(grad(lambda phi: problem.inner_objective(phi, h, task)), init)


def at_inner_solutions(metric, problem, h, tasks, solver):
    """metric(phi*_i(h), h, task_i) for every task of the batch `tasks`, the inner problems
    solved in one vmapped batch: one value (or dict of values) per task, stacked. Costs
    solver.steps inner gradient evaluations per task."""

    def one_task(task):
        phi, _ = solve_inner(problem, h, task, solver)
        return metric(phi, h, task)

    return vmap(one_task)(tasks)


def outer_loss(problem, h, tasks, solver) -> torch.Tensor:
    """F(h) = mean over tasks of val_loss(phi*_i(h), h, task_i) (eq. 5), solves batched."""
    return at_inner_solutions(problem.val_loss, problem, h, tasks, solver).mean()
