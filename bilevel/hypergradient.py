"""`hypergradient`: one entry point for every estimator."""

import torch
from torch.utils._pytree import keystr, tree_leaves_with_path

from bilevel.errors import InvalidInputError
from bilevel.estimators import estimators
from bilevel.problem import BilevelProblem
from bilevel.solvers import as_solver
from bilevel.tree import detach


def hypergradient(problem, h, tasks, *, solver, method: str = "fo-bmaml", **options):
    """Estimate grad F(h), the hypergradient averaged over a batch of tasks.

    problem: a `BilevelProblem`.
    h: dict of hyperparameter tensors (nested dicts allowed).
    tasks: a batch from `problem.sample_tasks`, every leaf with the same leading dim.
    solver: an inner solver (`bilevel.solvers.GD`, `Nesterov`, ...: the contract is
        `bilevel.solvers.InnerSolver`), or one given as a registered name or
        {"name": "gd", "lr": ..., "steps": ...}.
    method: a registered estimator ("fo-bmaml", "exact", ...; `bilevel list`);
        `options` are its fields, e.g. nu=1e-3, scheme="symmetric" for "fo-bmaml".

    Returns (grad, info): grad has exactly the keys and shapes of h; info is a
    `bilevel.info.Info`, a read-only mapping of diagnostics: the outer loss and final
    inner gradient norm of each task, and the call's cost (`info["inner_grad_evals"]`,
    `info["hvps"]`, ...; `bilevel.info.Cost`).
    """
    check_problem(problem)
    solver = as_solver(solver)
    check_hyper(h)
    check_tasks(tasks)
    if not isinstance(method, str):
        raise InvalidInputError(f"method must be a string, got {method!r}")
    estimator = estimators.build(method, options, argument=f"hypergradient(method={method!r})")
    # Estimators differentiate with torch.func only; h must carry no autograd graph,
    # or the inner solves would record one and their memory would grow with the steps.
    return estimator(problem, detach(h), detach(tasks), solver)


def check_problem(problem):
    if not isinstance(problem, BilevelProblem):
        raise InvalidInputError(
            f"problem must be a bilevel.BilevelProblem, got {type(problem).__name__}"
        )


def check_hyper(h):
    if not isinstance(h, dict) or not h:
        raise InvalidInputError(f"h must be a non-empty dict of tensors, got {type(h).__name__}")
    for path, leaf in tree_leaves_with_path(h):
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            raise InvalidInputError(
                f"h{keystr(path)} must be a floating-point tensor, got {leaf!r}")


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
