"""The library's exceptions: one root, `BilevelError`, and one subclass per kind of fault.

    BilevelError            root: `except bilevel.BilevelError` catches every one below
    InvalidInputError       an argument, option or name is not what the library expects
                            (also a ValueError, as Python's own argument errors are)
    DivergenceError         a run produced a NaN or Inf (not a ValueError: the input was
                            valid, the numbers blew up)
    NonFiniteTasksError     some tasks of a hypergradient gave a NaN or Inf loss or
                            gradient (`tasks` holds their indices); on_non_finite="drop"
                            averages over the others instead
    RunDirectoryError       a run directory cannot be used as asked: it already holds a
                            run, it holds no checkpoint to resume, or its recorded settings
                            differ from the resumed run's
        RunWriteError       a file of a running run could not be written (a full disk, a
                            directory made read-only during the run): the run stops, the
                            last checkpoint kept

Every message names the argument, file or key, the value received and what was expected.
"""

from collections.abc import Mapping
from types import MappingProxyType


class BilevelError(Exception):
    """The root of the library's own errors."""


class InvalidInputError(BilevelError, ValueError):
    """Invalid input: the message names the argument, the value received and what was
    expected."""


class RunDirectoryError(BilevelError):
    """A run directory (`meta_train(out=...)`) conflicts with the run asked for."""


class RunWriteError(RunDirectoryError):
    """Writing a run's file failed during the run (an OSError such as ENOSPC): the message
    names the file and the OS's reason; the file written before it (the last checkpoint) is
    kept and no temporary file is left. `bilevel run` exits with status 1, as on a
    divergence: the run itself stopped."""


class DivergenceError(BilevelError):
    """A run blew up: `step` is the outer step, `quantity` what blew up and `problem` how (not
    finite, or grown past a bound); `note` says what was kept (the last good checkpoint).
    `spent`: the work of the step that blew up, which no record of the run holds (its
    estimator's counts, `inner_grad_evals`, `hvps`, ..., named as in a record, and
    `held_out_inner_grad_evals` when its held-out evaluation ran); empty where unknown."""

    spent: Mapping[str, float] = MappingProxyType({})

    def __init__(self, step: int, quantity: str, note: str = "", problem: str = "is not finite",
                 spent: Mapping[str, float] | None = None):
        super().__init__(f"diverged at step {step}: {quantity} {problem}{note}")
        self.step: int | None = step  # None in subclasses: outside any outer step
        self.quantity = quantity
        if spent is not None:
            self.spent = MappingProxyType(dict(spent))


class NonFiniteTasksError(BilevelError):
    """Tasks of one hypergradient call gave a non-finite loss or gradient; `tasks` holds
    their indices in the batch."""

    def __init__(self, message: str, tasks: tuple[int, ...]):
        super().__init__(message)
        self.tasks = tasks
