"""`hypergradient`: one entry point for every estimator."""

import dataclasses
import functools
from collections.abc import Mapping

import torch

from bilevel import checks
from bilevel.compiled import Compilation
from bilevel.errors import InvalidInputError, NonFiniteTasksError
from bilevel.estimators import Estimator, as_estimator
from bilevel.info import Info
from bilevel.problem import BilevelProblem
from bilevel.problem_checks import (
    all_finite,
    check_hyper,
    check_problem_code,
    check_task_count,
    check_values,
    warn_if_unregularized,
)
from bilevel.solvers import InnerSolver, as_solver
from bilevel.tree import detach, keystr, tree_leaves, tree_leaves_with_path, tree_map

ON_NON_FINITE = ("raise", "drop", "keep")


def hypergradient(problem: BilevelProblem, h: dict, tasks, *,
                  solver: InnerSolver | str | dict,
                  method: str | Estimator = "fo-bmaml", on_non_finite: str = "raise",
                  compile: bool | str | Compilation = False, state: Mapping | None = None,
                  **options) -> tuple[dict, Info]:
    """Estimate grad F(h), the hypergradient averaged over a batch of tasks.

    problem: a `BilevelProblem`.
    h: dict of hyperparameter tensors (nested dicts allowed), finite, of one floating dtype.
    tasks: a batch from `problem.sample_tasks`, every leaf with the same leading dim (>= 1);
        floating leaves finite and of h's dtype (integer leaves, e.g. labels, are left alone).
    solver: an inner solver (`bilevel.solvers.GD`, `Nesterov`, ...: the contract is
        `bilevel.solvers.InnerSolver`), or one given as a registered name or
        {"name": "gd", "lr": ..., "steps": ...}.
    method: an estimator object (`bilevel.estimators.Estimator`, e.g.
        `FOBMAML(nu=1e-3)`: built once by the caller and reused at every call), or the name
        of a registered one ("fo-bmaml", "exact", ...; `bilevel list`) built from `options`,
        its fields, e.g. nu=1e-3, scheme="symmetric" for "fo-bmaml"
        (`bilevel.estimators.as_estimator`).
    on_non_finite: what to do when some tasks give a NaN or Inf loss or gradient:
        "raise" (NonFiniteTasksError naming them), "drop" (average over the other tasks,
        the cost of both calls counted) or "keep" (return the non-finite average, and leave
        NaN/Inf in h and tasks unchecked: the caller watches for them, as meta_train does).
    compile: True runs the estimator's batched per-task work compiled by `torch.compile`
        (`bilevel.compiled`: compiled at the first call for the problem, solver, estimator,
        shapes, dtype and device, reused after), falling back to eager with a warning for
        what cannot be compiled; "strict" raises `bilevel.compiled.CompileError` instead; a
        `bilevel.compiled.Compilation` also chooses the backend and CUDA graphs.
    state: for a stateful estimator (single-loop: "soba", "amigo", "bome", "f2sa";
        `bilevel.estimators.stateful`), the state the previous call returned as
        `info.state`, one slot per task of `tasks` in order; None starts one. The call is
        one iteration and returns the next state as `info.state`. A stateless estimator
        takes none (an error), and a stateful one cannot drop tasks (on_non_finite="drop").

    Returns (grad, info): grad has exactly the keys and shapes of h; info is a
    `bilevel.info.Info`, a read-only mapping of diagnostics: the outer loss and final
    inner gradient norm of each task, and the call's cost (`info["inner_grad_evals"]`,
    `info["hvps"]`, ...; `bilevel.info.Cost`); info["non_finite_tasks"] lists the tasks
    that gave a non-finite result and info["n_dropped"] how many were left out.

    The problem's methods are tried once on one task before batching (cached per problem
    and shapes): a mistake in them is an InvalidInputError naming the method.
    """
    check_problem(problem)
    solver = as_solver(solver)
    check_hyper(h)
    check_task_count(check_tasks(tasks))
    check_values(h, tasks, finite=on_non_finite != "keep")
    estimator = as_estimator(method, options)
    checks.one_of("on_non_finite", on_non_finite, ON_NON_FINITE)
    _check_stateful(estimator, state, on_non_finite)
    compilation = Compilation.of(compile)
    # Estimators differentiate with torch.func only; h must carry no autograd graph,
    # or the inner solves would record one and their memory would grow with the steps.
    h, tasks = detach(h), detach(tasks)
    check_problem_code(problem, h, tasks)
    warn_if_unregularized(problem, h, estimator.name, estimator.assumes_converged_inner)
    if estimator.not_compiled is not None:
        compilation = compilation.eager_instead(f"method {estimator.name!r}",
                                                estimator.not_compiled)
    estimate = functools.partial(estimator, compilation=compilation)
    if estimator.stateful:
        estimate = functools.partial(estimate, state=None if state is None else detach(state))
    grad, info = estimate(problem, h, tasks, solver)
    if _all_finite(grad, info):
        return grad, info
    return _non_finite(estimate, (problem, h, tasks, solver), grad, info, on_non_finite)


