"""A user's own hypergradient estimator, in one file outside the package: implicit
differentiation with a truncated Neumann series (Lorraine et al., 2020).

At the solver's inner solution phi_K of one task, with H = d_phi^2 g(phi_K, h),

    v    = alpha * sum_{j=0}^{terms} (I - alpha H)^j d_phi val_loss(phi_K, h)  ~ H^-1 d_phi val_loss
    grad = d_h val_loss(phi_K, h) - d_h < d_phi g(phi_K, h), v >

the series converging when 0 < alpha < 2 / ||H||. Each term costs one Hessian-vector
product, the last line one mixed product. Importing this module registers it as
"neumann"; examples/test_custom_units.py runs the shipped contract suite on it (its cost
included); see docs/extending.md.
"""

import dataclasses

from torch.func import grad, grad_and_value, jvp, vjp

from bilevel import checks, solve_inner
from bilevel.estimators import average_over_tasks, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import tree_map


@estimators.register("neumann")
@dataclasses.dataclass(frozen=True)
class Neumann:
    """H^-1 applied by `terms` terms of the Neumann series with step `alpha`."""

    terms: int = 20
    alpha: float = 0.05

    def __post_init__(self):
        checks.integer("terms", self.terms, minimum=1)
        checks.positive("alpha", self.alpha)

    def __call__(self, problem, h, tasks, solver):
        def task_gradient(h, task):
            phi, stats = solve_inner(problem, h, task, solver)

            def g_phi(phi, h):
                return grad(problem.inner_objective)(phi, h, task)

            (f_phi, f_h), val_loss = grad_and_value(problem.val_loss, argnums=(0, 1))(
                phi, h, task)
            term = total = f_phi
            for _ in range(self.terms):
                hv = jvp(lambda x: g_phi(x, h), (phi,), (term,))[1]
                term = tree_map(lambda t, a: t - self.alpha * a, term, hv)
                total = tree_map(lambda s, t: s + t, total, term)
            v = tree_map(lambda s: self.alpha * s, total)
            _, pull_back = vjp(lambda h: g_phi(phi, h), h)
            (mixed,) = pull_back(v)
            return tree_map(lambda a, b: a - b, f_h, mixed), stats | {LOSS_KEY: val_loss}

        grads, stats = average_over_tasks(task_gradient, h, tasks)
        k = solver.steps
        cost = Cost(inner_grad_evals=k, grad_evals=k + self.terms + 1, hvps=self.terms,
                    mixed_products=1)
        return grads, solve_info("neumann", stats, cost)
