"""Exact implicit differentiation with a dense Hessian: for small problems and tests.

At phi* = argmin_phi g(phi, h), the implicit function theorem gives

    grad F_i(h) = d_h val_loss(phi*, h) - d_h < d_phi g(phi*, h), v >,
    H v = d_phi val_loss(phi*, h),   H = d_phi^2 g(phi*, h)

(eq. 7 generalised to every hyperparameter). H is formed densely with
`torch.func.hessian` and the system solved directly, so the cost is cubic in the
number of inner parameters. The result is exact up to the inner solve's error.
Cost per task: the solve, then n_params Hessian-vector products (one per column of H)
and one mixed product d_h d_phi g . v (`bilevel.info.Cost`).
"""

import dataclasses

import torch
from torch.func import grad, grad_and_value, hessian

from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import Estimator, average_at_solutions, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map


@estimators.register("exact")
@dataclasses.dataclass(frozen=True)
class Exact(Estimator):
    """Implicit differentiation at the solver's inner solution, dense Hessian."""

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True
    # Why compile=True runs it eagerly (a failed attempt leaves torch.func's state broken).
    not_compiled = ("torch.compile (torch 2.13) fails on torch.func.hessian under vmap, and "
                    "the dense Hessian is for small problems")

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        def at_solution(phi, h, task):
            flat_phi, unravel = ravel(phi)

            def g(x, h):
                return problem.inner_objective(unravel(x), h, task)

            def f(x, h):
                return problem.val_loss(unravel(x), h, task)

            (f_phi, f_h), val_loss = grad_and_value(f, argnums=(0, 1))(flat_phi, h)
            v = torch.linalg.solve(hessian(g)(flat_phi, h), f_phi)
            mixed = grad(lambda h: torch.dot(grad(g)(flat_phi, h), v))(h)
            n_params = torch.tensor(flat_phi.shape[0], device=flat_phi.device)
            return tree_map(torch.sub, f_h, mixed), {LOSS_KEY: val_loss, "n_params": n_params}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                             compilation)
        # The dense Hessian is n_params Hessian-vector products (torch.func.hessian pushes one
        # tangent per coordinate of phi), the mixed term one d_h d_phi g product.
        k, p = solver.steps, int(stats.pop("n_params")[0])
        cost = Cost(inner_grad_evals=k, grad_evals=k + p + 1, hvps=p, mixed_products=1)
        return grads, solve_info(self.name, stats, cost)
