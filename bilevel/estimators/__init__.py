"""Hypergradient estimators, registered by name in `estimators`. `Estimator` (the base class
that declares their capabilities), `average_over_tasks` and `solve_info` are the pieces an
estimator of one's own builds on (docs/extending.md); `as_estimator` gives one from an
object or a name."""

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
from bilevel.estimators.base import (
    Estimator,
    as_estimator,
    average_over_tasks,
    estimators,
    solve_info,
)

__all__ = ["Estimator", "as_estimator", "average_over_tasks", "darts", "estimators", "exact",
           "fobmaml", "fobmaml_jvp", "fomaml", "imaml", "maml", "neumann", "reptile",
           "solve_info"]
