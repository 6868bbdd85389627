"""Estimators against the closed form of the paper's quadratic (Appendix B), float64."""

import numpy as np
import pytest
import torch

import bilevel
from bilevel.tree import relative_error
from problems.quadratic import Quadratic
from tests.conftest import DEVICES, seeded

CONVERGED = bilevel.solvers.GD(lr=1 / 11, steps=600)  # kappa=10, lam=1: contraction 10/11


def quadratic(device="cpu", **kwargs):
    problem = Quadratic(**{"dim": 8, "kappa": 10.0, "lam": 1.0, "n_tasks": 6, "device": device}
                        | kwargs)
    return problem, problem.init_hyper(seeded(1)), problem.all_tasks()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("distinct_val", [False, True])
def test_exact_matches_closed_form(device, distinct_val):
    problem, h, tasks = quadratic(device, distinct_val=distinct_val)
    grad, _ = bilevel.hypergradient(problem, h, tasks, solver=CONVERGED, method="exact")
    assert relative_error(grad, problem.meta_gradient(h, tasks)) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "scheme, nu, tolerance",
    [("forward", 1e-6, 1e-4), ("symmetric", 1e-4, 1e-6), ("five-point", 1e-3, 1e-8)],
)
def test_fobmaml_matches_closed_form(device, scheme, nu, tolerance):
    problem, h, tasks = quadratic(device, distinct_val=True)
    grad, info = bilevel.hypergradient(problem, h, tasks, solver=CONVERGED, nu=nu, scheme=scheme)
    error = relative_error(grad, problem.meta_gradient(h, tasks))
    assert error < tolerance
    # ... and not by accident: ten times the step must give a visibly larger error.
    coarse, _ = bilevel.hypergradient(problem, h, tasks, solver=CONVERGED, nu=10 * nu,
                                      scheme=scheme)
    assert relative_error(coarse, problem.meta_gradient(h, tasks)) > 5 * error
    assert info["inner_grad_evals"] == 6 * (4 if scheme == "five-point" else 2) * 600
    assert info["inner_grad_norm"].shape == (6,) and info["inner_grad_norm"].max() < 1e-10


@pytest.mark.parametrize("scheme, slope", [("forward", 1.0), ("symmetric", 2.0)])
def test_error_scales_with_the_order_of_the_scheme(scheme, slope):
    problem, h, tasks = quadratic(distinct_val=True)
    reference = problem.meta_gradient(h, tasks)
    nus = np.logspace(-1, -3, 5)
    errors = [
        relative_error(bilevel.hypergradient(problem, h, tasks, solver=CONVERGED, nu=nu,
                                             scheme=scheme)[0], reference)
        for nu in nus
    ]
    fitted = np.polyfit(np.log(nus), np.log(errors), 1)[0]
    assert abs(fitted - slope) < 0.3, (fitted, errors)


@pytest.mark.parametrize("per_coordinate", [False, True])
@pytest.mark.parametrize("method", ["exact", "fo-bmaml"])
def test_learnable_log_lam(per_coordinate, method):
    problem, h, tasks = quadratic(distinct_val=True)
    if per_coordinate:
        h["log_lam"] = {"w": torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)}
    grad, _ = bilevel.hypergradient(problem, h, tasks, solver=CONVERGED, method=method,
                                    **({"nu": 1e-5} if method == "fo-bmaml" else {}))
    reference = problem.meta_gradient(h, tasks)
    assert relative_error(grad["log_lam"], reference["log_lam"]) < 1e-7
    assert relative_error(grad, reference) < 1e-7


def test_lock_step_cancels_truncation_error():
    """DESIGN section 1: with far-from-converged solves (kappa=1e3, 1000 steps, inner
    gradient norm ~1e-4) the lock-stepped difference is still accurate, because it
    differentiates the K-step iterate; the paper's bound lam*delta/nu would be ~1e-1."""
    problem = Quadratic(dim=20, kappa=1e3, lam=10.0, n_tasks=4)
    h, tasks = problem.init_hyper(seeded(1)), problem.all_tasks()
    solver = bilevel.solvers.GD(lr=1 / 1010, steps=1000)
    grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=1e-6)
    assert info["inner_grad_norm"].max() > 1e-5  # the solves really are inexact
    assert relative_error(grad["theta"], problem.meta_gradient(h, tasks)["theta"]) < 1e-5


@pytest.mark.parametrize("scheme, nu", [("forward", 1e-7), ("symmetric", 1e-6)])
def test_warm_start(scheme, nu):
    """Stencil solves warm-started at phi* need fewer steps than cold ones for the
    same accuracy: 100 warm steps beat 100 cold lock-stepped steps here."""
    problem, h, tasks = quadratic(distinct_val=True)
    reference = problem.meta_gradient(h, tasks)
    solver = bilevel.solvers.GD(lr=1 / 11, steps=300)
    warm, info = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=nu, scheme=scheme,
                                       warm_start_steps=100)
    assert info["inner_grad_evals"] == 6 * (300 + 2 * 100)
    assert relative_error(warm, reference) < 1e-6
    cold_solver = bilevel.solvers.GD(lr=1 / 11, steps=100)
    cold, _ = bilevel.hypergradient(problem, h, tasks, solver=cold_solver, nu=nu, scheme=scheme)
    assert relative_error(warm, reference) < relative_error(cold, reference)
