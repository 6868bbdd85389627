"""Hypergradient estimators, registered by name in `estimators`."""

from bilevel.estimators import exact, fobmaml, fobmaml_jvp, fomaml, imaml, maml, reptile
from bilevel.estimators.base import estimators

__all__ = ["estimators", "exact", "fobmaml", "fobmaml_jvp", "fomaml", "imaml", "maml", "reptile"]
