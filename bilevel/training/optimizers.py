"""Outer optimizers: how h is updated from its hypergradient g (DESIGN section 2).

Every `torch.optim` optimizer that needs nothing but gradients is registered under
its lower-case class name ("sgd", "adam", "adamw", ...), beside the paper's
ClippedGD and NormalizedGD (section 4.3). A learning-rate schedule is any
`torch.optim.lr_scheduler` class driven once per outer step, named in kebab case
without the "LR" suffix ("step", "cosine-annealing", "one-cycle", ...).

`OuterOptimizer.parse("adam")` or `.parse({"name": "adam", "lr": 1e-3, "clip": 1.0,
"schedule": {"name": "cosine-annealing", "T_max": 100}})` checks names and options
up front; `.build(params)` returns the optimizer and the scheduler (or None).
"""

import dataclasses
import re
import warnings

import torch
from torch.optim import lr_scheduler

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry, name_and_options

optimizers = Registry("outer optimizer")
schedules = Registry("learning-rate schedule")


def global_norm(tensors) -> torch.Tensor:
    """||g|| over every tensor together, as one vector."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def clip_coefficient(norm: torch.Tensor, max_norm: float, eps: float = 0.0) -> torch.Tensor:
    """min(1, max_norm / (||g|| + eps)): the factor that clips g to norm max_norm (with
    eps = 0, max_norm / 0 = inf is clamped to 1: a zero gradient stays a zero step)."""
    return torch.clamp(max_norm / (norm + eps), max=1.0)


class _NormScaledGD(torch.optim.Optimizer):
    """theta <- theta - lr * scale(||g||) g, with ||g|| the norm over every parameter of
    every group: h is one vector for the paper's analysis."""

    def scale(self, norm, group):
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads:
            return loss
        norm = global_norm(grads)
        for group in self.param_groups:
            factor = -group["lr"] * self.scale(norm, group)
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad * factor)
        return loss


@optimizers.register("clipped-gd")
class ClippedGD(_NormScaledGD):
    """ClippedGD (paper section 4.3): theta <- theta - lr * min(1, max_norm / ||g||) g."""

    def __init__(self, params, lr: float = 1e-3, max_norm: float = 1.0):
        checks.positive("lr", lr)
        checks.positive("max_norm", max_norm)
        super().__init__(params, {"lr": lr, "max_norm": max_norm})

    def scale(self, norm, group):
        return clip_coefficient(norm, group["max_norm"])


@optimizers.register("normalized-gd")
class NormalizedGD(_NormScaledGD):
    """NormalizedGD (paper section 4.3): theta <- theta - lr * g / (beta + ||g||).

    Theorem 1 takes lr = 1 / L1 and beta = L0 / L1 for an (L0, L1)-smooth objective.
    """

    def __init__(self, params, lr: float = 1e-3, beta: float = 1.0):
        checks.positive("lr", lr)
        checks.positive("beta", beta)
        super().__init__(params, {"lr": lr, "beta": beta})

    def scale(self, norm, group):
        return 1.0 / (group["beta"] + norm)


# Left out, and why: LBFGS re-evaluates the loss through a closure, SparseAdam takes sparse
# gradients only, Muon updates 2-D matrices only (h holds scalars such as log_lam).
_NOT_OUTER = {"Optimizer", "LBFGS", "SparseAdam", "Muon"}
for _name, _cls in sorted(vars(torch.optim).items()):
    if isinstance(_cls, type) and issubclass(_cls, torch.optim.Optimizer) \
            and _name not in _NOT_OUTER:
        optimizers.register(_name.lower())(_cls)
del _name, _cls

# Left out, and why: LambdaLR and MultiplicativeLR take Python functions (neither YAML nor a
# checkpoint holds them), SequentialLR and ChainedScheduler take other schedulers,
# ReduceLROnPlateau steps on a metric rather than once per step.
_NOT_SCHEDULES = {"LRScheduler", "_LRScheduler", "LambdaLR", "MultiplicativeLR",
                  "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"}
for _name, _cls in sorted(vars(lr_scheduler).items()):
    if isinstance(_cls, type) and issubclass(_cls, lr_scheduler.LRScheduler) \
            and _name not in _NOT_SCHEDULES:
        _kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", _name.removesuffix("LR")).lower()
        schedules.register(_kebab)(_cls)
del _name, _cls, _kebab


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: a registered name and its constructor options."""

    name: str
    options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, spec, argument: str = "outer['schedule']") -> "Schedule":
        name, options = name_and_options(spec, argument)
        schedules.check_options(name, options, argument=argument, supplied=1)
        return cls(name, options)


@dataclasses.dataclass(frozen=True)
class OuterOptimizer:
    """An outer optimizer: registered name, constructor options, optional clipping of
    the hypergradient to global norm `clip` (g <- g min(1, clip / ||g||)) and schedule."""

    name: str
    options: dict = dataclasses.field(default_factory=dict)
    clip: float | None = None
    schedule: Schedule | None = None

    @classmethod
    def parse(cls, spec, argument: str = "outer") -> "OuterOptimizer":
        if isinstance(spec, OuterOptimizer):
            return spec
        name, options = name_and_options(spec, argument)
        clip = checks.optional_positive(f"{argument}['clip']", options.pop("clip", None))
        schedule = options.pop("schedule", None)
        if schedule is not None:
            schedule = Schedule.parse(schedule, f"{argument}['schedule']")
        optimizers.check_options(name, options, argument=argument, supplied=1)
        return cls(name, options, clip, schedule)

    def build(self, params):
        """(optimizer, scheduler or None) over the leaf tensors `params`."""
        try:
            optimizer = optimizers.get(self.name)(params, **self.options)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"outer optimizer {self.name!r}: {error}") from None
        if self.schedule is None:
            return optimizer, None
        try:
            scheduler = schedules.get(self.schedule.name)(optimizer, **self.schedule.options)
        except (TypeError, ValueError, KeyError, ZeroDivisionError) as error:
            raise InvalidInputError(f"schedule {self.schedule.name!r}: {error}") from None
        return optimizer, scheduler

    def check(self) -> None:
        """Build on a stand-in parameter and take two steps, so that what fails only when
        stepped (a schedule with a step size of 0) fails now, naming the schedule."""
        parameter = torch.zeros(1, requires_grad=True)
        optimizer, scheduler = self.build([parameter])
        if scheduler is None or self.schedule is None:
            return
        parameter.grad = torch.zeros(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(2):
                    optimizer.step()
                    scheduler.step()
        except (ZeroDivisionError, ValueError, TypeError, OverflowError) as error:
            schedule = self.schedule
            raise InvalidInputError(f"schedule {schedule.name!r} with "
                                    f"{schedule.options}: fails at its first step "
                                    f"({type(error).__name__}: {error})") from None

    def as_dict(self) -> dict:
        """The settings as written in a config: {"name": ..., **options, "clip": ...}."""
        schedule = None if self.schedule is None else {"name": self.schedule.name,
                                                       **self.schedule.options}
        return {"name": self.name, **self.options, "clip": self.clip, "schedule": schedule}

    def clip_coefficient(self, norm: torch.Tensor) -> torch.Tensor | None:
        """min(1, clip / (||g|| + 1e-6)), torch's `clip_grad_norm_` rule; None without clip."""
        if self.clip is None:
            return None
        return clip_coefficient(norm, self.clip, eps=1e-6)
