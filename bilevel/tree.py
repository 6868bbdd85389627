"""Small helpers on pytrees of tensors (dicts of tensors, nested allowed), and the pytree
functions the library uses.

Built on `torch.utils._pytree`, the pytree module that `torch.func` itself uses. torch
2.13 has no public pytree module (no `torch.utils.pytree`), so this is the library's one
import of the private one: the rest of `bilevel` imports its pytree functions from here.
"""

import hashlib

import torch
from torch.utils._pytree import (
    MappingKey,
    keystr,
    tree_flatten,
    tree_flatten_with_path,
    tree_iter,
    tree_leaves,
    tree_leaves_with_path,
    tree_map,
    tree_structure,
    tree_unflatten,
)

__all__ = ["MappingKey", "detach", "fingerprint", "keystr", "raw_bytes", "ravel",
           "relative_error", "tree_dot", "tree_flatten", "tree_flatten_with_path", "tree_iter",
           "tree_leaves", "tree_leaves_with_path", "tree_map", "tree_sq_norm", "tree_structure",
           "tree_unflatten"]


def tree_dot(a, b) -> torch.Tensor:
    """<a, b> summed over every leaf."""
    return sum((x * y).sum() for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True))


def tree_sq_norm(a) -> torch.Tensor:
    """||a||^2 summed over every leaf."""
    return tree_dot(a, a)


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a tensor's values (on the CPU, in row-major order), for hashing."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data


def fingerprint(tree) -> str:
    """SHA-256 of a pytree of tensors: the dtype, shape and bytes of every leaf."""
    digest = hashlib.sha256()
    for leaf in tree_leaves(tree):
        digest.update(f"{leaf.dtype} {tuple(leaf.shape)};".encode())
        digest.update(raw_bytes(leaf))
    return digest.hexdigest()


def detach(tree):
    return tree_map(torch.Tensor.detach, tree)


def ravel(tree):
    """Flatten a pytree into one vector; returns (vector, unravel)."""
    leaves, spec = tree_flatten(tree)
    shapes = [leaf.shape for leaf in leaves]
    sizes = [leaf.numel() for leaf in leaves]

    def unravel(vector):
        parts = torch.split(vector, sizes)
        return tree_unflatten([p.reshape(s) for p, s in zip(parts, shapes, strict=True)], spec)

    return torch.cat([leaf.reshape(-1) for leaf in leaves]), unravel


def relative_error(estimate, reference) -> float:
    """||estimate - reference|| / ||reference|| over every leaf of two pytrees."""
    a, _ = ravel(estimate)
    b, _ = ravel(reference)
    return ((a - b).norm() / b.norm()).item()
