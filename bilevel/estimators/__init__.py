"""Hypergradient estimators, registered by name in `estimators`. `Estimator` (the base class
that declares their capabilities), `StatefulEstimator` (its base for methods that carry
state across calls: the single-loop soba, amigo, bome and f2sa), `average_over_tasks` and
`solve_info` are the pieces an estimator of one's own builds on (docs/extending.md);
`as_estimator` gives one from an object or a name."""

from bilevel.estimators import (
    amigo,
    bome,
    darts,
    exact,
    f2sa,
    fobmaml,
    fobmaml_jvp,
    fomaml,
    imaml,
    maml,
    neumann,
    reptile,
    soba,
    stateful,
)
from bilevel.estimators.base import (
    Estimator,
    as_estimator,
    average_over_tasks,
    estimators,
    solve_info,
)
from bilevel.estimators.stateful import StatefulEstimator

__all__ = ["Estimator", "StatefulEstimator", "amigo", "as_estimator", "average_over_tasks",
           "bome", "darts", "estimators", "exact", "f2sa", "fobmaml", "fobmaml_jvp", "fomaml",
           "imaml", "maml", "neumann", "reptile", "soba", "solve_info", "stateful"]
