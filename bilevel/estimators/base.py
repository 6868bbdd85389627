"""What every hypergradient estimator shares: batching over tasks and the info dict.

An estimator is a frozen dataclass of its options, registered by name, called as
`estimator(problem, h, tasks, solver) -> (grad, info)`. Its per-task work is a
function of (h, task), written for ONE task and batched here with `vmap`.
"""

from torch.func import vmap

from bilevel.registry import Registry
from bilevel.tree import tree_map

estimators = Registry("method")


def average_over_tasks(task_gradient, h, tasks):
    """Batch `task_gradient(h, task) -> (grad, stats)` over the tasks; grad is averaged,
    stats keep one entry per task."""
    grads, stats = vmap(task_gradient, in_dims=(None, 0))(h, tasks)
    return tree_map(lambda g: g.mean(0), grads), stats


def solve_info(method: str, stats: dict, evals_per_task: int) -> dict:
    """Diagnostics common to every estimator that runs the inner solver; `stats` holds one
    entry per task: the solver's "grad_norm" and "steps", and "val_loss"."""
    n_tasks = stats["grad_norm"].shape[0]
    return {
        "method": method,
        "n_tasks": n_tasks,
        "inner_grad_evals": n_tasks * evals_per_task,
        "inner_grad_norm": stats["grad_norm"],
        "inner_steps": stats["steps"],
        # val_loss at each task's inner solution: the outer loss F_i(h) the step estimates
        "val_loss": stats["val_loss"],
    }
