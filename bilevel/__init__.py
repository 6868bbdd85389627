"""bilevel: bilevel hyperparameter and meta-parameter learning for PyTorch."""

from bilevel import solvers
from bilevel.devices import resolve_device, resolve_dtype
from bilevel.errors import BilevelError, DivergenceError, InvalidInputError, RunDirectoryError
from bilevel.estimators import estimators
from bilevel.gradcheck import gradcheck, gradcheck_table
from bilevel.hypergradient import hypergradient
from bilevel.inner import at_inner_solutions, outer_loss, solve_inner
from bilevel.problem import BilevelProblem
from bilevel.regularizers import regularizers
from bilevel.training import MetaTrainResult, meta_train, optimizers, schedules

__all__ = [
    "at_inner_solutions",
    "BilevelError",
    "BilevelProblem",
    "DivergenceError",
    "InvalidInputError",
    "MetaTrainResult",
    "RunDirectoryError",
    "estimators",
    "gradcheck",
    "gradcheck_table",
    "hypergradient",
    "meta_train",
    "optimizers",
    "outer_loss",
    "regularizers",
    "resolve_device",
    "resolve_dtype",
    "schedules",
    "solve_inner",
    "solvers",
]
