import pytest
import torch

# The tests run many tiny tensor operations, for which intra-op threads cost more than they
# give (2-core CI: 2-8x slower with two threads).
torch.set_num_threads(1)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