def _check_stateful(estimator, state, on_non_finite: str) -> None:
    if state is not None and not estimator.stateful:
        raise InvalidInputError(f"state: method {estimator.name!r} carries no state across "
                                "calls; pass state=None (or a single-loop method: soba, amigo, "
                                "bome, f2sa)")
    if estimator.stateful and on_non_finite == "drop":
        raise InvalidInputError(f"on_non_finite='drop' cannot be used with {estimator.name!r}, "
                                "whose state has one slot per task; use 'raise' or 'keep'")


def _all_finite(grad, info) -> bool:
    """One fused reduction over the averaged gradient and the per-task losses."""
    return all_finite([*tree_leaves(grad), info.val_loss, info.inner_grad_norm])


def _non_finite(estimator, call, grad, info, on_non_finite):
    """The tasks that gave a non-finite result, then raise, drop them, or keep them."""
    problem, h, tasks, solver = call
    bad = _bad_tasks(estimator, call, info)
    n_tasks = info.n_tasks
    if on_non_finite == "keep":
        return grad, dataclasses.replace(info, non_finite_tasks=bad)
    if not bad:  # each task finite alone: their average overflowed
        raise NonFiniteTasksError(
            f"the hypergradient averaged over {n_tasks} tasks is not finite, though each "
            "task's alone is: it overflows h's dtype; use float64 or rescale the losses", bad)
    if on_non_finite == "raise" or len(bad) == n_tasks:
        losses = ", ".join(f"{i}: {info.val_loss[i].item():.3g}" for i in bad[:10])
        raise NonFiniteTasksError(
            f"tasks {list(bad)} of {n_tasks} gave a non-finite loss or hypergradient (val_loss "
            f"{{{losses}}}); check those tasks' data and the problem's losses, or pass "
            "on_non_finite='drop' to average over the finite tasks only"
            + (" (every task is non-finite here)" if len(bad) == n_tasks else ""), bad)
    keep = torch.tensor([i for i in range(n_tasks) if i not in bad])
    kept = tree_map(lambda t: t[keep.to(t.device)], tasks)
    grad, kept_info = estimator(problem, h, kept, solver)
    if not _all_finite(grad, kept_info):
        raise NonFiniteTasksError(
            f"tasks {list(bad)} of {n_tasks} gave a non-finite result and were dropped, but "
            "the average over the others is still not finite", bad)
    return grad, dataclasses.replace(kept_info, cost=info.cost + kept_info.cost,
                                     non_finite_tasks=bad, n_dropped=len(bad))


def _bad_tasks(estimator, call, info) -> tuple[int, ...]:
    """Indices of the tasks with a non-finite loss or inner gradient norm; when none has
    one (only a gradient is non-finite), each task is run alone to find them."""
    flags = ~(torch.isfinite(info.val_loss) & torch.isfinite(info.inner_grad_norm))
    if flags.any():
        return tuple(flags.nonzero()[:, 0].tolist())
    problem, h, tasks, solver = call
    bad = []
    state = estimator.keywords.get("state")  # a stateful estimator's: sliced with the tasks
    for i in range(info.n_tasks):
        one = tree_map(lambda t, i=i: t[i:i + 1], tasks)
        rows = {} if state is None else {"state": tree_map(lambda t, i=i: t[i:i + 1], state)}
        grad, _ = estimator(problem, h, one, solver, **rows)
        if not all(bool(torch.isfinite(g).all()) for g in tree_leaves(grad)):
            bad.append(i)
    return tuple(bad)


def check_problem(problem):
    if not isinstance(problem, BilevelProblem):
        raise InvalidInputError(
            f"problem must be a bilevel.BilevelProblem, got {type(problem).__name__}"
        )


def check_tasks(tasks) -> int:
    """The number of tasks: the leading dimension shared by every leaf of `tasks`."""
    leaves = tree_leaves_with_path(tasks)
    if not leaves:
        raise InvalidInputError("tasks must be a non-empty pytree of tensors")
    sizes = {}
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
            raise InvalidInputError(
                f"tasks{keystr(path)} must be a tensor with a leading task dimension, got {leaf!r}"
            )
        sizes[f"tasks{keystr(path)}"] = leaf.shape[0]
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise InvalidInputError(
            f"tasks: every leaf must have the same leading dimension, got {listed}")
    return next(iter(sizes.values()))
