"""Argument checks that raise `InvalidInputError` naming the argument and the value."""

import dataclasses
import math
import numbers
import os
import stat
from typing import TYPE_CHECKING, Any, ClassVar

from bilevel.errors import InvalidInputError


def option(doc: str, default: Any = dataclasses.MISSING, *, minimum: int | None = None,
           maximum: int | None = None, above: float | None = None,
           resumable: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is a user's option: `doc` its meaning (the YAML reference
    prints it), `minimum` and `maximum` (integers) or `above` (numbers, exclusive) its
    bounds, checked by `in_bounds` and in the config schema; `resumable`: a resumed run may
    change it (run options only); `default_factory` as dataclasses.field's."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={
        "doc": doc, "minimum": minimum, "maximum": maximum, "above": above,
        "resumable": resumable})


class Options:
    """Base of a frozen dataclass of options written under `key` in a config: its fields'
    bounds (declared with `option`) checked, `parse` from None, itself or a dict of its
    fields (`required` among them), `as_dict` its record."""

    key: ClassVar[str]
    required: ClassVar[str]
    if TYPE_CHECKING:  # what @dataclass gives each subclass (dataclasses.asdict reads it)
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self):
        in_bounds(self, f"{self.key}.")

    @classmethod
    def parse(cls, value) -> Any:
        return options(cls, cls.key, value, required=cls.required)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def in_bounds(options, prefix: str = "") -> None:
    """Every field of the dataclass instance `options` declared with `option` is within its
    bound (None passes where it is the default); the error names `prefix + field name`."""
    for field in dataclasses.fields(options):
        meta, value = field.metadata, getattr(options, field.name)
        if value is None and field.default is None:
            continue
        if meta.get("minimum") is not None:
            integer(prefix + field.name, value, minimum=meta["minimum"],
                    maximum=meta.get("maximum"))
        elif meta.get("above") is not None:
            above(prefix + field.name, value, meta["above"])


def above(name: str, value, bound: float) -> float:
    """A finite number > bound."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= bound:
        raise InvalidInputError(f"{name} must be a finite number > {bound:g}, got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    """A finite number > 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# Documented maxima of a run's counts (docs/config.md): a billion outer steps or a million
# tasks in one batch are already far beyond any run of this library; larger values are typos
# (1e12 for 1e2) that would otherwise run for ever or fail deep inside torch.
MAX_STEPS = 10**9
MAX_TASKS = 10**6
# torch's generators take seeds in [0, 2^64).
MAX_SEED = 2**64 - 1


def integer(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    """An int >= minimum (and <= maximum, where given)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and int(value) > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum:,}, got {value!r}")
    return int(value)


def seed(name: str, value) -> int:
    """A seed torch's generators accept: an int in [0, 2^64 - 1]."""
    if (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) > MAX_SEED):
        raise InvalidInputError(f"{name} must be an integer in [0, 2^64 - 1] (torch's "
                                f"generators take 64-bit seeds), got {value!r}")
    return integer(name, value)


def not_regular(path) -> str | None:
    """What `path` is when it exists but is not a regular file ("a FIFO", "a directory",
    ...), else None: reading a FIFO or a device blocks or never ends. Looked at with stat,
    which does not open it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the read that follows says so
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), None)


def non_negative(name: str, value) -> float:
    """A finite number >= 0 (a float option's lower bound, which `option` cannot state)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def optional_positive(name: str, value) -> float | None:
    return None if value is None else positive(name, value)


def one_of(name: str, value, choices) -> str:
    if value not in choices:
        listed = ', '.join(map(repr, choices))
        raise InvalidInputError(f"{name} must be one of {listed}, got {value!r}")
    return value


def options(cls, name: str, value, required: str):
    """None, an instance of the dataclass `cls`, or a dict of its fields (`required` among
    them) made into one; anything else is an InvalidInputError naming `name`."""
    if value is None or isinstance(value, cls):
        return value
    valid = [field.name for field in dataclasses.fields(cls)]
    if not isinstance(value, dict) or not set(value) <= set(valid) or required not in value:
        raise InvalidInputError(f"{name} must be None or a dict with the keys "
                                f"{', '.join(valid)} ({required} required), got {value!r}")
    return cls(**value)
