"""nu="auto" (bilevel.estimators.fobmaml.auto_nu: k_p eps^(1/(p+1)) S^(1/(p+1)) T^(p/(p+1)))
is near the best nu, and the scales S and T it reads at the inner init match their closed
forms on the quadratic."""

import pytest
import torch

import bilevel
from bilevel.estimators.fobmaml import auto_nu, problem_scale
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
    scale, curvature = problem_scale(problem, h, tasks)
    assert (scale == 1).all()  # val_loss = train_loss, started at h["theta"]: equal gradients
    steps = torch.tensor([auto_nu(scheme, dtype, s, t) for s, t in zip(
        scale.tolist(), curvature.tolist(), strict=True)], dtype=torch.float64)
    assert info["nu"] == pytest.approx(steps.log().mean().exp().item(), rel=1e-6)  # their mean
    grid = [error(info["nu"] * 10.0**k)[0] for k in (-2, -1, 1, 2)]
    assert auto <= 3 * min(grid), (auto, grid)


@pytest.mark.parametrize("distinct_val", [False, True], ids=["val=train", "distinct val"])
def test_scales_match_their_closed_forms_on_the_quadratic(distinct_val):
    """S = ||A theta + b|| / ||C theta + d|| (the proximal term's gradient is 0 at theta) and
    T = v^T (A + lam) v / v^T C v along v = C theta + d; exact for quadratics, val_loss times
    1000 divides both by 1000."""
    problem = Quadratic(dim=6, kappa=10.0, lam=2.0, n_tasks=3, distinct_val=distinct_val)
    h, tasks = problem.init_hyper(seeded(1)), problem.all_tasks()
    theta = h["theta"]["w"]
    A, b = tasks["A"], tasks["b"]
    C, d = tasks.get("C", A), tasks.get("d", b)
    g, v = A @ theta + b, C @ theta + d
    expected_scale = g.norm(dim=1) / v.norm(dim=1)
    curv_g = torch.einsum("ni,nij,nj->n", v, A, v) + 2.0 * (v * v).sum(1)
    expected_curvature = curv_g / torch.einsum("ni,nij,nj->n", v, C, v)
    scale, curvature = problem_scale(problem, h, tasks)
    torch.testing.assert_close(scale, expected_scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(curvature, expected_curvature, rtol=1e-8, atol=0)

    class Scaled(Quadratic):
        def val_loss(self, phi, h, task):
            return 1000.0 * super().val_loss(phi, h, task)

    scaled = Scaled(dim=6, kappa=10.0, lam=2.0, n_tasks=3, distinct_val=distinct_val)
    scale_s, curvature_s = problem_scale(scaled, h, tasks)
    torch.testing.assert_close(1000.0 * scale_s, scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(1000.0 * curvature_s, curvature, rtol=1e-8, atol=0)


def test_curvature_falls_back_to_the_gradient_scale_and_stays_within_range():
    """A val_loss linear in phi has no curvature: T falls back to S; and T stays within
    CURVATURE_RANGE of S."""
    from bilevel.estimators import fobmaml

    class LinearVal(Quadratic):
        def val_loss(self, phi, h, task):
            return task["b"] @ phi["w"]

    problem = LinearVal(dim=4, kappa=10.0, n_tasks=2)
    h, tasks = problem.init_hyper(seeded(0)), problem.all_tasks()
    scale, curvature = problem_scale(problem, h, tasks)
    assert torch.equal(curvature, scale)

    class FlatVal(Quadratic):  # val curvature 1e-6 of train's: T clamped at 100 S
        def val_loss(self, phi, h, task):
            return 1e-6 * 0.5 * phi["w"] @ task["A"] @ phi["w"] + task["b"] @ phi["w"]

    problem = FlatVal(dim=4, kappa=10.0, n_tasks=2)
    scale, curvature = problem_scale(problem, h, problem.all_tasks())
    torch.testing.assert_close(curvature, fobmaml.CURVATURE_RANGE * scale, rtol=1e-12, atol=0)
