"""Hypergradient estimators, registered by name in `estimators`; `average_over_tasks` and
`solve_info` are the pieces an estimator of one's own builds on (docs/extending.md)."""

from bilevel.estimators import (
    darts,
    exact,
    fobmaml,
    fobmaml_jvp,
    fomaml,
    imaml,
    maml,
    neumann,
    reptile,
)
from bilevel.estimators.base import average_over_tasks, estimators, solve_info

__all__ = ["average_over_tasks", "darts", "estimators", "exact", "fobmaml", "fobmaml_jvp",
           "fomaml", "imaml", "maml", "neumann", "reptile", "solve_info"]
