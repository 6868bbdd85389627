"""nu="auto" is scaled by the problem (bilevel.estimators.fobmaml.problem_scale): its nu is
within 10x of the best nu of a half-decade grid with val_loss 1e-4 and 1e4 times the training loss,
every scheme, float32 and float64 (the full table: benchmarks/auto_nu_scale.py); a nu whose
perturbed solves diverge raises instead of returning NaN."""

import math

import pytest
import torch

import bilevel
from bilevel.estimators.fobmaml import eps_nu
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic

OPTIONS = {"dim": 6, "kappa": 10.0, "lam": 1.0, "n_tasks": 3, "distinct_val": True}
SOLVER = bilevel.solvers.GD(lr=1 / 11, steps=120)


class ScaledQuadratic(Quadratic):
    def __init__(self, scale, **options):
        super().__init__(**options)
        self.scale = scale

    def val_loss(self, phi, h, task):
        return self.scale * super().val_loss(phi, h, task)


def setting(scale, dtype):
    problem = ScaledQuadratic(scale, dtype=dtype, **OPTIONS)
    h, tasks = problem.init_hyper(torch.Generator().manual_seed(1)), problem.all_tasks()
    reference = tree_map(lambda g: scale * g, Quadratic(**OPTIONS).meta_gradient(
        tree_map(torch.Tensor.double, h), tree_map(torch.Tensor.double, tasks)))
    return problem, h, tasks, reference


def error(problem, h, tasks, reference, nu, scheme):
    """(relative error, the nu used); inf when the perturbed solves diverge."""
    try:
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, nu=nu,
                                           scheme=scheme)
    except bilevel.DivergenceError:
        return math.inf, None
    value = float(relative_error(tree_map(torch.Tensor.double, grad), reference))
    return (value if math.isfinite(value) else math.inf), info["nu"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_auto_nu_is_within_10x_of_the_best_nu_whatever_the_val_loss_scale(scale, dtype):
    problem, h, tasks, reference = setting(scale, dtype)
    for scheme in ("forward", "symmetric", "five-point"):
        auto, auto_nu = error(problem, h, tasks, reference, "auto", scheme)
        # Half decades centred on the true scale 1 / s, not on what auto measured.
        grid = [eps_nu(scheme, dtype) / scale * 10 ** (k / 2) for k in range(-3, 2)]
        best, best_nu = min(error(problem, h, tasks, reference, nu, scheme) for nu in grid)
        assert math.isfinite(auto) and 0.1 <= auto_nu / best_nu <= 10, (
            scheme, auto_nu, best_nu, auto, best)


def test_auto_nu_scales_with_val_loss():
    infos = [bilevel.hypergradient(*setting(scale, torch.float64)[:3], solver=SOLVER)[1]
             for scale in (1.0, 1e3)]
    assert infos[0]["nu_scale"] == pytest.approx(1e3 * infos[1]["nu_scale"], rel=1e-12)
    assert infos[0]["nu"] == pytest.approx(1e3 * infos[1]["nu"], rel=1e-12)


def test_a_diverging_perturbed_solve_raises_naming_nu_and_the_scheme():
    problem, h, tasks, _ = setting(1e4, torch.float32)
    with pytest.raises(bilevel.DivergenceError, match=r"scheme='symmetric'.*nu=.*smaller nu"):
        bilevel.hypergradient(problem, h, tasks, solver=SOLVER, nu="eps", scheme="symmetric")
