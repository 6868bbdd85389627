"""Device and dtype names, as written in Python or YAML, to torch objects; CPU threads."""

import contextlib
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


THREADS_VARIABLE = "BILEVEL_THREADS"
# More threads than this many per CPU core only add synchronisation; far more (100000) crash
# torch's thread pool (a segfault), so they are refused.
THREADS_PER_CORE = 4


def memory_bytes(device: torch.device) -> int:
    """The memory of `device`: the GPU's total memory, or the machine's physical RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(what: str, needed: int, device) -> None:
    """An InvalidInputError when `what` needs more bytes than `device` has in all, before
    torch tries to allocate them (and fails deep inside, or swaps for hours)."""
    device = torch.device(device)
    available = memory_bytes(device)
    if needed > available:
        raise InvalidInputError(f"{what} needs {needed / 2**30:,.3g} GiB, more than the "
                                f"{available / 2**30:,.3g} GiB of memory of {device}")


def threads(requested: int | None = None) -> int:
    """torch's CPU threads for a run: `requested`, else the environment variable
    BILEVEL_THREADS, else 1. The batched per-task work of small problems is a long chain
    of small operators; on one thread each costs microseconds, while spreading it over
    threads costs more in synchronisation than it saves (docs/results/benchmarks.md)."""
    if requested is None:
        variable = os.environ.get(THREADS_VARIABLE)
        if variable is None:
            return 1
        try:
            requested = int(variable)
        except ValueError:
            raise InvalidInputError(
                f"{THREADS_VARIABLE} must be a whole number >= 1, got {variable!r}") from None
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise InvalidInputError(f"threads must be a whole number >= 1, got {requested!r}")
    cores = os.cpu_count() or 1
    if requested > THREADS_PER_CORE * cores:
        raise InvalidInputError(f"threads must be at most {THREADS_PER_CORE} x this machine's "
                                f"{cores} CPU cores = {THREADS_PER_CORE * cores}, got "
                                f"{requested!r}")
    return requested


@contextlib.contextmanager
def torch_threads(requested: int | None = None):
    """Inside: torch runs on `threads(requested)` CPU threads; the count is restored after."""
    count, before = threads(requested), torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
