"""The shipped contract suites (`bilevel.testing`) over every registered estimator and
solver."""

import pytest

import bilevel.testing
from bilevel.estimators import estimators
from bilevel.solvers import solvers

SOLVER_OPTIONS = {"gd": {"lr": 1 / 13, "steps": 20}, "nesterov": {"lr": 1 / 13, "steps": 20}}


@pytest.fixture(params=estimators.names())
def method(request):
    return request.param


@pytest.fixture(params=solvers.names())
def solver(request):
    return solvers.build(request.param, SOLVER_OPTIONS[request.param])


class TestEveryEstimator(bilevel.testing.EstimatorContract):
    pass


class TestEverySolver(bilevel.testing.SolverContract):
    pass


@pytest.mark.parametrize("options", [{"scheme": "forward"}, {"scheme": "five-point"},
                                     {"warm_start_steps": 5}], ids=["forward", "five-point",
                                                                    "warm"])
def test_fobmaml_variants_report_their_cost(options):
    """fo-bmaml's options change what it spends; each variant reports it as counted."""
    bilevel.testing.EstimatorContract().test_cost_counts_the_derivatives_evaluated(
        "fo-bmaml", options)
