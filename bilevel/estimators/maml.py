"""MAML: reverse-mode differentiation through the unrolled inner solver (paper eq. 1).

For one task, with phi_K(h) the K-th iterate of the solver started at
`problem.inner_init(h, task)`,

    F_K(h) = val_loss(phi_K(h), h),      grad = d F_K / d h

exactly, every path included (the start, every step's dependence on h, and the
direct term). This is the gradient of the K-step objective, not of F(h): the two
agree only as the solver converges. Reverse mode keeps every iterate for the
backward pass, so memory grows linearly with K (DESIGN section 5).
"""

import dataclasses

from torch.func import grad_and_value

from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import Estimator, average_over_tasks, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.inner import solve_inner


@estimators.register("maml")
@dataclasses.dataclass(frozen=True)
class MAML(Estimator):
    """d/dh val_loss(phi_K(h), h) by `torch.func.grad` over the whole inner solve."""

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        def task_gradient(h, task):
            def k_step_objective(h):
                phi, stats = solve_inner(problem, h, task, solver)
                return problem.val_loss(phi, h, task), stats

            grads, (val_loss, stats) = grad_and_value(k_step_objective, has_aux=True)(h)
            return grads, stats | {LOSS_KEY: val_loss}

        grads, stats = average_over_tasks(task_gradient, h, tasks, compilation=compilation)
        # The backward pass through each step's gradient is one Hessian-vector product.
        k = solver.steps
        return grads, solve_info(self.name, stats, Cost(inner_grad_evals=k, grad_evals=k, hvps=k))
