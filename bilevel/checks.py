"""Argument checks that raise `InvalidInputError` naming the argument and the value."""

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any, ClassVar

from bilevel.errors import InvalidInputError


def option(doc: str, default: Any = dataclasses.MISSING, *, minimum: int | None = None,
           above: float | None = None, resumable: bool = False) -> Any:
    """A dataclass field that is a user's option: `doc` its meaning (the YAML reference
    prints it), `minimum` (integers) or `above` (numbers, exclusive) its bound, for the
    config schema; `resumable`: a resumed run may change it (run options only)."""
    return dataclasses.field(default=default, metadata={
        "doc": doc, "minimum": minimum, "above": above, "resumable": resumable})


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
            integer(prefix + field.name, value, minimum=meta["minimum"])
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


def integer(name: str, value, minimum: int = 0) -> int:
    """An int >= minimum."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
