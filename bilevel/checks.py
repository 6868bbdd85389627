"""Argument checks that raise `InvalidInputError` naming the argument and the value."""

import math
import numbers

from bilevel.errors import InvalidInputError


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
