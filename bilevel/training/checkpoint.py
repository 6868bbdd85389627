"""Checkpoints: everything a run needs to continue bit for bit, in one file.

A checkpoint is a dict of tensors and plain Python values (loadable with
`torch.load(..., weights_only=True)`): step, h, the outer optimizer's and
scheduler's state dicts, the states of the run's random generators and of torch's
global ones (as uint8 tensors), the history of logged records and the wall time
spent. It is written to a temporary file in the same directory, then renamed over
the previous one (`os.replace`, atomic), so a kill at any moment leaves the previous
checkpoint or the new one, never a torn file.
"""

import os
from pathlib import Path

import torch

from bilevel.errors import RunDirectoryError

FILENAME = "checkpoint.pt"


def rng_states(generators: dict) -> dict:
    """The states of the named generators, of torch's global CPU generator ("torch") and,
    once CUDA is in use, of every CUDA device's generator ("cuda", a list)."""
    states = {name: generator.get_state() for name, generator in generators.items()}
    states["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(generators: dict, states: dict) -> None:
    for name, generator in generators.items():
        generator.set_state(states[name])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def save(directory: Path, state: dict) -> Path:
    """Write `state` to directory/checkpoint.pt atomically."""
    path = Path(directory) / FILENAME
    temporary = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def load(directory: Path) -> dict:
    """The checkpoint in `directory`, tensors on the CPU."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise RunDirectoryError(f"resume=True, but {path} does not exist: no checkpoint to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunDirectoryError(f"{path} is not a readable checkpoint: {error}") from None
