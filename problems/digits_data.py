"""The handwritten digits that scikit-learn ships (1797 images of 8x8 pixels, 10 classes).
(`standardize` and `random_split` are the library's, from bilevel.blocks.sources.)

Bundled with scikit-learn (`sklearn.datasets.load_digits`): nothing is downloaded.
"""

import functools

import torch

from bilevel.blocks.sources import random_split, standardize

__all__ = ["CLASSES", "FEATURES", "digits", "random_split", "standardize"]

FEATURES, CLASSES = 64, 10


@functools.cache
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # imported when needed: scikit-learn takes 2 s

    data = load_digits()
    return torch.from_numpy(data.data), torch.from_numpy(data.target)


def digits(dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): pixel intensities scaled to [0, 1], shape (1797, 64), and int64 labels (1797,)."""
    x, y = _raw()
    return (x / 16).to(dtype=dtype, device=device), y.to(device)
