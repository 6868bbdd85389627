import dataclasses

import pytest
import torch

from bilevel.compiled import Compilation

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


def aot_eager(monkeypatch):
    """Compilation.of(True or "strict") with the "aot_eager" backend (dynamo and AOT autograd,
    no generated code: fast to compile) while the test runs."""
    of = Compilation.of.__func__

    def with_aot_eager(cls, value, argument="compile"):
        if isinstance(value, Compilation):
            return value
        return dataclasses.replace(of(cls, value, argument), backend="aot_eager")

    monkeypatch.setattr(Compilation, "of", classmethod(with_aot_eager))
