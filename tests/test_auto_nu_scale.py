"""nu="auto" is scaled by the problem (bilevel.estimators.fobmaml.problem_scale): with val_loss
1e-4 and 1e4 times the training loss, every scheme, float32 and float64, its nu is within 10x
of the best nu of a half-decade grid and its error within 10x of that nu's (the full table:
benchmarks/auto_nu_scale.py); a nu whose perturbed solves diverge raises instead of returning
NaN."""

import math

import pytest
import torch

import bilevel
from benchmarks import auto_nu_scale as scaled  # the quadratic with val_loss times a scale
from bilevel.estimators.fobmaml import eps_nu

SOLVER = bilevel.solvers.GD(lr=1 / 11, steps=180)  # converged: errors reach the round-off


def error(problem, h, tasks, reference, nu, scheme):
    return scaled.error(problem, h, tasks, reference, nu, scheme, steps=SOLVER.steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_auto_nu_is_within_10x_of_the_best_nu_whatever_the_val_loss_scale(scale, dtype):
    problem, h, tasks, reference = scaled.setting(scale, dtype)
    for scheme in ("forward", "symmetric", "five-point"):
        auto, auto_nu = error(problem, h, tasks, reference, "auto", scheme)
        # Half decades centred on the true scale 1 / s, not on what auto measured.
        grid = [eps_nu(scheme, dtype) / scale * 10 ** (k / 2) for k in range(-3, 2)]
        best, best_nu = min((error(problem, h, tasks, reference, nu, scheme)[0], nu)
                            for nu in grid)
        assert math.isfinite(auto) and 0.1 <= auto_nu / best_nu <= 10, (
            scheme, auto_nu, best_nu, auto, best)
        assert auto <= 10 * best, (scheme, auto_nu, best_nu, auto, best)


def test_auto_nu_scales_with_val_loss():
    infos = [bilevel.hypergradient(*scaled.setting(scale, torch.float64)[:3], solver=SOLVER)[1]
             for scale in (1.0, 1e3)]
    # S exactly; T up to the round-off of its gradient difference (about 1e-11 here)
    assert infos[0]["nu_scale"] == pytest.approx(1e3 * infos[1]["nu_scale"], rel=1e-9)
    assert infos[0]["nu"] == pytest.approx(1e3 * infos[1]["nu"], rel=1e-9)


def test_a_diverging_perturbed_solve_raises_naming_nu_and_the_scheme():
    problem, h, tasks, _ = scaled.setting(1e4, torch.float32)
    with pytest.raises(bilevel.DivergenceError, match=r"scheme='symmetric'.*nu=.*smaller nu"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, nu="eps", scheme="symmetric")


def test_a_perturbed_solve_whose_val_loss_overflows_raises_though_psi_stays_finite():
    """lam = 0.1, float32, nu = 10: the perturbed solves blow up, psi = lam (theta - phi)
    stays finite but val_loss, quadratic in phi, overflows; before, the task was blamed (a
    NonFiniteTasksError asking to check its data)."""
    problem = scaled.Quadratic(dim=6, kappa=10.0, lam=0.1, n_tasks=3, distinct_val=True,
                               dtype=torch.float32)
    h, tasks = problem.init_hyper(torch.Generator().manual_seed(1)), problem.all_tasks()
    with pytest.raises(bilevel.DivergenceError,
                       match=r"scheme='forward'.*not finite at the stencil point\(s\) nu=10 "
                             r"\(3 of 6 perturbed solves diverged\)"):
        bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=1 / 10.1, steps=60),
                              nu=10.0, scheme="forward")
