"""Inner solvers: pure functions of (gradient of the objective, starting point).

A solver is written for ONE task and batched with `torch.func.vmap`, so a
tolerance cannot stop the loop early (the batch shares one loop). Instead a
task whose gradient norm reaches `tol` is frozen (masked) for the remaining
steps: every task still runs the same schedule, and `stats["steps"]` reports
how many steps each one actually took.

`run(grad_fn, init)` returns `(phi, stats)`, with stats
    steps      steps taken before reaching `tol` (= `steps` without tol)
    grad_norm  norm of the last gradient evaluated: at the returned point for a
               task frozen by `tol`, one step before it otherwise
Every run spends exactly `steps` gradient evaluations per task. Warm start by
passing the previous solution as `init`.
"""

import dataclasses

import torch

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry
from bilevel.tree import tree_map, tree_sq_norm

solvers = Registry("solver")


def _where(active, new, old):
    return tree_map(lambda a, b: torch.where(active, a, b), new, old)


@solvers.register("gd")
@dataclasses.dataclass(frozen=True)
class GD:
    """Gradient descent: phi_{k+1} = phi_k - lr * grad g(phi_k)."""

    lr: float
    steps: int
    tol: float | None = None

    def __post_init__(self):
        checks.positive("lr", self.lr)
        checks.integer("steps", self.steps, minimum=1)
        checks.optional_positive("tol", self.tol)

    def run(self, grad_fn, init):
        phi, active, taken = init, None, 0
        for _ in range(self.steps):
            grad = grad_fn(phi)
            new = tree_map(lambda p, g: p - self.lr * g, phi, grad)
            if self.tol is not None:
                active = _still_active(active, grad, self.tol)
                new = _where(active, new, phi)
                taken = taken + active.long()
            phi = new
        return phi, _stats(grad, taken if self.tol is not None else self.steps)


@solvers.register("nesterov")
@dataclasses.dataclass(frozen=True)
class Nesterov:
    """Nesterov's accelerated gradient:

        y_k = phi_k + beta_k (phi_k - phi_{k-1}),  phi_{k+1} = y_k - lr * grad g(y_k)

    with beta_k = momentum, or k / (k + 3) (the convex schedule) when momentum is None.
    """

    lr: float
    steps: int
    tol: float | None = None
    momentum: float | None = None

    def __post_init__(self):
        checks.positive("lr", self.lr)
        checks.integer("steps", self.steps, minimum=1)
        checks.optional_positive("tol", self.tol)
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise InvalidInputError(f"momentum must be in [0, 1) or None, got {self.momentum!r}")

    def run(self, grad_fn, init):
        phi = previous = init
        active, taken = None, 0
        for k in range(self.steps):
            beta = self.momentum if self.momentum is not None else k / (k + 3)
            y = tree_map(lambda p, q, beta=beta: p + beta * (p - q), phi, previous)
            grad = grad_fn(y)
            new = tree_map(lambda p, g: p - self.lr * g, y, grad)
            if self.tol is not None:
                # A frozen task rests at the point whose gradient met tol, with no momentum.
                active = _still_active(active, grad, self.tol)
                new, phi = _where(active, new, y), _where(active, phi, y)
                taken = taken + active.long()
            previous, phi = phi, new
        return phi, _stats(grad, taken if self.tol is not None else self.steps)


def _still_active(active, grad, tol):
    above = tree_sq_norm(grad) > tol**2
    return above if active is None else active & above


def _stats(grad, steps):
    norm = tree_sq_norm(grad).sqrt()
    return {"grad_norm": norm, "steps": torch.as_tensor(steps, device=norm.device)}
