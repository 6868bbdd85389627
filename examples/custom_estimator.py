"""A user's own hypergradient estimator, in one file outside the package: implicit
differentiation with a truncated Neumann series (Lorraine et al., 2020).

At the solver's inner solution phi_K of one task, with H = d_phi^2 g(phi_K, h),

    v    = alpha * sum_{j=0}^{terms} (I - alpha H)^j d_phi val_loss(phi_K, h)  ~ H^-1 d_phi val_loss
    grad = d_h val_loss(phi_K, h) - d_h < d_phi g(phi_K, h), v >

the series converging when 0 < alpha < 2 / ||H||. Each term costs one Hessian-vector
product (forward over reverse: a jvp of d_phi g), the last line one mixed product.
The library ships this method as "neumann" (reverse over reverse, with a divergence
check); importing this module registers the user's version as "neumann-jvp".
examples/test_custom_units.py runs the shipped contract suite on it (its cost included);
see docs/extending.md.
"""

import dataclasses
import functools

import torch
from torch.func import grad, grad_and_value, jvp, vjp

from bilevel import checks, solve_inner
from bilevel.compiled import EAGER
from bilevel.estimators import Estimator, average_over_tasks, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import tree_map


def neumann_series(hvp, b, terms: int, alpha: float):
    """alpha * sum_{j=0}^{terms} (I - alpha H)^j b, with one call of hvp(v) = H v a term."""
    term = total = b
    for _ in range(terms):
        term = tree_map(lambda t, a: t - alpha * a, term, hvp(term))
        total = tree_map(torch.add, total, term)
    return tree_map(lambda s: alpha * s, total)


@estimators.register("neumann-jvp")
@dataclasses.dataclass(frozen=True)
class NeumannJvp(Estimator):
    """H^-1 applied by `terms` terms of the Neumann series with step `alpha`."""

    terms: int = 20
    alpha: float = 0.05

    def __post_init__(self):
        checks.integer("terms", self.terms, minimum=1)
        checks.positive("alpha", self.alpha)

    def __call__(self, problem, h, tasks, solver, *, compilation=EAGER):
        one_task = functools.partial(self.task_gradient, problem, solver)
        grads, stats = average_over_tasks(one_task, h, tasks, compilation=compilation)
        k = solver.steps  # the cost of ONE task: each HVP also evaluates a gradient
        cost = Cost(inner_grad_evals=k, grad_evals=k + self.terms + 1, hvps=self.terms,
                    mixed_products=1)
        return grads, solve_info(self.name, stats, cost)

    def task_gradient(self, problem, solver, h, task):
        """(grad F_i(h), stats) for ONE task; `average_over_tasks` batches it."""
        phi, stats = solve_inner(problem, h, task, solver)

        def g_phi(phi, h):
            return grad(problem.inner_objective)(phi, h, task)

        (f_phi, f_h), val_loss = grad_and_value(problem.val_loss, argnums=(0, 1))(phi, h, task)
        v = neumann_series(lambda u: jvp(lambda x: g_phi(x, h), (phi,), (u,))[1], f_phi,
                           self.terms, self.alpha)
        _, pull_back = vjp(lambda h: g_phi(phi, h), h)  # one mixed product d_h d_phi g . v
        (mixed,) = pull_back(v)
        return tree_map(torch.sub, f_h, mixed), stats | {LOSS_KEY: val_loss}
