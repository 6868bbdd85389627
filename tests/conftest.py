import pytest
import torch

from bilevel.tree import ravel

# The tests run many tiny tensor operations, for which intra-op threads cost more than they
# give (2-core CI: 2-8x slower with two threads).
torch.set_num_threads(1)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def relative_error(estimate, reference) -> float:
    """||estimate - reference|| / ||reference|| over every leaf of two pytrees."""
    a, _ = ravel(estimate)
    b, _ = ravel(reference)
    return ((a - b).norm() / b.norm()).item()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
