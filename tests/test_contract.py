"""The contract every registered estimator keeps, on the quadratic (float64)."""

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_structure

import bilevel
from bilevel.tree import tree_map
from problems.quadratic import Quadratic
from tests.conftest import DEVICES, seeded

SOLVER = bilevel.solvers.GD(lr=1 / 11, steps=20)


def setting(device="cpu", dtype=torch.float64):
    problem = Quadratic(dim=5, kappa=10.0, n_tasks=4, distinct_val=True, dtype=dtype,
                        device=device)
    h = problem.init_hyper(seeded(0))
    h["log_lam"] = {"w": torch.linspace(-1, 1, 5, dtype=dtype, device=device)}
    # A hyperparameter that no loss reads: its hypergradient is zero, but it is returned.
    h["unused"] = {"scale": torch.tensor(2.0, dtype=dtype, device=device)}
    return problem, h, problem.all_tasks()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", bilevel.estimators.names())
def test_result_has_the_keys_shapes_dtype_and_device_of_h(method, dtype, device):
    problem, h, tasks = setting(device, dtype)
    grad, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    assert tree_structure(grad) == tree_structure(h)
    for g, x in zip(tree_leaves(grad), tree_leaves(h), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype and g.device == x.device
        assert torch.isfinite(g).all()
    assert info["method"] == method and info["n_tasks"] == 4 and info["inner_grad_evals"] > 0
    assert info["inner_grad_norm"].shape == (4,) and info["inner_steps"].shape == (4,)
    assert grad["unused"]["scale"] == 0


# With a tolerance the tasks freeze at different steps: masking must not couple them.
MASKED = bilevel.solvers.GD(lr=1 / 11, steps=30, tol=1e-1)


@pytest.mark.parametrize("solver", [SOLVER, MASKED], ids=["fixed-steps", "tol"])
@pytest.mark.parametrize("method", bilevel.estimators.names())
def test_batched_tasks_equal_a_loop_over_tasks(method, solver):
    problem, h, tasks = setting()
    batched, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
    if solver.tol is not None:
        assert len(set(info["inner_steps"].tolist())) > 1
    singles = [bilevel.hypergradient(problem, h, {k: v[i:i + 1] for k, v in tasks.items()},
                                     solver=solver, method=method)[0] for i in range(4)]
    looped = tree_map(lambda *g: torch.stack(g).mean(0), *singles)
    for one, other in zip(tree_leaves(batched), tree_leaves(looped), strict=True):
        torch.testing.assert_close(one, other, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", bilevel.estimators.names())
def test_h_with_autograd_history_is_not_differentiated_through(method):
    problem, h, tasks = setting()
    h = tree_map(lambda t: t.clone().requires_grad_(), h)
    grad, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    # Nothing returned holds a graph, which would keep the inner solves' memory alive.
    returned = [t for t in tree_leaves((grad, info)) if isinstance(t, torch.Tensor)]
    assert all(not t.requires_grad and t.grad_fn is None for t in returned)


@pytest.mark.parametrize("method", bilevel.estimators.names())
def test_runs_under_no_grad_with_the_same_result(method):
    problem, h, tasks = setting()
    grad, _ = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    with torch.no_grad():
        quiet, _ = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)
    for a, b in zip(tree_leaves(grad), tree_leaves(quiet), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", bilevel.estimators.names())
def test_info_reports_the_outer_loss_of_each_task(method):
    """info["val_loss"]: val_loss at each task's inner solution (fo-bmaml: averaged over its
    stencil); with converged solves its mean is F(h) in closed form."""
    problem, h, tasks = setting()
    converged = bilevel.solvers.GD(lr=1 / 11, steps=400)
    _, info = bilevel.hypergradient(problem, h, tasks, solver=converged, method=method)
    assert info["val_loss"].shape == (4,)
    torch.testing.assert_close(info["val_loss"].mean(), problem.outer_loss(h, tasks),
                               rtol=1e-8, atol=0)
