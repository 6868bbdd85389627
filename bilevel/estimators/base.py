"""What every hypergradient estimator shares: its base class `Estimator`, batching over
tasks and its `Info`.

An estimator subclasses `Estimator`, as a frozen dataclass of its options registered by
name, and is called as `estimator(problem, h, tasks, solver, compilation=EAGER) -> (grad,
info)`: grad shaped like h, averaged over the tasks; info a `bilevel.info.Info` whose cost
counts what the call spent (`bilevel.testing.EstimatorContract` checks it against a problem
that counts its own
derivative evaluations). Its per-task work is a function of (h, task), written for ONE task
and batched here with `vmap`, compiled as its `compilation` (a `bilevel.compiled.
Compilation`) says: the estimator passes it on to every batch it runs. An estimator that
carries state across calls (single-loop methods) subclasses
`bilevel.estimators.stateful.StatefulEstimator` instead, which declares its state and adds
`state=` to the call (that module says how).
"""

import abc
import numbers
from typing import ClassVar

from bilevel import checks, compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.errors import InvalidInputError
from bilevel.info import INNER_GRAD_RATIO, LOSS_KEY, Cost, Info
from bilevel.inner import at_inner_solutions, grad_ratio
from bilevel.registry import Registry, name_and_options
from bilevel.tree import tree_map


class Estimator(abc.ABC):
    """The base of every estimator; its optional capabilities are class attributes that a
    subclass sets (unannotated, so that they are not dataclass fields):

    assumes_converged_inner: its result is grad F(h) only at converged inner solutions
        (implicit and perturbation estimators): `meta_train` warns when the solves are far
        from converged, `hypergradient` when the problem has no regulariser.
    not_compiled: why `compile=True` runs it eagerly (a warning; `compile="strict"` raises),
        or None when it compiles.
    stateful: it carries state across calls (a `bilevel.estimators.stateful.
        StatefulEstimator`: single-loop methods), called with `state=` and returning the
        next one as `info.state`.
    """

    assumes_converged_inner: ClassVar[bool] = False
    not_compiled: ClassVar[str | None] = None
    stateful: ClassVar[bool] = False

    def __post_init__(self):
        """Options declared with `bilevel.checks.option` checked against their bounds."""
        checks.in_bounds(self)

    @abc.abstractmethod
    def __call__(self, problem, h: dict, tasks, solver, *,
                 compilation: Compilation = EAGER) -> tuple[dict, Info]:
        """(grad, info): the hypergradient averaged over the tasks, and its diagnostics; the
        per-task work batched as `compilation` says."""

    @property
    def name(self) -> str:
        """The name it is registered under (`estimators`), which records and `Info` use; the
        class's qualified name if unregistered."""
        return estimators.name_of(self) or type(self).__qualname__


estimators = Registry("method")


def as_estimator(method: "str | Estimator", options: dict | None = None, *,
                 argument: str = "method") -> Estimator:
    """An estimator given as an object (then `options` must be empty), or as a registered
    name built with `options` (its fields), or as {"name": ..., **options}; `argument`
    names it in errors."""
    options = options or {}
    if isinstance(method, dict) and not options:
        method, options = name_and_options(method, argument)
    if isinstance(method, Estimator):
        if options:
            raise InvalidInputError(
                f"{argument}: options {', '.join(sorted(options))} given with the estimator "
                f"object {method!r}; set them on the object (dataclasses.replace) or pass its "
                "name")
        return method
    if not isinstance(method, str):
        raise InvalidInputError(f"{argument} must be a registered name or a "
                                f"bilevel.estimators.Estimator, got {method!r}")
    estimator = estimators.build(method, options, argument=argument)
    if not isinstance(estimator, Estimator):
        raise InvalidInputError(
            f"{argument}: {method!r} is registered as {type(estimator).__qualname__}, which "
            "does not subclass bilevel.estimators.Estimator (docs/extending.md)")
    return estimator


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
    per-task INNER_GRAD_RATIO = grad_norm / grad_norm_start, 0 for a solve that starts at a
    stationary point), and "val_loss"; `cost` is the cost of ONE task (multiplied here by
    the number of tasks); `extra`: `Info.per_task`, `settings`."""
    n_tasks = stats["grad_norm"].shape[0]
    ratio = grad_ratio(stats)
    if ratio is not None:
        extra["per_task"] = {INNER_GRAD_RATIO: ratio} | dict(extra.get("per_task", {}))
    return Info(method=method, n_tasks=n_tasks, cost=cost * n_tasks,
                inner_grad_norm=stats["grad_norm"], inner_steps=stats["steps"],
                val_loss=stats[LOSS_KEY], **extra)


def solver_lr(solver, needed_by: str) -> float:
    """The solver's step size `lr`, for an estimator that reads it; `needed_by` says who
    needs it and why (the start of the error raised when the solver has none)."""
    lr = solver.lr
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool):
        raise InvalidInputError(f"{needed_by}; got {solver!r}")
    return float(lr)
