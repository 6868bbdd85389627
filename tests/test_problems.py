"""The concrete problems of problems/: FO-B-MAML against exact (and closed forms), task
sampling, and a few outer steps of gradient descent that lower F(h). Small instances,
float64, inner problems strongly convex and solved to gradient norms near round-off."""

from itertools import pairwise

import pytest
import torch
from torch.func import vmap
from torch.utils._pytree import tree_leaves, tree_structure

import bilevel
from bilevel.tree import relative_error, tree_map
from problems.digits import Digits
from problems.hypercleaning import HyperCleaning
from problems.logreg import LogReg
from problems.ridge import Ridge
from problems.shared_decoder import SharedDecoder
from problems.sinusoid import Sinusoid
from tests.conftest import seeded

F64 = torch.float64


def nesterov(lr, steps, momentum=0.8):
    return bilevel.solvers.Nesterov(lr=lr, steps=steps, momentum=momentum)


# name -> (problem, solver, tasks in a batch, outer GD step): each inner problem is strongly
# convex at these settings and the solver reaches |grad g| < 1e-10.
SETTINGS = {
    "sinusoid": lambda: (Sinusoid(shots=5, queries=5, hidden=(8, 8), lam=30.0, activation="tanh",
                                  dtype=F64),
                         nesterov(2e-3, 200), 3, 0.05),
    "sinusoid-fixed-lam": lambda: (
        Sinusoid(shots=5, queries=5, hidden=(8, 8), lam=30.0, learn_lam=False,
                 activation="tanh", dtype=F64),
        nesterov(2e-3, 400), 2, 0.01),
    "shared_decoder": lambda: (
        SharedDecoder(code=3, shots=4, queries=6, hidden=8, lam=0.5, dtype=F64),
        nesterov(1 / 6.5, 150), 4, 0.5),
    "digits": lambda: (Digits(ways=3, shots=2, queries=4, hidden=(), lam=1.0, dtype=F64),
                       nesterov(0.1, 150), 3, 1.0),
    "ridge": lambda: (Ridge(n_train=30, n_val=30, features=6, lam=0.1), nesterov(0.2, 200), 1,
                      1.0),
    "logreg": lambda: (LogReg(n_train=60, n_val=60, lam=0.1, dtype=F64), nesterov(0.3, 200), 1,
                       3.0),
    "logreg-per-feature": lambda: (
        LogReg(n_train=60, n_val=60, per_feature=True, lam=0.1, dtype=F64),
        nesterov(0.3, 200), 1, 30.0),
    "hypercleaning": lambda: (
        HyperCleaning(n_train=60, n_val=60, corruption=0.3, l2=0.1, dtype=F64),
        nesterov(0.3, 200), 1, 300.0),
}


def strictly_decreasing(values) -> bool:
    return all(after < before for before, after in pairwise(values))


def setting(name):
    problem, solver, n_tasks, outer_lr = SETTINGS[name]()
    return problem, problem.init_hyper(seeded(0)), problem.sample_tasks(n_tasks, seeded(1)), \
        solver, outer_lr


