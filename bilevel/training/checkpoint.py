"""Checkpoints: everything a run needs to continue bit for bit, in one file.

A checkpoint is a dict of tensors and plain Python values (loadable with
`torch.load(..., weights_only=True)`): step, h, the outer optimizer's and
scheduler's state dicts, the states of the run's random generators and of torch's
global ones (as uint8 tensors), the history of logged records and the wall time
spent. It is written to a temporary file in the same directory, then renamed over
the previous one (`os.replace`, atomic), so a kill at any moment leaves the previous
checkpoint or the new one, never a torn file.

Integrity: the dict also holds "checksum", the SHA-256 of its content (`content_digest`:
every tensor's dtype, shape and bytes, every other value's repr, in a fixed order), so the
file stays a plain `torch.load`-able dict. `load` recomputes it and refuses a checkpoint
whose content changed on disk (one float of h is enough) or that holds none, before the
run writes anything, so the damaged file is left as it is for inspection.
"""

import hashlib
import os
from pathlib import Path

import torch

from bilevel.errors import RunDirectoryError, RunWriteError
from bilevel.tree import raw_bytes

FILENAME = "checkpoint.pt"
CHECKSUM = "checksum"
_SCALARS = {float, int, str, bool, type(None)}


def content_digest(state: dict) -> str:
    """"sha256:<hex>" of `state` without its CHECKSUM entry: the repr of its structure (dicts
    in their order, which a save and load keeps; tensors as dtype and shape), then every
    tensor's bytes in that order (floats' reprs round-trip exactly, so any changed value
    changes the digest)."""
    tensors = []

    def skeleton(value):
        if type(value) in _SCALARS:  # most of the history: no call per value
            return value
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return ("tensor", str(value.dtype), tuple(value.shape))
        if isinstance(value, dict):
            return ("dict", [(k, v if type(v) in _SCALARS else skeleton(v))
                             for k, v in value.items()])
        if isinstance(value, list | tuple):
            return [skeleton(item) for item in value]
        return value

    digest = hashlib.sha256(repr(skeleton({k: v for k, v in state.items()
                                           if k != CHECKSUM})).encode())
    for tensor in tensors:
        digest.update(raw_bytes(tensor))
    return "sha256:" + digest.hexdigest()


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
    """Write `state` with its checksum to directory/checkpoint.pt atomically; an OS error
    (ENOSPC) is a RunWriteError naming the file, the previous checkpoint and no temporary
    file left."""
    state = {k: v for k, v in state.items() if k != CHECKSUM}
    state[CHECKSUM] = content_digest(state)
    path = Path(directory) / FILENAME
    temporary = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk: the previous checkpoint stays whole
            raise RunWriteError(f"cannot write {path} ({error.strerror}); the previous "
                                "checkpoint is left as it was") from None
        raise
    return path


def load(directory: Path) -> dict:
    """The checkpoint in `directory`, tensors on the CPU, its checksum verified; a
    RunDirectoryError naming the file if it is missing, unreadable or damaged."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise RunDirectoryError(f"resume=True, but {path} does not exist: no checkpoint to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunDirectoryError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(state, dict) or CHECKSUM not in state:
        raise RunDirectoryError(f"{path} is not a checkpoint of bilevel: it records no "
                                "checksum; it was left untouched")
    if state[CHECKSUM] != content_digest(state):
        raise RunDirectoryError(f"{path} is damaged: its content does not match its checksum "
                                f"({state[CHECKSUM]}); it was left untouched, refusing to "
                                "resume from it")
    return state
