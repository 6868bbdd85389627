"""Mistakes in a problem's own code: an InvalidInputError naming the method, checked once
on one task before batching, and cached per problem."""

import warnings

import pytest
import torch

import bilevel
from tests.faults import fault_problems as fp
from tests.faults.fault_problems import SOLVER, setting


def run(problem, method="fomaml"):
    problem, h, tasks = setting(problem)
    return bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method=method)


@pytest.mark.parametrize("problem, message", [
    (fp.VectorTrainLoss(), r"problem.train_loss must return a scalar tensor \(shape \(\)\), the "
                           r"loss of one task; got a tensor of shape \(4,\). Reduce it"),
    (fp.VectorValLoss(), r"problem.val_loss must return a scalar tensor .* got a tensor of "
                         r"shape \(4,\)"),
    (fp.FloatTrainLoss(), r"problem.train_loss must return a scalar tensor .* got float 1.0"),
    (fp.InPlaceOnTask(), r"train_loss modified tasks\[task\]\['y'\] in place .* write "
                         r"x = x \+ \.\.\."),
    (fp.InPlaceOnPhi(), r"train_loss modified phi\['w'\] in place"),
    (fp.InPlaceOnH(), r"val_loss modified h\['log_lam'\] in place"),
    (fp.IfOnTensor(), r"problem.val_loss uses a tensor's value in Python control flow .* "
                      r"use torch.where"),
    (fp.ItemInLoss(), r"problem.train_loss calls .item\(\) .* keep the value a tensor"),
    (fp.PerCoordinateLam(), r"lam\(h\)\['w'\] has shape \(4,\), but phi\['w'\] has shape "
                            r"\(3,\)"),
    (fp.InitNotADict(), r"problem.inner_init must return a non-empty dict of tensors \(phi\)"),
])
def test_mistake_is_named(problem, message):
    with pytest.raises(bilevel.InvalidInputError, match=message):
        run(problem)


def test_an_unrecognised_error_is_re_raised_untouched():
    with pytest.raises(KeyError, match="missing"):
        run(fp.KeyErrorInLoss())


def test_the_check_runs_once_per_problem_and_shapes():
    problem = fp.CountingRidge()
    run(problem)
    first = problem.calls
    run(problem)
    second = problem.calls - first
    assert second < first  # the second call skipped the check
    _, h, tasks = setting(problem, n=3)  # another batch size, the same shapes per task
    bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fomaml")
    assert problem.calls - first - second == second
    other = fp.CountingRidge()  # another problem: checked again
    run(other)
    assert other.calls == first


@pytest.mark.parametrize("method", ["fo-bmaml", "fo-bmaml-jvp", "imaml", "exact"])
def test_implicit_estimator_without_regulariser_warns_once(method):
    problem = fp.Unregularized()
    with pytest.warns(UserWarning, match=rf"method '{method}' differentiates the inner solution "
                                         r"implicitly, but the problem has regularization='none'"):
        grad, _ = run(problem, method)
    assert (grad["theta"]["w"] == 0).all()  # the zero gradient that the warning explains
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(problem, method)  # once per problem


@pytest.mark.parametrize("method", ["fomaml", "maml", "reptile"])
def test_estimator_following_the_solver_does_not_warn(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad, _ = run(fp.Unregularized(), method)
    assert (grad["theta"]["w"] != 0).any()


class PerRowLam(fp.Ridge):
    """Per-coordinate lam that broadcasts to phi (shape (1,) against (3,)): allowed."""

    def init_hyper(self, generator=None):
        w = torch.zeros(1, dtype=torch.float64)
        return super().init_hyper() | {"log_lam": {"w": w}}


def test_a_lam_that_broadcasts_to_phi_is_allowed():
    grad, _ = run(PerRowLam(), "imaml")
    assert torch.isfinite(grad["log_lam"]["w"]).all() and grad["log_lam"]["w"].shape == (1,)
