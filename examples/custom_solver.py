"""A user's own inner solver, in one file outside the package: heavy-ball momentum.

    phi_{k+1} = phi_k - lr * grad g(phi_k) + momentum * (phi_k - phi_{k-1})

(Polyak's method). Importing this module registers it as "heavy-ball", so that
hypergradient(..., solver={"name": "heavy-ball", "lr": 0.05, "steps": 100}) and configs
find it. examples/test_custom_units.py runs the shipped contract suite on it; see
docs/extending.md.
"""

import dataclasses

import torch

from bilevel import InvalidInputError, checks
from bilevel.solvers import InnerSolver, solvers
from bilevel.tree import tree_map, tree_sq_norm


@solvers.register("heavy-ball")
@dataclasses.dataclass(frozen=True)
class HeavyBall(InnerSolver):
    """Gradient descent with Polyak momentum; `steps` gradient evaluations per run."""

    lr: float
    steps: int
    momentum: float = 0.5

    def __post_init__(self):
        checks.positive("lr", self.lr)
        checks.integer("steps", self.steps, minimum=1)
        if not 0 <= self.momentum < 1:
            raise InvalidInputError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def run(self, grad_fn, init):
        phi = previous = init
        for _ in range(self.steps):
            grad = grad_fn(phi)
            new = tree_map(lambda p, q, g: p - self.lr * g + self.momentum * (p - q),
                           phi, previous, grad)
            previous, phi = phi, new
        norm = tree_sq_norm(grad).sqrt()
        return phi, {"grad_norm": norm, "steps": torch.as_tensor(self.steps, device=norm.device)}

