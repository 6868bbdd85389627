"""Hypergradient estimators, registered by name in `estimators`; `average_over_tasks` and
`solve_info` are the pieces an estimator of one's own builds on (docs/extending.md)."""

from bilevel.estimators import exact, fobmaml, fobmaml_jvp, fomaml, imaml, maml, reptile
from bilevel.estimators.base import average_over_tasks, estimators, solve_info

__all__ = ["average_over_tasks", "estimators", "exact", "fobmaml", "fobmaml_jvp", "fomaml", "imaml",
           "maml", "reptile", "solve_info"]
