"""FO-B-MAML beyond the quadratic: a shared decoder (direct term) and a tiny MLP, float64."""

import pytest
import torch

import bilevel
from bilevel.tree import relative_error, tree_dot, tree_map
from tests.conftest import DEVICES, seeded
from tests.toy_problems import SharedDecoderRegression, TinyMLPRegression

NESTEROV = bilevel.solvers.Nesterov(lr=0.5, steps=400, momentum=0.6)


def exact_outer_loss(problem, h, tasks):
    """F(h) with the inner problem solved in closed form."""
    phi = torch.func.vmap(problem.solution, in_dims=(None, 0))(h, tasks)
    return torch.func.vmap(problem.val_loss, in_dims=(0, None, 0))(phi, h, tasks).mean()


@pytest.mark.parametrize("device", DEVICES)
def test_shared_decoder_gets_the_direct_term(device):
    problem = SharedDecoderRegression(device=device)
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(5, seeded(1))
    exact, _ = bilevel.hypergradient(problem, h, tasks, solver=NESTEROV, method="exact")
    fobmaml, info = bilevel.hypergradient(problem, h, tasks, solver=NESTEROV, nu=1e-5)
    assert info["inner_grad_norm"].max() < 1e-12
    assert relative_error(fobmaml, exact) < 1e-7
    # Central differences of the whole outer objective along random directions.
    for seed in range(3):
        generator = seeded(10 + seed)
        direction = tree_map(
            lambda t, g=generator: torch.randn(t.shape, generator=g, dtype=t.dtype).to(device), h)
        step = 1e-5

        def shifted(sign, direction=direction, step=step):
            return tree_map(lambda a, d: a + sign * step * d, h, direction)

        slope = (exact_outer_loss(problem, shifted(1), tasks)
                 - exact_outer_loss(problem, shifted(-1), tasks)) / (2 * step)
        assert torch.isclose(tree_dot(fobmaml, direction), slope, rtol=1e-6, atol=0)
    # The direct term d_h val_loss(phi*, h) is a large part of the decoder's hypergradient,
    # so an engine that dropped it would fail the checks above.
    phi = torch.func.vmap(problem.solution, in_dims=(None, 0))(h, tasks)
    direct = torch.func.grad(lambda h: torch.func.vmap(problem.val_loss, in_dims=(0, None, 0))(
        phi, h, tasks).mean())(h)
    assert direct["decoder"]["D"].norm() > 0.1 * exact["decoder"]["D"].norm()

def test_tiny_mlp_symmetric_matches_exact():
    problem = TinyMLPRegression()
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(4, seeded(1))
    solver = bilevel.solvers.Nesterov(lr=0.1, steps=600, momentum=0.7)
    exact, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method="exact")
    assert info["inner_grad_norm"].max() < 1e-12  # converged: exact is the reference
    fobmaml, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=1e-4,
                                       scheme="symmetric")
    assert relative_error(fobmaml, exact) < 1e-5
    # theta and log_lam both learned, neither trivially zero
    assert fobmaml["theta"]["w1"].norm() > 1e-3 and fobmaml["log_lam"].abs() > 1e-6
