"""bilevel: bilevel hyperparameter and meta-parameter learning for PyTorch."""

from bilevel import solvers
from bilevel.errors import BilevelError
from bilevel.estimators import estimators
from bilevel.hypergradient import hypergradient
from bilevel.inner import outer_loss, solve_inner
from bilevel.problem import BilevelProblem
from bilevel.regularizers import regularizers

__all__ = [
    "BilevelError",
    "BilevelProblem",
    "estimators",
    "hypergradient",
    "outer_loss",
    "regularizers",
    "solve_inner",
    "solvers",
]
