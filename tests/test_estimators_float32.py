"""Every registered estimator runs in float32 and float64 on the guide's problem, whose losses
multiply by a Python number (`0.5 * ...`), and returns h's dtype (issue 10 item 8:
fo-bmaml-jvp raised "expected scalar type Float but found Double" in float32)."""

import pytest
import torch

import bilevel
from bilevel.estimators import estimators
from bilevel.tree import tree_leaves


class Guide(bilevel.BilevelProblem):
    def __init__(self, dtype):
        self.dtype = dtype

    def init_hyper(self, generator=None):
        return {"theta": {"w": torch.zeros(5, dtype=self.dtype)},
                "log_lam": torch.tensor(0.0, dtype=self.dtype)}

    def sample_tasks(self, n, generator=None):
        x = torch.randn(n, 20, 5, generator=generator, dtype=self.dtype)
        y = x.sum(-1)
        return {"x": x[:, :10], "y": y[:, :10], "xq": x[:, 10:], "yq": y[:, 10:]}

    def train_loss(self, phi, h, task):
        return 0.5 * ((task["x"] @ phi["w"] - task["y"]) ** 2).mean()

    def val_loss(self, phi, h, task):
        return 0.5 * ((task["xq"] @ phi["w"] - task["yq"]) ** 2).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", estimators.names())
def test_every_estimator_runs_and_returns_h_dtype(method, dtype):
    problem = Guide(dtype)
    h = problem.init_hyper()
    tasks = problem.sample_tasks(4, torch.Generator().manual_seed(0))
    grad, _ = bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.1, steps=20),
                                    method=method)
    leaves = tree_leaves(grad)
    assert all(leaf.dtype == dtype and torch.isfinite(leaf).all() for leaf in leaves)


def test_fobmaml_jvp_float32_agrees_with_float64():
    solver = bilevel.solvers.GD(lr=0.1, steps=20)
    tasks = Guide(torch.float64).sample_tasks(4, torch.Generator().manual_seed(0))
    results = [bilevel.hypergradient(
        Guide(dtype), Guide(dtype).init_hyper(), {k: v.to(dtype) for k, v in tasks.items()},
        solver=solver, method="fo-bmaml-jvp")[0] for dtype in (torch.float32, torch.float64)]
    for low, high in zip(tree_leaves(results[0]), tree_leaves(results[1]), strict=True):
        torch.testing.assert_close(low.double(), high, rtol=1e-4, atol=1e-5)
