"""Bad values in h and in the task data: an InvalidInputError naming the leaf."""

import pytest
import torch

import bilevel
from tests.faults.fault_problems import SOLVER, EmptyInitHyper, IntegerInitHyper, setting


def run(problem, h, tasks, **options):
    return bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fomaml", **options)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_hyperparameter_is_named(value):
    problem, h, tasks = setting()
    h["theta"]["w"][1] = value
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"h\['theta'\]\['w'\] must be finite, got 1 NaN/Inf value\(s\) of 3 "
                             r"\(first at index \(1,\)"):
        run(problem, h, tasks)


def test_non_finite_scalar_hyperparameter_is_named():
    problem, h, tasks = setting()
    h["log_lam"] = torch.tensor(float("nan"), dtype=torch.float64)
    with pytest.raises(bilevel.InvalidInputError, match=r"h\['log_lam'\] must be finite"):
        run(problem, h, tasks)


@pytest.mark.parametrize("leaf", ["x", "y", "xq", "c"])
def test_non_finite_task_data_is_named(leaf):
    problem, h, tasks = setting()
    tasks[leaf] = tasks[leaf].clone()
    tasks[leaf].view(-1)[0] = float("nan")
    with pytest.raises(bilevel.InvalidInputError, match=rf"tasks\['{leaf}'\] must be finite"):
        run(problem, h, tasks)


def test_integer_task_leaves_are_allowed():
    problem, h, tasks = setting()
    assert tasks["label"].dtype == torch.int64
    grad, info = run(problem, h, tasks)
    assert torch.isfinite(grad["theta"]["w"]).all() and info["non_finite_tasks"] == ()


def test_float32_task_data_with_float64_h_is_named():
    problem, h, tasks = setting()
    tasks["x"] = tasks["x"].float()
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"tasks\['x'\] has dtype torch.float32, but h is torch.float64"):
        run(problem, h, tasks)


def test_mixed_dtypes_within_h_are_listed():
    problem, h, tasks = setting()
    h["log_lam"] = h["log_lam"].float()
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"h: every leaf must have one floating dtype, got "
                             r"h\['theta'\]\['w'\]: torch.float64, h\['log_lam'\]: torch.float32"):
        run(problem, h, tasks)


def test_zero_tasks():
    problem, h, tasks = setting()
    empty = {k: v[:0] for k, v in tasks.items()}
    with pytest.raises(bilevel.InvalidInputError,
                       match="tasks must hold at least one task, got a batch with leading "
                             "dimension 0"):
        run(problem, h, empty)


def test_unknown_on_non_finite():
    problem, h, tasks = setting()
    with pytest.raises(bilevel.InvalidInputError,
                       match="on_non_finite must be one of 'raise', 'drop', 'keep', got 'skip'"):
        run(problem, h, tasks, on_non_finite="skip")


@pytest.mark.parametrize("problem, message", [
    (IntegerInitHyper(), r"IntegerInitHyper.init_hyper\(\)\['theta'\]\['w'\] must be a "
                         r"floating-point tensor, got tensor\(\[0, 0, 0\]\)"),
    (EmptyInitHyper(), r"EmptyInitHyper.init_hyper\(\) must be a non-empty dict of tensors, "
                       r"got dict"),
])
def test_init_hyper_of_integers_or_empty(problem, message):
    with pytest.raises(bilevel.InvalidInputError, match=message):
        bilevel.meta_train(problem, solver=SOLVER, method="fomaml", steps=1, tasks_per_step=2,
                           progress=False)


def test_keep_leaves_non_finite_input_to_the_caller():
    """on_non_finite="keep" (meta_train's: it stops with a DivergenceError) checks dtypes
    but not NaN/Inf, and reports the tasks that came out non-finite."""
    problem, h, tasks = setting()
    tasks["y"] = tasks["y"].clone()
    tasks["y"][3] = float("nan")
    grad, info = run(problem, h, tasks, on_non_finite="keep")
    assert torch.isnan(grad["theta"]["w"]).all() and info["non_finite_tasks"] == (3,)
