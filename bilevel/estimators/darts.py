"""DARTS's one-step unrolled hypergradient (Liu et al., 2019, eqs. 7-8), first order.

At the solver's output phi_K, held fixed, for one task: the derivative in h of the outer
loss after one more inner step of size xi,

    phi' = phi_K - xi d_phi g(phi_K, h)
    d/dh val_loss(phi', h) = d_h val_loss(phi', h) - xi d_h d_phi g(phi_K, h) . w,
    w = d_phi val_loss(phi', h),

with the mixed second-order term by a central finite difference of d_h g along w (eq. 8):

    grad = d_h val_loss(phi', h)
           - xi (d_h g(phi_K + eps w, h) - d_h g(phi_K - eps w, h)) / (2 eps),
    eps  = 0.01 / ||w||                  (DARTS's code: a step of length 0.01 in phi)

No second-order autograd. The difference is exact when d_h g is quadratic in phi (the
proximal term lam/2 ||phi - theta||^2); otherwise its error is O(eps^2). Read against the
implicit gradient, H^-1 is replaced by xi I: biased for grad F(h) even at converged solves.
xi defaults to the solver's lr. Cost per task: the solve, then three gradients of g
(d_phi g at phi_K, d_h g at phi_K +- eps w).
"""

import dataclasses

import torch
from torch.func import grad

from bilevel import checks
from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import (
    Estimator,
    average_at_solutions,
    estimators,
    solve_info,
    solver_lr,
)
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import tree_map, tree_sq_norm

# The length of the finite-difference step in phi (DARTS's code: r = 1e-2, R = r / ||w||).
STEP = 0.01


@estimators.register("darts")
@dataclasses.dataclass(frozen=True)
class DARTS(Estimator):
    """One unrolled inner step of size `xi` at phi_K, differentiated in h (DARTS eqs. 7-8).

    xi: the step, > 0; default the solver's lr.
    """

    xi: float | None = checks.option("the unrolled step (null: the solver's lr)", None, above=0)

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        xi = self.xi if self.xi is not None else solver_lr(
            solver, "darts needs xi, or a solver with a step size lr (xi's default)")

        def at_solution(phi, h, task):
            def g_h(x):
                return grad(problem.inner_objective, argnums=1)(x, h, task)

            g_phi = grad(problem.inner_objective)(phi, h, task)
            stepped = tree_map(lambda p, g: p - xi * g, phi, g_phi)
            w, f_h = grad(problem.val_loss, argnums=(0, 1))(stepped, h, task)
            norm = tree_sq_norm(w).sqrt()
            eps = STEP / torch.where(norm > 0, norm, STEP)  # w = 0: any eps, the difference is 0
            plus = g_h(tree_map(lambda p, d: p + eps * d, phi, w))
            minus = g_h(tree_map(lambda p, d: p - eps * d, phi, w))
            mixed = tree_map(lambda a, b: xi * (a - b) / (2 * eps), plus, minus)
            return tree_map(torch.sub, f_h, mixed), {LOSS_KEY: problem.val_loss(phi, h, task)}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                            compilation)
        # d_phi g at phi_K, d_h g at phi_K + eps w and at phi_K - eps w.
        cost = Cost(inner_grad_evals=solver.steps, grad_evals=solver.steps + 3)
        return grads, solve_info(self.name, stats, cost, settings={"xi": xi})
