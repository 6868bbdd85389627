"""The contract suites that every estimator and inner solver passes, shipped for users'
own ones (see docs/extending.md); needs pytest.

    EstimatorContract, SolverContract   pytest classes to subclass (`contracts`)
    CountingQuadratic, CountingSolver   a problem and a solver wrapper that count the
                                        derivatives evaluated (`counting`)
"""

from bilevel.testing.contracts import EstimatorContract, SolverContract
from bilevel.testing.counting import CountingQuadratic, CountingSolver, DerivativeCounter

__all__ = ["CountingQuadratic", "CountingSolver", "DerivativeCounter", "EstimatorContract",
           "SolverContract"]
