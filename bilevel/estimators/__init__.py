"""Hypergradient estimators, registered by name in `estimators`."""

from bilevel.estimators import exact, fobmaml
from bilevel.estimators.base import estimators

__all__ = ["estimators", "exact", "fobmaml"]