@pytest.mark.parametrize("name", SETTINGS)
def test_fobmaml_matches_exact(name):
    problem, h, tasks, solver, _ = setting(name)
    exact, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method="exact")
    assert info["inner_grad_norm"].max() < 1e-10
    fobmaml, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml",
                                       nu=1e-5, scheme="symmetric")
    assert tree_structure(fobmaml) == tree_structure(h)
    for g, x in zip(tree_leaves(fobmaml), tree_leaves(h), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype
    for key in h:  # key by key: a small block (log_lam) must be right too
        assert relative_error(fobmaml[key], exact[key]) < 1e-5, key
        assert torch.cat([g.reshape(-1) for g in tree_leaves(exact[key])]).norm() > 1e-6, key


@pytest.mark.parametrize("name", ["sinusoid", "shared_decoder", "digits", "ridge",
                                  "logreg-per-feature", "hypercleaning"])
def test_outer_gradient_descent_lowers_the_outer_loss(name):
    problem, h, tasks, solver, outer_lr = setting(name)
    losses = [bilevel.outer_loss(problem, h, tasks, solver)]
    for _ in range(3):
        grad, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml")
        h = tree_map(lambda x, g: x - outer_lr * g, h, grad)
        losses.append(bilevel.outer_loss(problem, h, tasks, solver))
    assert strictly_decreasing(losses), losses
    assert losses[-1] < 0.97 * losses[0], losses


# Closed forms ------------------------------------------------------------------------


def test_ridge_closed_form_hypergradient():
    problem = Ridge(n_train=40, n_val=30, features=8)
    h = {"log_lam": {"w": torch.linspace(-3, 1, 8, dtype=F64)}}
    tasks = problem.sample_tasks(2)
    closed = problem.meta_gradient(h, tasks)
    autograd = torch.func.grad(problem.outer_loss)(h, tasks)
    assert relative_error(closed, autograd) < 1e-12
    lipschitz = problem.smoothness(h)
    solver = nesterov(1 / lipschitz, 300)
    exact, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method="exact")
    assert info["inner_grad_norm"].max() < 1e-12
    assert relative_error(exact, closed) < 1e-8
    fobmaml, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml")
    assert relative_error(fobmaml, closed) < 1e-6
    assert torch.isclose(bilevel.outer_loss(problem, h, tasks, solver),
                         problem.outer_loss(h, tasks), rtol=1e-12)


def test_shared_decoder_solver_reaches_the_closed_form_code():
    problem, h, tasks, solver, _ = setting("shared_decoder")
    solved, _ = vmap(lambda task: bilevel.solve_inner(problem, h, task, solver))(tasks)
    closed = vmap(problem.solution, in_dims=(None, 0))(h, tasks)
    torch.testing.assert_close(solved["z"], closed["z"], rtol=1e-9, atol=0)


def test_maml_form_has_no_implicit_gradient_but_unrolled_gradient_descends():
    problem = Sinusoid(shots=5, queries=5, hidden=(8, 8), form="maml", dtype=F64)
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(4, seeded(1))
    assert set(h) == {"theta"}
    solver = bilevel.solvers.GD(lr=1e-3, steps=5)
    implicit, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml")
    assert all((g == 0).all() for g in tree_leaves(implicit))

    def unrolled_loss(h):  # MAML (eq. 1): differentiate through the solver's steps
        return bilevel.outer_loss(problem, h, tasks, solver)

    losses = [unrolled_loss(h)]
    for _ in range(3):
        grad = torch.func.grad(unrolled_loss)(h)
        h = tree_map(lambda x, g: x - 5e-3 * g, h, grad)
        losses.append(unrolled_loss(h))
    assert strictly_decreasing(losses), losses


# Task sampling -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SETTINGS)
def test_sample_tasks_shapes_and_determinism(name):
    problem = SETTINGS[name]()[0]
    first, again = problem.sample_tasks(5, seeded(3)), problem.sample_tasks(5, seeded(3))
    assert tree_structure(first) == tree_structure(again)
    for a, b in zip(tree_leaves(first), tree_leaves(again), strict=True):
        assert a.shape[0] == 5
        assert torch.equal(a, b)
    h = problem.init_hyper(seeded(0))
    loss = problem.val_loss(problem.inner_init(h, None), h,
                            tree_map(lambda leaf: leaf[0], first))
    assert loss.shape == () and loss.dtype == F64 and torch.isfinite(loss)


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_tasks_are_n_way_k_shot(split):
    problem = Digits(ways=3, shots=2, queries=4, dtype=F64)
    tasks = problem.sample_tasks(50, seeded(2), split=split)
    assert tasks["x"].shape == (50, 6, 64) and tasks["xq"].shape == (50, 12, 64)
    torch.testing.assert_close(tasks["y"], torch.tensor([0, 0, 1, 1, 2, 2]).expand(50, 6))
    torch.testing.assert_close(tasks["yq"], torch.arange(3).repeat_interleave(4).expand(50, 12))
    classes = tasks["classes"]
    assert all(len(set(row.tolist())) == 3 for row in classes)
    assert set(classes.unique().tolist()) == set(problem.classes[split])
    assert len(set(classes[:, 0].tolist())) > 1  # labels permuted from task to task
    # Every image of label j is an image of the digit classes[j]
    images, _ = problem.images[split]
    position = {digit: i for i, digit in enumerate(problem.classes[split])}
    for task in range(3):
        for x, y in ((tasks["x"][task], tasks["y"][task]), (tasks["xq"][task], tasks["yq"][task])):
            for image, label in zip(x, y, strict=True):
                pool = images[position[int(classes[task, label])]]
                assert (pool - image).abs().sum(-1).min() == 0


