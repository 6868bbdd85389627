"""Inner solvers: pure functions of (gradient of the objective, starting point).

The contract every solver keeps is `InnerSolver` (as jaxopt's `IterativeSolver`); GD and
Nesterov implement it, and `bilevel.testing.SolverContract` checks it for any solver.

A solver is written for ONE task and batched with `torch.func.vmap`, so a
tolerance cannot stop the loop early (the batch shares one loop). Instead a
task whose gradient norm reaches `tol` is frozen (masked) for the remaining
steps: every task still runs the same schedule, and `stats["steps"]` reports
how many steps each one actually took. Warm start by passing the previous
solution as `init`.
"""

import abc
import dataclasses

import torch

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry
from bilevel.tree import tree_map, tree_sq_norm

solvers = Registry("solver")


class InnerSolver(abc.ABC):
    """What an inner solver provides; subclass it (usually as a frozen dataclass of the
    solver's options, registered with `@solvers.register(name)`).

    steps: int, the gradient evaluations of one `run`, per task: every run calls
        `grad_fn` exactly `steps` times (a tolerance masks steps, it never skips them).
        Estimators read it to report their cost.
    run(grad_fn, init) -> (phi, stats): phi_K from phi_0 = init for the objective whose
        gradient is grad_fn (a pytree -> pytree function, the same structure as init);
        a pure function of its arguments, traceable by `torch.func` (estimators vmap it
        over tasks, differentiate through it (maml) or push a tangent through it
        (fo-bmaml-jvp)). stats holds 0-dim tensors:
            "grad_norm"  the norm of the last gradient evaluated
            "grad_norm_start"  optional: the norm of the first one (convergence and
                         divergence of the solve are judged by grad_norm / grad_norm_start)
            "steps"      the steps taken before reaching a tolerance (= steps without one)
    with_steps(k): a copy with `steps` = k and every other option unchanged (fo-bmaml's
        warm start runs its perturbed solves for a different number of steps).
    name: the name the solver is registered under (`solvers`), which records and configs
        use; the class's qualified name if unregistered.

    Optional: `lr`, a step size: reptile divides by steps * lr.
    """

    steps: int

    @abc.abstractmethod
    def run(self, grad_fn, init):
        """(phi_K, {"grad_norm": ..., "steps": ...}) after `steps` steps from `init`."""

    def with_steps(self, steps: int) -> "InnerSolver":
        return dataclasses.replace(self, steps=steps)

    @property
    def name(self) -> str:
        return solver_name(self)


def solver_name(solver) -> str:
    """The registered name of a solver object, or its class's qualified name."""
    return solvers.name_of(solver) or type(solver).__qualname__


def as_solver(solver, argument: str = "solver"):
    """A solver given as an object, a registered name or {"name": ..., **options}."""
    if isinstance(solver, str | dict):
        return solvers.from_spec(solver, argument=argument)
    steps = getattr(solver, "steps", None)
    if not callable(getattr(solver, "run", None)) or not isinstance(steps, int):
        raise InvalidInputError(
            f"{argument} must be an inner solver (a run method and an int steps; see "
            f"bilevel.solvers.InnerSolver), a registered name or a dict with a 'name' key, "
            f"got {solver!r}")
    return solver


def _where(active, new, old):
    return tree_map(lambda a, b: torch.where(active, a, b), new, old)


@solvers.register("gd")
@dataclasses.dataclass(frozen=True)
class GD(InnerSolver):
    """Gradient descent: phi_{k+1} = phi_k - lr * grad g(phi_k)."""

    lr: float
    steps: int
    tol: float | None = None

    def __post_init__(self):
        checks.positive("lr", self.lr)
        checks.integer("steps", self.steps, minimum=1)
        checks.optional_positive("tol", self.tol)

    def run(self, grad_fn, init):
        phi, active, taken, start = init, None, 0, None
        for _ in range(self.steps):
            grad = grad_fn(phi)
            start = tree_sq_norm(grad).sqrt() if start is None else start
            new = tree_map(lambda p, g: p - self.lr * g, phi, grad)
            if self.tol is not None:
                active = _still_active(active, grad, self.tol)
                new = _where(active, new, phi)
                taken = taken + active.long()
            phi = new
        return phi, _stats(grad, taken if self.tol is not None else self.steps, start)


@solvers.register("nesterov")
@dataclasses.dataclass(frozen=True)
class Nesterov(InnerSolver):
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
        active, taken, start = None, 0, None
        for k in range(self.steps):
            beta = self.momentum if self.momentum is not None else k / (k + 3)
            y = tree_map(lambda p, q, beta=beta: p + beta * (p - q), phi, previous)
            grad = grad_fn(y)
            start = tree_sq_norm(grad).sqrt() if start is None else start
            new = tree_map(lambda p, g: p - self.lr * g, y, grad)
            if self.tol is not None:
                # A frozen task rests at the point whose gradient met tol, with no momentum.
                active = _still_active(active, grad, self.tol)
                new, phi = _where(active, new, y), _where(active, phi, y)
                taken = taken + active.long()
            previous, phi = phi, new
        return phi, _stats(grad, taken if self.tol is not None else self.steps, start)


def _still_active(active, grad, tol):
    above = tree_sq_norm(grad) > tol**2
    return above if active is None else active & above


def _stats(grad, steps, start):
    norm = tree_sq_norm(grad).sqrt()
    return {"grad_norm": norm, "steps": torch.as_tensor(steps, device=norm.device),
            "grad_norm_start": start}
