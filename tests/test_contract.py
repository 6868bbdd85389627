"""The shipped contract suites (`bilevel.testing`) over every registered estimator and
solver."""

import pytest

import bilevel
import bilevel.testing
from bilevel.estimators import estimators
from bilevel.solvers import solvers

SOLVER = bilevel.solvers.GD(lr=1 / 13, steps=20)
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


@pytest.mark.parametrize("method", sorted(set(estimators.names())
                                           - {"imaml", "neumann", "soba", "amigo"}))
def test_second_order_products_are_each_evaluated_anew(method):
    """Every estimator but imaml and neumann (whose conjugate-gradient steps and series
    terms reuse one pull-back) and soba and amigo (whose Hessian-vector and mixed products
    are pull-backs of one reverse pass) evaluates each second-order product it reports."""
    problem, h, tasks = bilevel.testing.contracts.setting()
    bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    problem.counter.reset()
    _, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    assert info.cost.hvps + info.cost.mixed_products == problem.counter.second_order
