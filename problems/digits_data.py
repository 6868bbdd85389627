"""The handwritten digits that scikit-learn ships (1797 images of 8x8 pixels, 10 classes).

Bundled with scikit-learn (`sklearn.datasets.load_digits`): nothing is downloaded.
"""

import functools

import torch

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


def standardize(reference: torch.Tensor, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x - mean) / std per column, with the statistics of `reference` (no leak from the
    others); a constant column (std 0: some border pixels) is only centred."""
    mean, std = reference.mean(0), reference.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (reference, *arrays))


def random_split(n_examples: int, sizes, generator) -> list[torch.Tensor]:
    """Disjoint random index sets of the given sizes, drawn from range(n_examples)."""
    order = torch.randperm(n_examples, generator=generator)
    return list(torch.split(order[: sum(sizes)], list(sizes)))
