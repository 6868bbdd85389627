"""Device and dtype names, as written in Python or YAML, to torch objects."""

import os

import torch

from bilevel.errors import InvalidInputError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when available, else CPU; "cpu"; "cuda" (or "cuda:N").

    Under `torchrun` (env LOCAL_RANK set), "auto" and "cuda" pick this process's GPU,
    cuda:LOCAL_RANK, so that each process of a machine uses its own GPU.
    """
    if not isinstance(name, str) or name.split(":")[0] not in ("auto", "cpu", "cuda"):
        raise InvalidInputError(
            f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N', got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r} was asked for, but torch sees no CUDA device")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise InvalidInputError(f"device {name!r} is not a valid device: {error}") from None


def resolve_dtype(name: str) -> torch.dtype:
    """"float32" or "float64" -> torch.float32 or torch.float64."""
    if name not in DTYPES:
        raise InvalidInputError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {name!r}")
    return DTYPES[name]
