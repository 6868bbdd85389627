"""The mnist1d task source and the cnn model: shapes, seeds, splits that keep the test
signals out of meta-training, shared layers under every estimator, the hypergradient of a
small cnn problem against `exact` in float64, and the errors of bad input."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import vmap
from torch.utils._pytree import tree_leaves, tree_structure

import bilevel
from bilevel.blocks import ComposedProblem, models, sources
from bilevel.blocks.mnist1d import generate
from bilevel.blocks.sources import Tasks
from bilevel.cli import main
from bilevel.errors import InvalidInputError
from bilevel.estimators import estimators
from bilevel.tree import relative_error, tree_map
from tests.conftest import seeded

pytest.importorskip("mnist1d")

SAMPLES = 600  # 480 signals to draw tasks from, 120 held out (8 to 17 per class)
FEW_SHOT = {"kind": "few-shot", "ways": 3, "shots": 2, "queries": 3}
SMALL = {"channels": [2, 3], "kernel": 3, "activation": "tanh"}
# lam = 10 makes the inner problem of the small cnn strongly convex enough for Nesterov to
# reach round-off in 80 steps (checked through inner_grad_norm).
CONVERGED = bilevel.solvers.Nesterov(lr=0.1, steps=80, momentum=0.5)
FEW_STEPS = bilevel.solvers.GD(lr=0.1, steps=5)


def mnist1d(split=None, **options):
    return sources.build("mnist1d", {"samples": SAMPLES, "split": split or FEW_SHOT} | options)


def problem(model=None, shared_layers=(), split=None, dtype=torch.float64):
    cnn = models.build("cnn", model or SMALL)
    return ComposedProblem(mnist1d(split), cnn, loss="cross-entropy", lam=10.0,
                           shared_layers=list(shared_layers), dtype=dtype)


def row_set(x: torch.Tensor) -> set:
    return {tuple(row) for row in x.reshape(-1, x.shape[-1]).tolist()}


# The source -----------------------------------------------------------------------------

def test_few_shot_tasks_have_the_split_shapes():
    tasks = mnist1d().load(torch.float32, "cpu")
    assert (tasks.kind, tasks.inputs, tasks.outputs) == ("classification", 40, 3)
    batch = tasks.sample(4, seeded(0))
    assert batch["x"].shape == (4, 6, 40) and batch["xq"].shape == (4, 9, 40)
    assert batch["y"].shape == (4, 6) and batch["yq"].shape == (4, 9)
    assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.int64
    assert sorted(batch["y"][0].tolist()) == [0, 0, 1, 1, 2, 2]
    assert tasks.test["x"].shape == (500, 6, 40)  # the split's default test_tasks


def test_holdout_trains_on_training_signals_and_tests_on_the_held_out_ones():
    data = generate(SAMPLES, 42)
    tasks = mnist1d({"kind": "holdout", "train": 100, "val": 50}).load(torch.float64, "cpu")
    task = tasks.sample(2)
    assert task["x"].shape == (2, 100, 40) and task["xq"].shape == (2, 50, 40)
    assert torch.equal(tasks.test["xq"][0], torch.as_tensor(data["x_test"]))
    assert torch.equal(tasks.test["yq"][0], torch.as_tensor(data["y_test"]))
    assert not row_set(task["x"]) & row_set(tasks.test["xq"])


def test_the_seed_decides_the_signals_and_the_generator_the_tasks():
    state = np.random.get_state()[1].copy(), random.getstate()
    generate.cache_clear()
    first = mnist1d().load(torch.float64, "cpu").sample(3, seeded(1))
    # The package reseeds NumPy's and Python's global generators: they are restored.
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]
    generate.cache_clear()  # generate anew, not from the cache
    again = mnist1d().load(torch.float64, "cpu").sample(3, seeded(1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = mnist1d(seed=7).load(torch.float64, "cpu").sample(3, seeded(1))
    assert not torch.equal(first["x"], other["x"])
    assert not torch.equal(first["x"], mnist1d().load(torch.float64, "cpu").sample(
        3, seeded(2))["x"])


def test_no_meta_train_task_sees_a_test_signal():
    data = generate(SAMPLES, 42)
    train, test = row_set(torch.as_tensor(data["x"])), row_set(torch.as_tensor(data["x_test"]))
    split = FEW_SHOT | {"classes": [0, 1, 2, 3, 4], "test_classes": [5, 6, 7], "test_tasks": 50}
    tasks = mnist1d(split).load(torch.float64, "cpu")  # standardize: false keeps the values
    batch = tasks.sample(200, seeded(0))
    seen = row_set(batch["x"]) | row_set(batch["xq"])
    assert seen <= train and not seen & test
    assert row_set(tasks.test["x"]) | row_set(tasks.test["xq"]) <= test
    # Meta-train tasks use the classes 0-4 only, meta-test tasks 5-7 only.
    label = {tuple(row): int(y) for row, y in zip(
        np.concatenate([data["x"], data["x_test"]]).tolist(),
        np.concatenate([data["y"], data["y_test"]]), strict=True)}
    assert {label[row] for row in seen} == {0, 1, 2, 3, 4}
    assert {label[row] for row in row_set(tasks.test["xq"])} == {5, 6, 7}


def test_a_missing_mnist1d_package_says_how_to_install_it(monkeypatch):
    generate.cache_clear()
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # import mnist1d raises ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(InvalidInputError, match=r"mnist1d package \(pip install "
                                                r"'bilevel\[mnist1d\]'\)"):
        mnist1d().load(torch.float32, "cpu")


# The model ------------------------------------------------------------------------------

@pytest.mark.parametrize(("inputs", "pool", "head"), [(40, "none", 3 * 40), (40, "max", 3 * 10),
                                                      ((6, 7), "avg", 3 * 1 * 1),
                                                      ((6, 7), "none", 3 * 42)])
def test_cnn_shapes_on_signals_and_images(inputs, pool, head):
    model = models.build("cnn", SMALL | {"pool": pool})
    params = model.init(inputs, 5, seeded(0), torch.float64)
    spatial = 1 if isinstance(inputs, int) else 2
    assert params["w0"].shape == (2, 1, *(3,) * spatial) and params["b0"].shape == (2,)
    assert params["w1"].shape == (3, 2, *(3,) * spatial) and params["b1"].shape == (3,)
    assert params["w2"].shape == (head, 5) and params["b2"].shape == (5,)
    assert model.layers(inputs, 5) == [["w0", "b0"], ["w1", "b1"], ["w2", "b2"]]
    shape = (inputs,) if spatial == 1 else inputs
    x = torch.randn(4, 8, *shape, generator=seeded(1), dtype=torch.float64)
    batched = vmap(model, in_dims=(None, 0))(params, x)
    assert batched.shape == (4, 8, 5)
    torch.testing.assert_close(batched[2], model(params, x[2]), rtol=1e-12, atol=1e-12)


def test_cnn_is_the_convolution_it_says():
    """One layer, no pooling: conv1d with "same" padding, tanh, flattened, times the head."""
    model = models.build("cnn", {"channels": [2], "kernel": 3, "activation": "tanh"})
    params = model.init(5, 2, seeded(0), torch.float64)
    x = torch.randn(3, 5, generator=seeded(1), dtype=torch.float64)
    windows = torch.nn.functional.pad(x, (1, 1)).unfold(-1, 3, 1)  # (rows, 5, 3)
    features = torch.tanh(torch.einsum("rlk,ck->rcl", windows, params["w0"][:, 0])
                          + params["b0"][:, None])
    expected = features.reshape(3, -1) @ params["w1"] + params["b1"]
    torch.testing.assert_close(model(params, x), expected, rtol=1e-12, atol=1e-12)


def test_max_pooling_halves_by_windows_of_two():
    model = models.build("cnn", {"channels": [1], "kernel": 1, "activation": "tanh",
                                 "pool": "max"})
    params = {"w0": torch.ones(1, 1, 1), "b0": torch.zeros(1), "w1": torch.eye(2),
              "b1": torch.zeros(2)}
    x = torch.tensor([[0.1, -0.3, 0.5, 0.2, 9.0]])  # the odd last position is dropped
    torch.testing.assert_close(model(params, x), torch.tanh(torch.tensor([[0.1, 0.5]])))


def test_layer_norm_is_per_example():
    model = models.build("cnn", SMALL | {"norm": "layer"})
    params = model.init(40, 3, seeded(0), torch.float64)
    x = torch.randn(6, 40, generator=seeded(1), dtype=torch.float64)
    torch.testing.assert_close(model(params, x)[:2], model(params, x[:2]), rtol=1e-12, atol=0)
    scaled = model(params, 3 * x + 1)  # layer norm of the first convolution undoes it...
    assert not torch.allclose(scaled, model(params, x))  # ...up to the bias it adds first


# Estimators on a cnn problem ------------------------------------------------------------

@pytest.mark.parametrize("method", estimators.names())
def test_every_estimator_trains_the_shared_body_and_the_adapted_head(method):
    """ANIL's split (eq. 15): the convolutions in h["decoder"], the head in h["theta"]."""
    shared = problem(SMALL | {"pool": "max"}, shared_layers=[0, 1], dtype=torch.float32)
    h = shared.init_hyper(seeded(0))
    assert set(h["decoder"]) == {"w0", "b0", "w1", "b1"} and set(h["theta"]) == {"w2", "b2"}
    tasks = shared.sample_tasks(3, seeded(1))
    grad, info = bilevel.hypergradient(shared, h, tasks, method=method, solver=FEW_STEPS)
    assert tree_structure(grad) == tree_structure(h)
    assert all(torch.isfinite(g).all() for g in tree_leaves(grad))
    assert grad["decoder"]["w0"].norm() > 0 and info.n_tasks == 3


