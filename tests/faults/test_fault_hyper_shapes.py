"""h that does not fit the problem, and task data of the wrong kind: an InvalidInputError
naming the leaf and what the problem expects (issue 10, class 4), never a torch traceback
or a result computed on the wrong hyperparameters."""

import pytest
import torch

import bilevel
from bilevel.tree import tree_map
from tests.faults import fault_problems as fp
from tests.faults.fault_problems import DIM, SOLVER, setting


def run(problem, h, tasks, method="fomaml"):
    return bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)


def zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float64)


@pytest.mark.parametrize("change, message", [
    ({"theta": {"w": zeros(DIM + 2)}},
     r"h\['theta'\]\['w'\] has shape \(5,\), but the problem expects a tensor of shape \(3,\) "
     r"\(as Ridge.init_hyper\(\) gives\)"),
    ({"theta": {"w": zeros(DIM, 1)}},
     r"h\['theta'\]\['w'\] has shape \(3, 1\), but the problem expects a tensor of shape \(3,\)"),
    ({"theta": zeros(DIM)},
     r"h\['theta'\] is a tensor of shape \(3,\), but the problem expects a dict with keys "
     r"\['w'\]"),
    ({"theta": {"w": {"a": zeros(DIM)}}},
     r"h\['theta'\]\['w'\] is a dict with keys \['a'\], but the problem expects a tensor of "
     r"shape \(3,\)"),
    ({"theta": {"w": zeros(DIM), "v": zeros(1)}},
     r"h\['theta'\]\['v'\] is not a hyperparameter of this problem \(Ridge.init_hyper\(\) has "
     r"keys \['w'\] there\): remove it"),
    ({"weights": zeros(4)},
     r"h\['weights'\] is not a hyperparameter of this problem .*keys \['log_lam', 'theta'\]"),
    ({"theta": {}},
     r"h\['theta'\] has no key 'w': the problem expects h\['theta'\]\['w'\] \(a tensor of "
     r"shape \(3,\), as Ridge.init_hyper\(\) gives\); h\['theta'\] has keys \[\]"),
], ids=["longer", "extra-dim", "tensor-for-dict", "dict-for-tensor", "extra-nested-key",
        "extra-key", "missing-nested-key"])
def test_h_that_does_not_fit_the_problem_is_named(change, message):
    problem, h, tasks = setting()
    with pytest.raises(bilevel.InvalidInputError, match=message):
        run(problem, h | change, tasks)


def test_a_missing_top_level_key_is_named():
    problem, h, tasks = setting()
    del h["log_lam"]
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"h has no key 'log_lam': the problem expects h\['log_lam'\] "
                             r"\(a tensor of shape \(\)"):
        run(problem, h, tasks)


class FixedLam(fp.Ridge):
    """lam fixed at 1 (not learned): h has no "log_lam"."""

    def init_hyper(self, generator=None):
        return {"theta": super().init_hyper()["theta"]}

    def lam(self, h):
        return torch.tensor(1.0, dtype=torch.float64)


def test_log_lam_passed_to_a_problem_whose_lam_is_fixed_is_refused():
    """It would be ignored: its hypergradient a silent zero."""
    problem, h, tasks = setting(FixedLam())
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"h\['log_lam'\] is not a hyperparameter of this problem"):
        run(problem, h | {"log_lam": zeros(())}, tasks)
    grad, _ = run(problem, h, tasks)  # without it: accepted
    assert set(grad) == {"theta"}


@pytest.mark.parametrize("method", ["fomaml", "fo-bmaml", "exact"])
def test_per_coordinate_log_lam_is_accepted_with_the_default_lam(method):
    """The default lam reads log_lam as a scalar or shaped like phi: both are the problem's
    hyperparameters. With every coordinate equal, the per-coordinate gradient sums to the
    scalar one (d/dlog_lam = sum_j d/dlog_lam_j)."""
    problem, h, tasks = setting()
    scalar, _ = run(problem, h, tasks, method)
    per_coordinate, _ = run(problem, h | {"log_lam": {"w": zeros(DIM)}}, tasks, method)
    assert per_coordinate["log_lam"]["w"].shape == (DIM,)
    torch.testing.assert_close(per_coordinate["log_lam"]["w"].sum(), scalar["log_lam"],
                               rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(per_coordinate["theta"], scalar["theta"], rtol=1e-7, atol=1e-12)


class CountingInit(fp.Ridge):
    def __init__(self):
        self.inits = 0

    def init_hyper(self, generator=None):
        self.inits += 1
        torch.randn(3)  # the global generator: must be left as it was
        return super().init_hyper(generator)


def test_init_hyper_is_called_once_per_problem_and_leaves_the_global_rng_alone():
    problem = CountingInit()
    _, h, tasks = setting(problem)
    problem.inits = 0
    state = torch.get_rng_state()
    run(problem, h, tasks)
    run(problem, h, {k: v[:2] for k, v in tasks.items()})  # another batch: no new call
    run(problem, h | {"log_lam": {"w": zeros(DIM)}}, tasks)  # another form of h: neither
    assert problem.inits == 1
    assert torch.equal(torch.get_rng_state(), state)


def test_h_in_another_dtype_than_init_hyper_fits():
    """Shapes are compared, not dtypes: float32 h and tasks on a float64 problem run, and
    agree with float64."""
    problem, h, tasks = setting()
    low, _ = run(problem, tree_map(torch.Tensor.float, h),
                 {k: v.float() if v.is_floating_point() else v for k, v in tasks.items()})
    high, _ = run(problem, h, tasks)
    assert low["theta"]["w"].dtype == torch.float32
    torch.testing.assert_close(low["theta"]["w"].double(), high["theta"]["w"], rtol=1e-4,
                               atol=1e-6)


def test_integer_task_data_in_a_loss_is_named():
    problem, h, tasks = setting()
    tasks["x"] = tasks["x"].round().long()
    with pytest.raises(bilevel.InvalidInputError,
                       match=r"problem.train_loss mixes dtypes \(torch said: .*\): integer task "
                             r"data \(tasks\['x'\], tasks\['label'\]\) in floating-point "
                             r"arithmetic\? .*convert it with .to\(dtype\)"):
        run(problem, h, tasks)
