"""Label noise for data hyper-cleaning (Franceschi et al. 2017, sec. 5.1): a fraction of the
training labels replaced by a different class, at random, with the corrupted rows recorded.
"""

import math
import numbers

import torch

from bilevel.errors import InvalidInputError


def check_fraction(name: str, value) -> float:
    """A number in [0, 1)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value < 1:
        raise InvalidInputError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def corrupt_labels(labels: torch.Tensor, fraction: float, classes: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, corrupted mask): exactly round(fraction * n) of the n integer `labels`
    (0..classes-1), chosen at random, become (label + s) mod classes with s uniform in
    1..classes-1, so a corrupted label is never the true one; the mask marks them."""
    fraction = check_fraction("split: corruption", fraction)
    n = len(labels)
    if classes < 2:
        raise InvalidInputError(f"split: corruption needs at least 2 classes, got {classes}")
    corrupted = (torch.randperm(n, generator=generator) < round(fraction * n)).to(labels.device)
    shift = torch.randint(1, classes, (n,), generator=generator).to(labels.device)
    return torch.where(corrupted, (labels + shift) % classes, labels), corrupted
