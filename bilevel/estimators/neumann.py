"""Implicit differentiation with H^-1 by a truncated Neumann series (Lorraine et al., 2020).

At the solver's inner solution phi_K, for one task, with H = d_phi^2 g(phi_K, h) and
b = d_phi val_loss(phi_K, h),

    v    = alpha sum_{j=0}^{terms-1} (I - alpha H)^j b              (v -> H^-1 b)
    grad = d_h val_loss(phi_K, h) - d_h < d_phi g(phi_K, h), v >

imaml's formula with the series in place of conjugate gradient. The series converges when
|1 - alpha lambda| < 1 for every eigenvalue lambda of H (H positive definite, 0 < alpha <
2 / lambda_max); its error is H^-1 b - v = (I - alpha H)^terms H^-1 b, geometric at the rate
max |1 - alpha lambda|. alpha defaults to the solver's lr: GD on g converges for the same
steps. The terms t_j = (I - alpha H)^j b come from t_j = t_{j-1} - alpha H t_{j-1}: terms - 1
Hessian-vector products, each the pull-back of one reverse pass through d_phi g, taken once
and reused (as in imaml); the last line is one vector-Jacobian product.

A diverging series is reported, never returned: H is symmetric, so while every
|1 - alpha lambda| <= 1 the terms' norms cannot grow; a term longer than the one before
(beyond round-off) proves that the series diverges, and the call raises
`SeriesDivergenceError` (a `DivergenceError`).
"""

import dataclasses

import torch
from torch.func import grad, grad_and_value, vjp

from bilevel import checks
from bilevel.compiled import EAGER, Compilation
from bilevel.errors import BilevelError, DivergenceError
from bilevel.estimators.base import (
    Estimator,
    average_at_solutions,
    estimators,
    solve_info,
    solver_lr,
)
from bilevel.estimators.imaml import safe_divide
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map


def neumann_series(hvp, b, terms: int, alpha: float):
    """(alpha sum_{j<terms} (I - alpha H)^j b, growth) with hvp(v) = H v, called terms - 1
    times; growth: the largest ratio ||t_j|| / ||t_{j-1}|| of successive terms (0 with one
    term, and where a term is 0)."""
    term = total = b
    norm, growth = torch.linalg.vector_norm(b), torch.zeros_like(b[..., 0])
    for _ in range(terms - 1):
        term = term - alpha * hvp(term)
        total = total + term
        new_norm = torch.linalg.vector_norm(term)
        growth = torch.maximum(growth, safe_divide(new_norm, norm))
        norm = new_norm
    return alpha * total, growth


@estimators.register("neumann")
@dataclasses.dataclass(frozen=True)
class Neumann(Estimator):
    """Implicit hypergradient with H^-1 applied by `terms` terms of the Neumann series.

    terms: terms of the series (terms - 1 Hessian-vector products per task).
    alpha: the series' step, 0 < alpha < 2 / lambda_max(H); default the solver's lr.
    """

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    terms: int = checks.option("terms of the Neumann series (terms - 1 Hessian-vector "
                               "products per task)", 20, minimum=1)
    alpha: float | None = checks.option("the series' step, below 2 / the largest eigenvalue "
                                        "of the inner Hessian (null: the solver's lr)", None,
                                        above=0)

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        alpha = self.alpha if self.alpha is not None else solver_lr(
            solver, "neumann needs alpha, or a solver with a step size lr (alpha's default)")

        def at_solution(phi, h, task):
            flat_phi, unravel = ravel(phi)

            def g_phi(x, h):
                return grad(lambda x: problem.inner_objective(unravel(x), h, task))(x)

            (f_phi, f_h), val_loss = grad_and_value(
                lambda x, h: problem.val_loss(unravel(x), h, task), argnums=(0, 1))(flat_phi, h)
            hvp = None
            if self.terms > 1:
                # v^T H = H v (H symmetric): one reverse pass, its pull-back once a term.
                _, pull_back = vjp(lambda x: g_phi(x, h), flat_phi)

                def hvp(v):
                    return pull_back(v)[0]

            v, growth = neumann_series(hvp, f_phi, self.terms, alpha)
            _, pull_back = vjp(lambda h: g_phi(flat_phi, h), h)
            (mixed,) = pull_back(v)
            return tree_map(torch.sub, f_h, mixed), {LOSS_KEY: val_loss,
                                                     "neumann_growth": growth}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                            compilation)
        check_series(stats["neumann_growth"], alpha)
        k, products = solver.steps, self.terms - 1
        # d_phi g is evaluated (traced) once for the pull-back of the products (if any), once
        # for the mixed product.
        cost = Cost(inner_grad_evals=k, grad_evals=k + (products > 0) + 1, hvps=products,
                    mixed_products=1)
        return grads, solve_info(self.name, stats, cost, settings={"alpha": alpha},
                                 per_task={"neumann_growth": stats["neumann_growth"]})


def check_series(growth: torch.Tensor, alpha: float) -> None:
    """Raise SeriesDivergenceError if a task's series terms grew by more than round-off
    (sqrt(eps) of the dtype, relative); a NaN growth (NaN in the task or h) passes on to the
    caller's non-finite check."""
    grew = growth > 1 + torch.finfo(growth.dtype).eps ** 0.5
    if bool(grew.any()):
        tasks = grew.nonzero()[:, 0].tolist()
        raise SeriesDivergenceError(
            f"neumann: the Neumann series diverges: its terms grew by up to "
            f"{growth.max().item():.3g} per term in task(s) {tasks} of {growth.numel()}; "
            f"alpha={alpha:g} must be below 2 / (the largest eigenvalue of the inner Hessian), "
            "which must be positive definite: pass a smaller alpha (default: the solver's lr)")


class SeriesDivergenceError(DivergenceError):
    """The Neumann series of `neumann` diverged (alpha too large for the inner Hessian, or
    the Hessian not positive definite); a DivergenceError with no outer step (`step` is
    None), which the trainer records."""

    def __init__(self, message: str):
        BilevelError.__init__(self, message)
        self.step, self.quantity = None, "the Neumann series"
