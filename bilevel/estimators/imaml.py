"""iMAML: implicit differentiation with conjugate gradient (paper eqs. 7-8, [30]).

At the solver's inner solution phi_K, for one task,

    H v = d_phi val_loss(phi_K, h),      H = d_phi^2 g(phi_K, h)
    grad = d_h val_loss(phi_K, h) - d_h < d_phi g(phi_K, h), v >

(the implicit function theorem, for every hyperparameter at once). v comes from
`cg_steps` iterations of conjugate gradient from v = 0, each with one Hessian-vector
product (the pull-back of one reverse pass through d_phi g, reused); the mixed term is one
vector-Jacobian product. H is never formed, and memory does not grow with the number
of inner steps. CG needs H symmetric positive definite: g strongly convex near phi_K.
"""

import dataclasses

import torch
from torch.func import grad, grad_and_value, vjp

from bilevel import checks
from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import Estimator, average_at_solutions, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map


def safe_divide(a, b):
    """a / b, and 0 where b == 0 (an exactly solved system has a zero residual)."""
    nonzero = b != 0
    return torch.where(nonzero, a / torch.where(nonzero, b, torch.ones_like(b)), 0.0)


def conjugate_gradient(matvec, b, steps: int, tol: float | None):
    """Solve A x = b (A symmetric positive definite) from x = 0 in `steps` iterations.

    Written for one system and batched with vmap, so a tolerance cannot end the loop:
    once the residual norm is <= tol the system is frozen (as in bilevel.solvers).
    Returns (x, {"cg_steps": iterations before reaching tol, "cg_residual": ||r||}).
    """
    x, r, p = torch.zeros_like(b), b, b
    rs = r @ r
    active, taken = None, steps
    if tol is not None:
        active, taken = torch.ones_like(rs, dtype=torch.bool), 0
    for _ in range(steps):
        ap = matvec(p)
        alpha = safe_divide(rs, p @ ap)
        new_x, new_r = x + alpha * p, r - alpha * ap
        new_rs = new_r @ new_r
        new_p = new_r + safe_divide(new_rs, rs) * p
        if tol is not None:
            active = active & (rs > tol**2)
            taken = taken + active.long()
            new_x, new_r, new_p, new_rs = (
                torch.where(active, new, old)
                for new, old in ((new_x, x), (new_r, r), (new_p, p), (new_rs, rs))
            )
        x, r, p, rs = new_x, new_r, new_p, new_rs
    return x, {"cg_steps": torch.as_tensor(taken, device=b.device), "cg_residual": rs.sqrt()}


@estimators.register("imaml")
@dataclasses.dataclass(frozen=True)
class IMAML(Estimator):
    """Implicit hypergradient with H^-1 applied by conjugate gradient.

    cg_steps: CG iterations (= Hessian-vector products per task).
    tol: if set, a task's CG stops updating once its residual norm ||H v - b|| <= tol.
    """

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    cg_steps: int = checks.option("conjugate-gradient iterations (Hessian-vector products "
                                  "per task)", 10, minimum=1)
    tol: float | None = checks.option("a task's CG stops once its residual norm is at most "
                                      "this (null: never)", None, above=0)

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        def at_solution(phi, h, task):
            flat_phi, unravel = ravel(phi)

            def g_phi(x, h):
                return grad(lambda x: problem.inner_objective(unravel(x), h, task))(x)

            # One reverse pass through the gradient, its pull-back applied once per CG step:
            # v^T H = H v (H symmetric), each product a backward pass of that graph.
            _, pull_back = vjp(lambda x: g_phi(x, h), flat_phi)

            def hessian_vector_product(v):
                return pull_back(v)[0]

            (f_phi, f_h), val_loss = grad_and_value(
                lambda x, h: problem.val_loss(unravel(x), h, task), argnums=(0, 1))(flat_phi, h)
            v, cg_stats = conjugate_gradient(hessian_vector_product, f_phi, self.cg_steps,
                                             self.tol)
            _, pull_back = vjp(lambda h: g_phi(flat_phi, h), h)
            (mixed,) = pull_back(v)
            return tree_map(torch.sub, f_h, mixed), cg_stats | {LOSS_KEY: val_loss}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                             compilation)
        k, c = solver.steps, self.cg_steps
        # The gradient d_phi g is evaluated (traced) twice: once for the pull-back that gives
        # the c products, once for the mixed product.
        cost = Cost(inner_grad_evals=k, grad_evals=k + 2, hvps=c, mixed_products=1)
        per_task = {"cg_steps": stats["cg_steps"], "cg_residual": stats["cg_residual"]}
        return grads, solve_info(self.name, stats, cost, per_task=per_task)
