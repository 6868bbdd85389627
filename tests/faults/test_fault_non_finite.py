"""Tasks whose loss or gradient is not finite: reported in info, raised by default,
dropped on request, and never averaged in silently."""

import pytest
import torch

import bilevel
from bilevel.estimators import estimators
from tests.faults.fault_problems import SOLVER, Ridge, poisoned, setting

METHODS = sorted(estimators.names())


def run(problem, h, tasks, method="fomaml", **options):
    return bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)


@pytest.mark.parametrize("method", METHODS)
def test_one_nan_task_raises_naming_it(method):
    problem, h, tasks = setting()
    with pytest.raises(bilevel.NonFiniteTasksError,
                       match=r"tasks \[2\] of 4 gave a non-finite loss or hypergradient "
                             r"\(val_loss \{2: nan\}\).*on_non_finite='drop'") as error:
        run(problem, h, poisoned(tasks, 2), method=method)
    assert error.value.tasks == (2,)


@pytest.mark.parametrize("method", ["fomaml", "fo-bmaml", "imaml"])
def test_drop_averages_over_the_finite_tasks(method):
    problem, h, tasks = setting()
    grad, info = run(problem, h, poisoned(tasks, 1, 3), method=method, on_non_finite="drop")
    finite = {k: v[[0, 2]] for k, v in tasks.items()}
    expected, alone = run(problem, h, finite, method=method)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    assert info["non_finite_tasks"] == (1, 3) and info["n_dropped"] == 2
    assert info["n_tasks"] == 2 and torch.isfinite(info["val_loss"]).all()
    # both calls are counted: the one that found the NaNs and the one over the finite tasks
    assert info["inner_grad_evals"] == alone["inner_grad_evals"] * 3


def test_drop_of_every_task_raises():
    problem, h, tasks = setting()
    with pytest.raises(bilevel.NonFiniteTasksError,
                       match=r"tasks \[0, 1, 2, 3\] of 4 .*every task is non-finite"):
        run(problem, h, poisoned(tasks, 0, 1, 2, 3), on_non_finite="drop")


def test_keep_reports_and_returns_the_non_finite_average():
    problem, h, tasks = setting()
    grad, info = run(problem, h, poisoned(tasks, 0), on_non_finite="keep")
    assert torch.isnan(grad["theta"]["w"]).all()
    assert info["non_finite_tasks"] == (0,) and info["n_dropped"] == 0


def test_finite_tasks_report_none():
    problem, h, tasks = setting()
    _, info = run(problem, h, tasks)
    assert info["non_finite_tasks"] == () and info["n_dropped"] == 0


class NaNGradientOnly(Ridge):
    """val_loss + sqrt(0 * sum(w) + c): with c = 0 the loss is finite, its gradient NaN."""

    def val_loss(self, phi, h, task):
        mse = ((task["xq"] @ phi["w"] - task["yq"]) ** 2).mean()
        return mse + torch.sqrt(0.0 * phi["w"].sum() + task["c"] - 1.0)


def test_a_gradient_that_alone_is_nan_is_found_per_task():
    problem, h, tasks = setting(NaNGradientOnly())
    c = tasks["c"].clone()
    c[1:] = 2.0  # task 0: sqrt(0) (NaN gradient); the others sqrt(1)
    tasks = tasks | {"c": c}
    with pytest.raises(bilevel.NonFiniteTasksError, match=r"tasks \[0\] of 4") as error:
        run(problem, h, tasks)
    assert error.value.tasks == (0,)
    grad, info = run(problem, h, tasks, on_non_finite="drop")
    assert torch.isfinite(grad["theta"]["w"]).all() and info["non_finite_tasks"] == (0,)


class PoisonedSampling(Ridge):
    def sample_tasks(self, n, generator=None):
        return poisoned(super().sample_tasks(n, generator), 0)


def test_meta_train_still_stops_with_a_divergence_error():
    with pytest.raises(bilevel.DivergenceError, match="diverged at step 1"):
        bilevel.meta_train(PoisonedSampling(), solver=SOLVER, method="fomaml", steps=2,
                           tasks_per_step=2, progress=False)
