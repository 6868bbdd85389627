"""One cost model for both sides of a comparison.

    cost = inner gradient evaluations + HVP_WEIGHT * Hessian-vector products

counted over every inner solve: those of the hypergradient estimators (their
`info["inner_grad_evals"]`, `info.get("hvps")`, which `meta_train` logs per step) and
those of every validation (each held-out task solved with the solver's `steps` gradient
evaluations, `bilevel.solvers`). Wall time is the other unit. All reading of the
estimators' cost numbers is in `step_cost`, so a change of that contract is one edit here.
"""

from collections.abc import Mapping

# A Hessian-vector product costs about one more gradient evaluation (reverse over reverse,
# or forward over reverse); counted as one, like an inner gradient evaluation.
HVP_WEIGHT = 1.0


def step_cost(info: Mapping) -> float:
    """Inner gradient evaluations + HVP_WEIGHT * HVPs of an estimator's `info`, or of a
    `meta_train` history record (which holds the step's info scalars under the same
    names). Estimators that report no HVPs count none."""
    return float(info.get("inner_grad_evals") or 0) + HVP_WEIGHT * float(info.get("hvps") or 0)


def solve_cost(solver, n_tasks: int) -> float:
    """Inner gradient evaluations of solving `n_tasks` inner problems with `solver` (a
    fixed-step solver spends exactly `steps` per task, tolerance or not)."""
    return float(solver.steps * n_tasks)
