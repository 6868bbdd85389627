"""What every hypergradient estimator shares: batching over tasks and its `Info`.

An estimator is a frozen dataclass of its options, registered by name, called as
`estimator(problem, h, tasks, solver, compilation=EAGER) -> (grad, info)`: grad shaped
like h, averaged over the tasks; info a `bilevel.info.Info` whose cost counts what the call spent
(`bilevel.testing.EstimatorContract` checks it against a problem that counts its own
derivative evaluations). Its per-task work is a function of (h, task), written for ONE
task and batched here with `vmap`, compiled as its `compilation` (a
`bilevel.compiled.Compilation`) says: the estimator passes it on to every batch it runs.
"""


from bilevel import compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.info import LOSS_KEY, Cost, Info
from bilevel.inner import at_inner_solutions, grad_ratio
from bilevel.registry import Registry
from bilevel.tree import tree_map

estimators = Registry("method")


def average_over_tasks(task_gradient, h, tasks, *, compilation: Compilation = EAGER):
    """Batch `task_gradient(h, task) -> (grad, stats)` over the tasks (compiled as
    `compilation` says); grad is averaged, stats keep one entry per task."""
    grads, stats = compiled.batch(task_gradient, (None, 0), compilation)(h, tasks)
    return tree_map(lambda g: g.mean(0), grads), stats


def average_at_solutions(finish, problem, h, tasks, solver, compilation: Compilation):
    """Solve every task's inner problem from `problem.inner_init` (one batch,
    `bilevel.inner.solve_batch`), then `finish(phi, h, task) -> (grad, stats)` at each
    task's phi_K: grad averaged over the tasks, stats (one entry per task) joined to the
    solver's."""
    (grads, more), stats = at_inner_solutions(finish, problem, h, tasks, solver,
                                              with_stats=True, compilation=compilation)
    return tree_map(lambda g: g.mean(0), grads), stats | more


def solve_info(method: str, stats: dict, cost: Cost, **extra) -> Info:
    """The `Info` of an estimator that ran the inner solver. `stats` holds one entry per
    task: the solver's "grad_norm" and "steps" (and "grad_norm_start", which adds the
    per-task "inner_grad_ratio" = grad_norm / grad_norm_start, 0 for a solve that starts at
    a stationary point), and "val_loss"; `cost` is the cost of ONE
    task (multiplied here by the number of tasks); `extra`: `Info.per_task`, `settings`."""
    n_tasks = stats["grad_norm"].shape[0]
    ratio = grad_ratio(stats)
    if ratio is not None:
        extra["per_task"] = {"inner_grad_ratio": ratio} | dict(extra.get("per_task", {}))
    return Info(method=method, n_tasks=n_tasks, cost=cost * n_tasks,
                inner_grad_norm=stats["grad_norm"], inner_steps=stats["steps"],
                val_loss=stats[LOSS_KEY], **extra)
