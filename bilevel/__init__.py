"""bilevel: bilevel hyperparameter and meta-parameter learning for PyTorch.

Units of one kind live in a module named after the kind, which holds the units and their
registry under the module's own name: `bilevel.solvers` (module) with `bilevel.solvers.GD`
and the registry `bilevel.solvers.solvers`; likewise `bilevel.estimators.estimators`,
`bilevel.regularizers.regularizers`, `bilevel.optimizers.optimizers` and
`bilevel.optimizers.schedules`, `bilevel.problem.problems`.
"""

from importlib import metadata

from bilevel import estimators, regularizers, solvers
from bilevel.config import load_config
from bilevel.devices import resolve_device, resolve_dtype
from bilevel.errors import (
                            BilevelError,
                            DivergenceError,
                            InvalidInputError,
                            NonFiniteTasksError,
                            RunDirectoryError,
                            RunWriteError,
)
from bilevel.gradcheck import gradcheck, gradcheck_table
from bilevel.hypergradient import hypergradient
from bilevel.inner import at_inner_solutions, outer_loss, solve_inner
from bilevel.problem import BilevelProblem
from bilevel.problem_view import ProblemView
from bilevel.training import Callback, MetaTrainResult, RunSpec, meta_train, optimizers

try:
    __version__ = metadata.version("bilevel")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "at_inner_solutions",
    "BilevelError",
    "BilevelProblem",
    "Callback",
    "DivergenceError",
    "InvalidInputError",
    "MetaTrainResult",
    "NonFiniteTasksError",
    "ProblemView",
    "RunDirectoryError",
    "RunWriteError",
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
    "RunSpec",
    "solve_inner",
    "solvers",
]