def test_digits_meta_train_and_meta_test_classes_are_disjoint():
    problem = Digits(ways=2, train_classes=range(7), test_classes=(7, 8, 9))
    train = problem.sample_tasks(40, seeded(0))["classes"].unique().tolist()
    test = problem.sample_tasks(40, seeded(0), split="test")["classes"].unique().tolist()
    assert set(train) == set(range(7)) and set(test) == {7, 8, 9}
    with pytest.raises(bilevel.BilevelError, match="disjoint"):
        Digits(train_classes=range(6), test_classes=range(5, 10))
    with pytest.raises(bilevel.BilevelError, match="at least ways=5"):
        Digits(ways=5)


def test_digits_eval_metrics():
    problem, h, tasks, solver, _ = setting("digits")
    phi, _ = vmap(lambda task: bilevel.solve_inner(problem, h, task, solver))(tasks)
    metrics = vmap(problem.eval_metrics, in_dims=(0, None, 0))(phi, h, tasks)
    val_loss = vmap(problem.val_loss, in_dims=(0, None, 0))(phi, h, tasks)
    torch.testing.assert_close(metrics["val_loss"], val_loss)
    assert ((metrics["accuracy"] >= 0) & (metrics["accuracy"] <= 1)).all()
    assert metrics["accuracy"].mean() > 1 / 3  # better than chance after adapting


# Hyperparameter tuning problems --------------------------------------------------------


def test_logreg_report_and_metrics():
    problem, h, tasks, solver, _ = setting("logreg")
    report = problem.report(h, solver)
    assert set(report) == {"val_loss", "test_loss", "test_accuracy", "inner_grad_norm"}
    assert report["inner_grad_norm"] < 1e-10 and 0.5 < report["test_accuracy"] <= 1
    phi, _ = bilevel.solve_inner(problem, h, problem.data, solver)
    metrics = problem.eval_metrics(phi, h, problem.data)
    assert metrics["val_loss"].item() == pytest.approx(report["val_loss"], rel=1e-12)
    assert problem.init_hyper()["log_lam"].shape == ()  # a scalar lam
    per_feature = LogReg(n_train=60, n_val=60, per_feature=True).init_hyper()["log_lam"]
    assert per_feature["W"].shape == (64,) and per_feature["b"].shape == ()


def test_hypercleaning_corruption_and_detection():
    problem = HyperCleaning(n_train=200, n_val=100, corruption=0.25, seed=3, dtype=F64)
    corrupted = problem.corrupted
    assert corrupted.sum() == 50
    assert (problem.data["y"][corrupted] != problem.true_labels[corrupted]).all()
    assert (problem.data["y"][~corrupted] == problem.true_labels[~corrupted]).all()
    again = HyperCleaning(n_train=200, n_val=100, corruption=0.25, seed=3, dtype=F64)
    assert torch.equal(again.corrupted, corrupted)
    assert problem.detection({"weights": -corrupted.to(F64)}) == {"auc": 1.0, "precision": 1.0}
    assert problem.detection({"weights": corrupted.to(F64)}) == {"auc": 0.0, "precision": 0.0}
    assert problem.detection(problem.init_hyper())["auc"] == 0.5  # all tied
    report = problem.report(problem.init_hyper(), nesterov(0.3, 100))
    assert 0 < report["test_accuracy"] <= 1
