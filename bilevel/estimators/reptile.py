"""Reptile (paper eq. 4): the mean step of the inner trajectory as the gradient for theta.

With phi_K = solver.run(...) from `problem.inner_init(h, task)`, K = solver.steps and
lr = solver.lr:

    grad_theta = (theta - phi_K) / (K * lr)
    grad_h     = d_h val_loss(phi_K, h)          for every other hyperparameter

For plain GD from theta, (theta - phi_K) / (K lr) is the mean of the K inner gradients.
Other hyperparameters get the direct term only: zero unless val_loss reads them. With a
solver tolerance, K still counts the steps a frozen task skipped. Biased for F(h);
memory does not grow with the number of inner steps.
"""

import dataclasses

from torch.func import grad_and_value

from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import (
    Estimator,
    average_at_solutions,
    estimators,
    solve_info,
    solver_lr,
)
from bilevel.estimators.fomaml import check_theta_shaped_like_phi
from bilevel.info import LOSS_KEY, Cost
from bilevel.regularizers import require_key
from bilevel.tree import tree_map


@estimators.register("reptile")
@dataclasses.dataclass(frozen=True)
class Reptile(Estimator):
    """(theta - phi_K) / (K * lr) for theta (eq. 4)."""

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        require_key(h, "theta", "reptile (its gradient for theta is (theta - phi_K) / (K lr))")
        lr = solver_lr(solver, "reptile needs a solver with a step size lr, since it divides "
                               "by steps * lr")
        scale = 1.0 / (solver.steps * lr)

        def at_solution(phi, h, task):
            check_theta_shaped_like_phi(h["theta"], phi, "reptile")
            f_h, val_loss = grad_and_value(problem.val_loss, argnums=1)(phi, h, task)
            step = tree_map(lambda t, p: scale * (t - p), h["theta"], phi)
            return f_h | {"theta": step}, {LOSS_KEY: val_loss}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                             compilation)
        k = solver.steps
        return grads, solve_info(self.name, stats, Cost.solve(k))