def test_hypergradients_of_a_small_cnn_against_exact_in_float64():
    """On a converged solve the implicit estimators and MAML's unrolled derivative all give
    the hypergradient of `exact`; FO-MAML and Reptile, which drop the solver's Jacobian,
    do not. Batched tasks give the mean of one task at a time; nothing keeps a graph."""
    cnn = problem(SMALL | {"pool": "max"}, shared_layers=[0])
    h, tasks = cnn.init_hyper(seeded(0)), cnn.sample_tasks(2, seeded(1))
    exact, info = bilevel.hypergradient(cnn, h, tasks, solver=CONVERGED, method="exact")
    assert info["inner_grad_norm"].max() < 1e-12
    assert exact["theta"]["w1"].norm() > 1e-3 and exact["decoder"]["w0"].norm() > 1e-3
    options = {"fo-bmaml": {"nu": 1e-4}, "imaml": {"tol": 1e-12}}
    errors = {}
    for method in estimators.names():
        grad, _ = bilevel.hypergradient(cnn, h, tasks, solver=CONVERGED, method=method,
                                        **options.get(method, {}))
        for g, x in zip(tree_leaves(grad), tree_leaves(h), strict=True):
            assert g.shape == x.shape and g.dtype == torch.float64 and g.grad_fn is None
        errors[method] = relative_error(grad, exact)
    assert max(errors[m] for m in ("fo-bmaml", "fo-bmaml-jvp", "imaml", "maml")) < 1e-6, errors
    assert min(errors["fomaml"], errors["reptile"]) > 1e-2, errors
    singles = [bilevel.hypergradient(cnn, h, {k: v[i:i + 1] for k, v in tasks.items()},
                                     solver=FEW_STEPS, method="fo-bmaml", nu=1e-4)[0]
               for i in range(2)]
    batched, _ = bilevel.hypergradient(cnn, h, tasks, solver=FEW_STEPS, nu=1e-4)
    assert relative_error(batched, tree_map(lambda a, b: (a + b) / 2, *singles)) < 1e-10


