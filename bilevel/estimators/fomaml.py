"""FO-MAML (paper eq. 3): ignore how the inner solution depends on h.

With phi_K = solver.run(...) from `problem.inner_init(h, task)`, held constant:

    grad_theta = d_theta val_loss(phi_K, h) + d_phi val_loss(phi_K, h)
    grad_h     = d_h val_loss(phi_K, h)          for every other hyperparameter

theta is shaped like phi, so d_phi val_loss stands in for d phi_K / d theta times it
(the Jacobian replaced by the identity). Other hyperparameters get the direct term
only: zero unless val_loss reads them. Biased for F(h) even with converged solves
(paper section 2.2). Memory does not grow with the number of inner steps.
"""

import dataclasses

from torch.func import grad_and_value

from bilevel.compiled import EAGER, Compilation
from bilevel.errors import InvalidInputError
from bilevel.estimators.base import Estimator, average_at_solutions, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.regularizers import require_key
from bilevel.tree import tree_map, tree_structure


def check_theta_shaped_like_phi(theta, phi, method: str):
    if tree_structure(theta) != tree_structure(phi):
        raise InvalidInputError(
            f"{method} needs h['theta'] shaped like phi; got {tree_structure(theta)} "
            f"for phi {tree_structure(phi)}"
        )


@estimators.register("fomaml")
@dataclasses.dataclass(frozen=True)
class FOMAML(Estimator):
    """d_phi val_loss at the inner solution as the gradient for theta (eq. 3)."""

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        require_key(h, "theta", "fomaml (its gradient for theta is d_phi val_loss)")

        def at_solution(phi, h, task):
            check_theta_shaped_like_phi(h["theta"], phi, "fomaml")
            (f_phi, f_h), val_loss = grad_and_value(problem.val_loss, argnums=(0, 1))(phi, h, task)
            theta = tree_map(lambda a, b: a + b, f_h["theta"], f_phi)
            return f_h | {"theta": theta}, {LOSS_KEY: val_loss}

        grads, stats = average_at_solutions(at_solution, problem, h, tasks, solver,
                                             compilation)
        k = solver.steps
        return grads, solve_info(self.name, stats, Cost.solve(k))
