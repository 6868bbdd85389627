"""A penalty on the hyperparameters, added to the outer objective: a remedy for fitting
many hyperparameters to one validation set (`meta_train(..., hyper_penalty=...)`).

    minimise  F(h) + P(h),   P(h) = weight / 2 * sum over the chosen leaves L of h of
                                    || L - mean(L) ||^2

Each chosen leaf is pulled toward the mean of its own coordinates, so one weight per
feature is pulled toward the shared weight that a single hyperparameter would be: weight
-> infinity gives back one value per leaf, weight = 0 the unpenalised problem. The
gradient, weight * (L - mean(L)) (the deviations sum to zero), is added to the
hypergradient; it costs no inner solve. In the terms of a Gaussian prior of standard
deviation s on each coordinate around the leaf's mean, and F a mean over n validation
examples, weight = 1 / (n s^2).
"""

import dataclasses

import torch

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.tree import tree_flatten_with_path


@dataclasses.dataclass(frozen=True)
class HyperPenalty(checks.Options):
    """A penalty on h added to the outer objective (bilevel.training.hyper_penalty):
    weight / 2 times the squared deviation of each chosen leaf from its own mean.

    weight: the factor of P (> 0); leaves: dotted paths into h ("log_lam.W"), each
    naming a leaf or every leaf under a subtree (None: every leaf of h)."""

    key, required = "hyper_penalty", "weight"
    weight: float = checks.option("the penalty's factor (1 / (n_val s^2) for a prior of "
                                  "spread s)", above=0)
    leaves: tuple[str, ...] | None = checks.option("dotted paths into h (null: every leaf)",
                                                   None)

    def __post_init__(self):
        super().__post_init__()
        if self.leaves is not None:
            if isinstance(self.leaves, str) or not all(isinstance(p, str) and p
                                                       for p in self.leaves):
                raise InvalidInputError(f"hyper_penalty.leaves must be a list of dotted paths "
                                        f"into h, got {self.leaves!r}")
            object.__setattr__(self, "leaves", tuple(self.leaves))

    def as_dict(self) -> dict:
        return {"weight": self.weight, "leaves": None if self.leaves is None else
                list(self.leaves)}

    def mask(self, h: dict) -> list[bool]:
        """For each leaf of h (in tree_flatten's order), whether it is penalised; every path
        of `leaves` must name at least one leaf."""
        paths = [".".join(str(getattr(k, "key", k)) for k in where)
                 for where, _ in tree_flatten_with_path(h)[0]]
        if self.leaves is None:
            return [True] * len(paths)
        for wanted in self.leaves:
            if not any(_under(path, wanted) for path in paths):
                raise InvalidInputError(f"hyper_penalty.leaves: {wanted!r} names no leaf of h "
                                        f"(its leaves: {', '.join(paths)})")
        return [any(_under(path, wanted) for wanted in self.leaves) for path in paths]

    def value_and_grad(self, leaves: list, mask: list[bool]):
        """(P as a 0-dim float64 tensor, [dP/dL for every leaf]) at the leaves of h."""
        total = torch.zeros((), dtype=torch.float64, device=leaves[0].device)
        grads = []
        for leaf, chosen in zip(leaves, mask, strict=True):
            leaf = leaf.detach()
            if not chosen:
                grads.append(torch.zeros_like(leaf))
                continue
            deviation = leaf - leaf.mean()
            total = total + 0.5 * self.weight * deviation.to(torch.float64).square().sum()
            grads.append(self.weight * deviation)
        return total, grads


def _under(path: str, wanted: str) -> bool:
    return path == wanted or path.startswith(wanted + ".")
