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
from typing import TYPE_CHECKING

import torch

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry
from bilevel.tree import tree_leaves, tree_map, tree_sq_norm

solvers = Registry("solver")


# B024: abstract by contract (`run`, or `start`, `step` and `finish`), no one method abstract.
class InnerSolver(abc.ABC):  # noqa: B024
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

    Implement either `run`, or the solve one step at a time (then `run` is their loop):
        start(init) -> (x, aux): the iterates x (a tuple of pytrees shaped like phi, the
            only state a tangent is pushed through) and the rest of the state (aux, a
            dict of tensors);
        step(k, x, aux, grad_fn) -> (x, aux): step k (an int, or a 0-dim tensor in the
            compiled path: arithmetic only, no Python branch on it), one call of grad_fn;
        finish(x, aux) -> (phi, stats).
    A stepwise solver runs its steps as one compiled batched function when asked
    (`compile=True`, bilevel.compiled) and gives fo-bmaml-jvp its tangent recursion;
    a solver with `run` only is compiled whole (unrolled) or runs eagerly.

    Declared capabilities, with their defaults (a subclass sets them as class attributes,
    dataclass fields or properties):
        lr (None): a step size: reptile divides by steps * lr.
        stepwise: whether the solver defines its solve one step at a time (default: whether
            it overrides `step`); a wrapper of another solver says what the wrapped one does.
        linear_steps (False): for a given k and aux, the iterates after `step` and the
            point where it queries grad_fn are linear in (x, the gradient returned):
            fo-bmaml-jvp then maps its tangents by `step` itself, calling it with a
            `Tangents` map as grad_fn, rather than by jvp (GD and Nesterov without a
            tolerance, whose mask depends on the gradient; bilevel.testing.SolverContract
            checks the claim).
    """

    if TYPE_CHECKING:
        # Read-only to a type checker: a subclass may make each a dataclass field, a class
        # attribute or a property (CountingSolver forwards them).
        @property
        def steps(self) -> int: ...
        @property
        def lr(self) -> float | None: ...
        @property
        def linear_steps(self) -> bool: ...
    else:
        steps: int
        # lr is annotated only: a class attribute here would be every dataclass subclass's
        # default for its own lr field; `__getattr__` supplies the default instead.
        lr: float | None
        linear_steps: bool = False

    def __getattr__(self, name: str):
        if name == "lr":
            return None
        raise AttributeError(f"{type(self).__qualname__!r} object has no attribute {name!r}")

    @property
    def stepwise(self) -> bool:
        return type(self).step is not InnerSolver.step

    def run(self, grad_fn, init):
        """(phi_K, {"grad_norm": ..., "steps": ...}) after `steps` steps from `init`."""
        x, aux = self.start(init)
        for k in range(self.steps):
            x, aux = self.step(k, x, aux, grad_fn)
        return self.finish(x, aux)

    def start(self, init):
        raise NotImplementedError(f"{type(self).__qualname__} implements neither run nor start")

    def step(self, k, x, aux, grad_fn):
        raise NotImplementedError(f"{type(self).__qualname__} implements neither run nor step")

    def finish(self, x, aux):
        raise NotImplementedError(f"{type(self).__qualname__} implements neither run nor finish")

    def with_steps(self, steps: int) -> "InnerSolver":
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__qualname__} is not a dataclass: it must define "
                            "with_steps")
        return dataclasses.replace(self, steps=steps)

    @property
    def name(self) -> str:
        return solver_name(self)


class Tangents:
    """A grad_fn that is no gradient of the objective: the map of tangents (a Hessian-vector
    product and the perturbation's gradient) that fo-bmaml-jvp passes to a solver's `step`
    to push tangents through it, or a stand-in gradient. A solver computes with it as with
    any grad_fn; a wrapper that observes the gradients evaluated
    (`bilevel.testing.CountingSolver`) does not count its calls."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def solver_name(solver) -> str:
    """The registered name of a solver object, or its class's qualified name."""
    return solvers.name_of(solver) or type(solver).__qualname__


def as_solver(solver, argument: str = "solver") -> InnerSolver:
    """A solver given as an object, a registered name or {"name": ..., **options}."""
    if isinstance(solver, str | dict):
        solver = solvers.from_spec(solver, argument=argument)
    if not isinstance(solver, InnerSolver) or not isinstance(solver.steps, int):
        raise InvalidInputError(
            f"{argument} must be an inner solver (a bilevel.solvers.InnerSolver with an int "
            f"steps), a registered name or a dict with a 'name' key, got {solver!r}")
    return solver


def _where(active, new, old):
    return tree_map(lambda a, b: torch.where(active, a, b), new, old)


@dataclasses.dataclass(frozen=True)
class _Stepwise(InnerSolver):
    """The options and bookkeeping that GD and Nesterov share: gradient norms, and with
    `tol` the mask of tasks still moving and the count of their steps."""

    lr: float = checks.option("the step size", above=0)
    steps: int = checks.option("gradient steps per solve (each task's gradient evaluations)",
                               minimum=1)
    tol: float | None = checks.option("a task stops moving once its gradient norm is at most "
                                      "this (null: never; it still runs every step)", None,
                                      above=0)

    def __post_init__(self):
        checks.in_bounds(self)

    @property
    def linear_steps(self) -> bool:
        return self.tol is None

    def start(self, init):
        leaf = tree_leaves(init)[0]
        aux = {"grad": tree_map(torch.zeros_like, init),  # the last gradient evaluated
               "grad_norm_start": torch.zeros((), dtype=leaf.dtype, device=leaf.device)}
        if self.tol is not None:
            aux |= {"active": torch.ones((), dtype=torch.bool, device=leaf.device),
                    "taken": torch.zeros((), dtype=torch.long, device=leaf.device)}
        return self._iterates(init), aux

    def _record(self, k, aux, grad):
        """aux after step k, whose gradient is `grad`: that gradient, the first step's norm,
        and with `tol`, whether the task still moves (its gradient norm is above tol) and
        the steps it took. Eagerly (k an int) the norm is taken at step 0 only: a norm per
        step is a dozen small operators, a tenth of a small problem's step."""
        aux = aux | {"grad": grad}
        if isinstance(k, int) and k > 0 and self.tol is None:
            return aux
        sq_norm = tree_sq_norm(grad)
        if isinstance(k, int):
            aux["grad_norm_start"] = sq_norm.sqrt() if k == 0 else aux["grad_norm_start"]
        else:
            aux["grad_norm_start"] = torch.where(k == 0, sq_norm.sqrt(), aux["grad_norm_start"])
        if self.tol is None:
            return aux
        active = aux["active"] & (sq_norm > self.tol**2)
        return aux | {"active": active, "taken": aux["taken"] + active.long()}

    def finish(self, x, aux):
        norm = tree_sq_norm(aux["grad"]).sqrt()
        steps = aux["taken"] if self.tol is not None else torch.as_tensor(
            self.steps, device=norm.device)
        return x[0], {"grad_norm": norm, "steps": steps,
                      "grad_norm_start": aux["grad_norm_start"]}


@solvers.register("gd")
@dataclasses.dataclass(frozen=True)
class GD(_Stepwise):
    """Gradient descent: phi_{k+1} = phi_k - lr * grad g(phi_k)."""

    def _iterates(self, init):
        return (init,)

    def step(self, k, x, aux, grad_fn):
        (phi,) = x
        grad = grad_fn(phi)
        new = tree_map(lambda p, g: p - self.lr * g, phi, grad)
        aux = self._record(k, aux, grad)
        if self.tol is not None:
            new = _where(aux["active"], new, phi)
        return (new,), aux


@solvers.register("nesterov")
@dataclasses.dataclass(frozen=True)
class Nesterov(_Stepwise):
    """Nesterov's accelerated gradient:

        y_k = phi_k + beta_k (phi_k - phi_{k-1}),  phi_{k+1} = y_k - lr * grad g(y_k)

    with beta_k = momentum, or k / (k + 3) (the convex schedule) when momentum is None.
    """

    momentum: float | None = checks.option("beta_k, in [0, 1) (null: k / (k + 3), the convex "
                                           "schedule)", None)

    def __post_init__(self):
        super().__post_init__()
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise InvalidInputError(f"momentum must be in [0, 1) or None, got {self.momentum!r}")

    def _iterates(self, init):
        return (init, init)  # phi_k, phi_{k-1}

    def step(self, k, x, aux, grad_fn):
        phi, previous = x
        beta = self.momentum if self.momentum is not None else k / (k + 3)
        y = tree_map(lambda p, q: p + beta * (p - q), phi, previous)
        grad = grad_fn(y)
        new = tree_map(lambda p, g: p - self.lr * g, y, grad)
        aux = self._record(k, aux, grad)
        if self.tol is not None:
            # A frozen task rests at the point whose gradient met tol, with no momentum.
            active = aux["active"]
            new, phi = _where(active, new, y), _where(active, phi, y)
        return (new, phi), aux
