"""nu="auto" (S eps^(1/(p+1)), S = 1 here; bilevel.estimators.fobmaml.auto_nu) is near the
best nu."""

import pytest
import torch

import bilevel
from bilevel.estimators.fobmaml import auto_nu
from bilevel.tree import relative_error
from problems.quadratic import Quadratic
from tests.conftest import seeded


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scheme", ["forward", "symmetric", "five-point"])
def test_auto_nu_is_within_3x_of_the_best_nu_over_four_decades(dtype, scheme):
    problem = Quadratic(dim=6, kappa=10.0, lam=1.0, n_tasks=3, dtype=dtype)
    h, tasks = problem.init_hyper(seeded(1)), problem.all_tasks()
    reference = Quadratic(dim=6, kappa=10.0, lam=1.0, n_tasks=3).meta_gradient(
        {"theta": {"w": h["theta"]["w"].double()}, "log_lam": h["log_lam"].double()},
        {k: v.double() for k, v in tasks.items()})
    solver = bilevel.solvers.GD(lr=1 / 11, steps=300)

    def error(nu):
        try:
            grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=nu,
                                               scheme=scheme, on_non_finite="keep")
        except bilevel.DivergenceError:  # nu too large: the perturbed solves blew up
            return float("inf"), None
        return relative_error({k: torch.as_tensor(v).double() if not isinstance(v, dict) else
                               {"w": v["w"].double()} for k, v in grad.items()}, reference), info

    auto, info = error("auto")
    assert info["nu_scale"] == 1.0  # val_loss = train_loss, started at h["theta"]
    assert info["nu"] == auto_nu(scheme, dtype)
    grid = [error(auto_nu(scheme, dtype) * 10.0**k)[0] for k in (-2, -1, 1, 2)]
    assert auto <= 3 * min(grid), (auto, grid)