class ImageSource:
    """Two classes of 6x6 images: a bright pixel at (1, 1) or at (4, 4), plus noise."""

    def load(self, dtype, device) -> Tasks:
        def sample(n, generator=None):
            labels = torch.arange(2).repeat(n, 3)  # (n, 6)
            x = 0.3 * torch.randn(n, 6, 6, 6, generator=generator, dtype=dtype)
            spot = 1 + 3 * labels
            x[torch.arange(n)[:, None], torch.arange(6), spot, spot] += 1.0
            return {"x": x[:, :4], "y": labels[:, :4], "xq": x[:, 4:], "yq": labels[:, 4:]}

        return Tasks("classification", (6, 6), 2, sample)


def test_a_cnn_on_images_matches_exact():
    """2-D convolutions, average pooling, the whole network adapted."""
    cnn = ComposedProblem(ImageSource(), models.build("cnn", SMALL | {"pool": "avg"}),
                          loss="cross-entropy", lam=10.0, dtype=torch.float64)
    assert cnn.start["w0"].shape == (2, 1, 3, 3) and cnn.start["w2"].shape == (3 * 1 * 1, 2)
    h, tasks = cnn.init_hyper(seeded(0)), cnn.sample_tasks(2, seeded(1))
    exact, info = bilevel.hypergradient(cnn, h, tasks, solver=CONVERGED, method="exact")
    assert info["inner_grad_norm"].max() < 1e-10
    fobmaml, _ = bilevel.hypergradient(cnn, h, tasks, solver=CONVERGED, nu=1e-4)
    assert relative_error(fobmaml, exact) < 1e-6


# Bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"channels": [4, 0]}, "channels must be an integer >= 1, got 0"),
    ({"channels": [4, 2.5]}, "channels must be an integer >= 1, got 2.5"),
    ({"channels": []}, "channels must be a non-empty list"),
    ({"channels": 8}, "channels must be a non-empty list"),
    ({"kernel": 0}, "kernel must be an integer >= 1"),
    ({"pool": "min"}, "pool must be one of"),
    ({"norm": "batch"}, "norm must be one of 'none', 'layer'"),
])
def test_bad_cnn_options_are_named(options, message):
    with pytest.raises(InvalidInputError, match=message):
        models.build("cnn", options)


@pytest.mark.parametrize(("model", "message"), [
    ({"channels": [4], "kernel": 41}, r"kernel: 41 is longer than the input, of shape \(40,\)"),
    ({"channels": [4, 4, 4], "kernel": 11, "pool": "max"},
     r"kernel: 11 is longer than convolution 2's input, of shape \(10,\)"),
])
def test_a_kernel_longer_than_the_signal_is_an_error(model, message):
    with pytest.raises(InvalidInputError, match=message):
        problem(model)


def test_images_need_a_cnn_and_a_cnn_needs_signals_or_images():
    with pytest.raises(InvalidInputError, match=r"model mlp: takes examples that are vectors, "
                                                r"but the source gives examples of shape \(6, 6\)"):
        ComposedProblem(ImageSource(), models.build("mlp", {}), loss="cross-entropy")
    with pytest.raises(InvalidInputError, match=r"model cnn: takes signals .* shape \(2, 3, 4\)"):
        models.build("cnn", SMALL).init((2, 3, 4), 2)


@pytest.mark.parametrize(("override", "expected"), [
    ("problem.model.kernel=41", "problem.model.kernel: kernel: 41 is longer than the input"),
    ("problem.model.channels=[8, 0]", "problem.model.channels: channels must be an integer >= 1"),
    ("problem.model.pool=min", "problem.model.pool"),
    ("problem.source.samples=10", "problem.source.samples: samples must be an integer >= 100"),
])
def test_a_config_error_names_the_key(override, expected, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "mnist1d_maml_5way1shot.yaml"
    small = [f"--set=problem.source.samples={SAMPLES}", "--set=problem.source.split.queries=5"]
    status = main(["validate", str(example), *small, f"--set={override}"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and expected in error, error
