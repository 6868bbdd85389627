"""Regularisers Reg(phi; h) of the inner problem (paper eq. 15).

A regulariser returns its *elementwise terms*, a pytree shaped like `phi`, so
that `lam` can be a scalar, one value per tensor, or one value per coordinate:

    lam * Reg(phi; h) := sum over leaves and coordinates of lam_j * r_j(phi, h)

or None when the inner problem has no regulariser.
"""

import torch

from bilevel.errors import InvalidInputError
from bilevel.registry import Registry
from bilevel.tree import tree_leaves, tree_map, tree_structure

regularizers = Registry("regularizer")


def require_key(h: dict, key: str, needed_by: str):
    if key not in h:
        raise InvalidInputError(
            f"h has no key {key!r}, which {needed_by} needs; h has keys {sorted(h)}"
        )
    return h[key]


@regularizers.register("proximal")
def proximal(phi, h):
    """r_j = 1/2 (phi_j - theta_j)^2: the B-MAML prior (eq. 6)."""
    theta = require_key(h, "theta", "the proximal regulariser 1/2 ||phi - theta||^2")
    return tree_map(lambda p, t: 0.5 * (p - t) ** 2, phi, theta)


@regularizers.register("l2")
def l2(phi, h):
    """r_j = 1/2 phi_j^2: weight decay."""
    return tree_map(lambda p: 0.5 * p**2, phi)


@regularizers.register("none")
def none(phi, h):
    """No regulariser (plain MAML, eq. 1): `lam` is not used."""
    return None


def weighted_sum(lam, terms) -> torch.Tensor:
    """sum_j lam_j r_j, for a scalar `lam` or a pytree of `lam` shaped like `terms`."""
    if isinstance(lam, torch.Tensor):
        if lam.ndim != 0:
            raise InvalidInputError(
                f"lam(h) must be a scalar tensor or a dict shaped like phi, "
                f"got a tensor of shape {tuple(lam.shape)}"
            )
        return lam * sum(t.sum() for t in tree_leaves(terms))
    if tree_structure(lam) != tree_structure(terms):
        raise InvalidInputError(
            "lam(h) given per tensor or per coordinate must have the keys of phi; "
            f"got {tree_structure(lam)} for phi {tree_structure(terms)}"
        )
    return sum((w * t).sum() for w, t in zip(tree_leaves(lam), tree_leaves(terms), strict=True))
