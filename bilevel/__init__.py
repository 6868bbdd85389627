"""bilevel: bilevel hyperparameter and meta-parameter learning for PyTorch."""

from bilevel import solvers
from bilevel.config import load_config
from bilevel.devices import resolve_device, resolve_dtype
from bilevel.errors import BilevelError, DivergenceError
from bilevel.estimators import estimators
from bilevel.gradcheck import gradcheck, gradcheck_table
from bilevel.hypergradient import hypergradient
from bilevel.inner import outer_loss, solve_inner
from bilevel.problem import BilevelProblem
from bilevel.regularizers import regularizers
from bilevel.training import MetaTrainResult, meta_train, optimizers, schedules

__all__ = [
    "BilevelError",
    "BilevelProblem",
    "DivergenceError",
    "MetaTrainResult",
    "estimators",
    "gradcheck",
    "gradcheck_table",
    "hypergradient",
    "load_config",
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
