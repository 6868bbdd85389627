"""The error hierarchy users catch (issue 10, class 9): one root, BilevelError; invalid input,
divergence, non-finite tasks and run-directory conflicts each their own class under it;
only invalid input is also a ValueError. Each is exported from `bilevel`, documented in
bilevel.errors, and raised by a real fault of its kind."""

import inspect

import pytest

import bilevel
from bilevel import errors
from bilevel.estimators.fobmaml import StencilDivergenceError
from tests.faults.fault_problems import SOLVER, poisoned, setting
from tests.test_training import train

KINDS = {
    "InvalidInputError": (ValueError,),
    "DivergenceError": (),
    "NonFiniteTasksError": (),
    "RunDirectoryError": (),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_is_its_own_class_under_the_root(name):
    kind = getattr(bilevel, name)
    assert kind is getattr(errors, name) and name in bilevel.__all__
    assert issubclass(kind, bilevel.BilevelError)
    assert issubclass(kind, ValueError) == (ValueError in KINDS[name])
    others = [getattr(bilevel, other) for other in KINDS if other != name]
    assert not any(issubclass(kind, other) or issubclass(other, kind) for other in others)
    assert name in inspect.getdoc(errors)  # the module's table documents it


def test_the_root_is_no_builtin_error_kind():
    assert bilevel.BilevelError.__bases__ == (Exception,)
    assert issubclass(StencilDivergenceError, bilevel.DivergenceError)


def fo_bmaml_with_a_huge_nu():
    problem, h, tasks = setting()
    bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.1, steps=60),
                          nu=1e6, scheme="forward")


def a_nan_task():
    problem, h, tasks = setting()
    bilevel.hypergradient(problem, h, poisoned(tasks, 1), solver=SOLVER, method="fomaml")


def a_negative_nu():
    problem, h, tasks = setting()
    bilevel.hypergradient(problem, h, tasks, solver=SOLVER, nu=-1.0)


@pytest.mark.parametrize("fault, kind, message", [
    (a_negative_nu, "InvalidInputError", "nu must be a finite number > 0, got -1.0"),
    (fo_bmaml_with_a_huge_nu, "DivergenceError", "perturbed solves diverged"),
    (a_nan_task, "NonFiniteTasksError", r"tasks \[1\] of 4"),
], ids=["invalid-input", "divergence", "non-finite-task"])
def test_a_real_fault_raises_its_kind_and_the_root_catches_it(fault, kind, message):
    with pytest.raises(getattr(bilevel, kind), match=message) as error:
        fault()
    others = [getattr(bilevel, other) for other in KINDS if other != kind]
    assert isinstance(error.value, bilevel.BilevelError)
    assert not isinstance(error.value, tuple(others))


def test_a_run_directory_conflict_raises_its_kind(tmp_path):
    train(out=tmp_path, steps=1)
    with pytest.raises(bilevel.RunDirectoryError, match="already holds a run") as error:
        train(out=tmp_path, steps=1)
    assert isinstance(error.value, bilevel.BilevelError)
    assert not isinstance(error.value, ValueError | bilevel.InvalidInputError)


def test_divergence_carries_its_step_and_quantity():
    error = bilevel.DivergenceError(7, "the loss", problem="blew up")
    assert (error.step, error.quantity) == (7, "the loss")
    assert str(error) == "diverged at step 7: the loss blew up"
    with pytest.raises(StencilDivergenceError) as stencil:
        fo_bmaml_with_a_huge_nu()
    assert stencil.value.step is None and stencil.value.quantity == "psi"


def test_non_finite_tasks_carries_their_indices():
    with pytest.raises(bilevel.NonFiniteTasksError) as error:
        a_nan_task()
    assert error.value.tasks == (1,)
