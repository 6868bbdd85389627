"""The compiled path (`compile=True`): equal to eager, compiled once, and falling back to
eager (or refusing, strictly) where torch.compile cannot go.

Compile time is what these tests spend: most trace with the "aot_eager" backend (dynamo
and AOT autograd, where a fallback is decided, without generating C++); the tests marked
`inductor` generate code as users get it. benchmarks/compiled.py measures the speed."""

import os
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import bilevel
from bilevel import compiled
from bilevel.compiled import Compilation, CompileError
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic
from tests.conftest import aot_eager, seeded
from tests.toy_problems import TinyMLPRegression

METHODS = ["fomaml", "maml", "reptile", "imaml", "fo-bmaml", "fo-bmaml-jvp"]


@pytest.fixture(autouse=True)
def backend(request, monkeypatch):
    """compile=True / "strict" trace with "aot_eager", but in the tests marked inductor."""
    if "inductor" not in request.keywords:
        aot_eager(monkeypatch)


def quadratic(dtype=torch.float64):
    problem = Quadratic(dim=4, kappa=4.0, lam=1.0, n_tasks=3, distinct_val=True, dtype=dtype)
    return problem, problem.init_hyper(seeded(1)), problem.all_tasks()


def both(problem, h, tasks, solver, method, **options):
    eager = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method, **options)
    fast = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                 compile="strict", **options)
    return eager, fast


@pytest.mark.parametrize("method", METHODS)
def test_every_estimator_compiled_equals_eager_float64(method):
    problem, h, tasks = quadratic()
    solver = bilevel.solvers.Nesterov(lr=0.2, steps=4, momentum=0.5)
    (eager, eager_info), (fast, fast_info) = both(problem, h, tasks, solver, method)
    assert relative_error(fast, eager) < 1e-10
    assert torch.allclose(fast_info.val_loss, eager_info.val_loss, rtol=1e-12, atol=0)
    assert torch.equal(fast_info.inner_steps, eager_info.inner_steps)


@pytest.mark.parametrize("method, options, solver", [
    ("fo-bmaml-jvp", {}, bilevel.solvers.GD(lr=0.05, steps=3)),
    ("fo-bmaml-jvp", {}, bilevel.solvers.Nesterov(lr=0.05, steps=3, tol=1e-3)),
    ("imaml", {"cg_steps": 3}, bilevel.solvers.GD(lr=0.05, steps=3)),
], ids=["jvp-linear-steps", "jvp-pushed-steps", "imaml"])
def test_hessian_vector_products_compile_through_an_mlp(method, options, solver):
    """Their products are reverse over reverse: forward mode through an MLP's matrix
    products did not compile (torch 2.13: "Tensor device mismatch ... meta and cpu")."""
    problem = TinyMLPRegression()
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(3, seeded(1))
    (eager, _), (fast, _) = both(problem, h, tasks, solver, method, **options)
    assert relative_error(fast, eager) < 1e-10


@pytest.mark.inductor
def test_generated_code_equals_eager_float64():
    problem, h, tasks = quadratic()
    solver = bilevel.solvers.GD(lr=0.2, steps=4)
    (eager, _), (fast, _) = both(problem, h, tasks, solver, "fo-bmaml")
    assert relative_error(fast, eager) < 1e-10


def test_exact_runs_eagerly_with_a_warning_or_refuses_strictly():
    """torch 2.13 fails on hessian (jacfwd over jacrev) under vmap and compile, and the
    failed attempt breaks later torch.func calls: exact is never handed to the compiler."""
    problem, h, tasks = quadratic()
    solver = bilevel.solvers.GD(lr=0.2, steps=4)
    assert_runs_eagerly_or_refuses(problem, h, tasks, solver, "exact",
                                   warning="method 'exact' runs eagerly: torch.compile",
                                   refusal="method 'exact' cannot be compiled")


def assert_runs_eagerly_or_refuses(problem, h, tasks, solver, method, warning, refusal):
    """compile=True warns (matching `warning`) and gives the eager result exactly;
    compile="strict" raises CompileError (matching `refusal`)."""
    eager, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
    with pytest.warns(RuntimeWarning, match=warning):
        fast, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                        compile=True)
    assert relative_error(fast, eager) == 0.0
    with pytest.raises(CompileError, match=refusal):
        bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                              compile="strict")


@pytest.mark.inductor
def test_compiled_float32_within_round_off_on_a_nonlinear_problem():
    problem = TinyMLPRegression(dtype=torch.float32)
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(5, seeded(1))
    solver = bilevel.solvers.GD(lr=0.05, steps=5, tol=1e-3)
    (eager, _), (fast, _) = both(problem, h, tasks, solver, "fomaml")
    assert relative_error(fast, eager) < 1e-5


def test_a_new_batch_of_the_same_shapes_compiles_nothing():
    problem, h, _ = quadratic()
    solver = bilevel.solvers.GD(lr=0.2, steps=3)
    first = problem.sample_tasks(3, seeded(2))
    bilevel.hypergradient(problem, h, first, solver=solver, method="fo-bmaml", compile="strict")
    graphs = counters["stats"]["unique_graphs"]
    # New tasks, a new h, a solver equal to the first: the cached code runs.
    h = tree_map(lambda value: value + 0.1, h)
    again = bilevel.solvers.GD(lr=0.2, steps=3)
    bilevel.hypergradient(problem, h, problem.sample_tasks(3, seeded(3)), solver=again,
                          method="fo-bmaml", compile="strict")
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_time_does_not_grow_with_inner_steps():
    """A stepwise solver compiles one chunk of UNROLL steps, whatever the count: 200 steps
    cost no new graph against 30 (only the index of a chunk's first step changes, and it
    is a tensor)."""
    problem, h, tasks = quadratic()
    bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.2, steps=30),
                          method="fomaml", compile="strict")
    graphs = counters["stats"]["unique_graphs"]
    long = bilevel.solvers.GD(lr=0.2, steps=200)
    (eager, _), (fast, _) = both(problem, h, tasks, long, "fomaml")
    assert counters["stats"]["unique_graphs"] == graphs
    assert relative_error(fast, eager) < 1e-10


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.inductor
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graphs_replay_every_estimator_equal_to_eager(method):
    """On CUDA the compiled functions replay CUDA graphs: a first call compiles, a second
    records, later calls replay. Every result equals eager, also those kept across later
    replays (a replay must not overwrite them); no graph is skipped and a new batch of the
    same shapes records nothing new."""
    problem = Quadratic(dim=4, kappa=4.0, lam=1.0, n_tasks=6, distinct_val=True,
                        device="cuda")
    h = problem.init_hyper(seeded(1))
    batches = [problem.sample_tasks(3, seeded(seed)) for seed in (2, 2, 2, 3)]
    solver = bilevel.solvers.Nesterov(lr=0.2, steps=12, momentum=0.5)  # chunks of 5, 5, 2
    eager = [bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)[0]
             for tasks in batches]
    counters.clear()
    fast = [bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                  compile="strict")[0] for tasks in batches[:3]]
    graphs = counters["stats"]["unique_graphs"]
    fast.append(bilevel.hypergradient(problem, h, batches[3], solver=solver, method=method,
                                      compile="strict")[0])
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0  # graphs ran
    for fast_result, eager_result in zip(fast, eager, strict=True):
        assert relative_error(fast_result, eager_result) < 1e-10


def test_the_device_that_decides_on_cuda_graphs_is_the_first_tensor_argument(monkeypatch):
    first, second = torch.zeros(2), torch.ones(3)
    assert compiled._first_tensor((3, {"a": (), "b": [None, first]}, second)) is first
    assert compiled._first_tensor(((), {}, "x")) is None
    function = compiled._Compiled(None, "f", Compilation(True, backend="inductor"))
    assert not function._replays_cuda_graphs((first,))  # a CPU tensor


@needs_cuda
@pytest.mark.inductor
def test_cuda_graphs_float32_mlp_within_round_off():
    problem = TinyMLPRegression(dtype=torch.float32, device="cuda")
    h, tasks = problem.init_hyper(seeded(0)), problem.sample_tasks(5, seeded(1))
    solver = bilevel.solvers.GD(lr=0.05, steps=7)
    eager, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml")
    for _ in range(3):
        fast, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml",
                                        compile="strict")
        assert relative_error(fast, eager) < 1e-4  # round-off over nu


@needs_cuda
@pytest.mark.inductor
def test_meta_train_with_cuda_graphs_follows_eager():
    problem = Quadratic(dim=4, kappa=4.0, n_tasks=6, device="cuda")
    settings = dict(solver=bilevel.solvers.GD(lr=0.2, steps=5), method="fo-bmaml",
                    outer={"name": "adam", "lr": 0.05}, steps=4, tasks_per_step=3,
                    eval_every=2, eval_tasks=2, progress=False)
    eager = bilevel.meta_train(problem, **settings)
    fast = bilevel.meta_train(problem, compile="strict", **settings)
    assert relative_error(fast.h, eager.h) < 1e-10


class ExtensionInLoss(Quadratic):
    """A loss that calls into a C extension (os.getpid stands in for one), which vmap runs
    and torch.compile cannot trace."""

    def val_loss(self, phi, h, task):
        return super().val_loss(phi, h, task) * (os.getpid() > 0)


def test_untraceable_loss_falls_back_to_eager_with_one_warning():
    problem = ExtensionInLoss(dim=3, n_tasks=2, kappa=2.0)
    h, tasks = problem.init_hyper(seeded(0)), problem.all_tasks()
    solver = bilevel.solvers.GD(lr=0.3, steps=3)
    # Strict still refuses after the fallback.
    assert_runs_eagerly_or_refuses(problem, h, tasks, solver, "fomaml",
                                   warning="cannot compile .*running it eagerly",
                                   refusal="cannot compile")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the eager fallback is remembered
        bilevel.hypergradient(problem, h, tasks, solver=solver, method="fomaml", compile=True)


def test_strict_compile_refuses_an_untraceable_loss_with_a_clear_error():
    problem = ExtensionInLoss(dim=3, n_tasks=2, kappa=1.5)
    h, tasks = problem.init_hyper(seeded(0)), problem.all_tasks()
    with pytest.raises(CompileError, match="torch.compile cannot compile .*at_solution"):
        bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.3, steps=3),
                              method="fomaml", compile="strict")


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_compile_must_be_true_false_or_strict(bad):
    problem, h, tasks = quadratic()
    with pytest.raises(bilevel.InvalidInputError, match="compile must be False, True or"):
        bilevel.hypergradient(problem, h, tasks, solver=bilevel.solvers.GD(lr=0.2, steps=2),
                              compile=bad)


def test_meta_train_compiled_follows_eager():
    problem = Quadratic(dim=4, kappa=4.0, n_tasks=6)
    settings = dict(solver=bilevel.solvers.GD(lr=0.2, steps=5), method="fo-bmaml",
                    outer={"name": "adam", "lr": 0.05}, steps=4, tasks_per_step=3,
                    eval_every=2, eval_tasks=2, progress=False)
    eager = bilevel.meta_train(problem, **settings)
    fast = bilevel.meta_train(problem, compile=True, **settings)
    assert relative_error(fast.h, eager.h) < 1e-10
    assert fast.history[-1]["eval_val_loss"] == pytest.approx(
        eager.history[-1]["eval_val_loss"], rel=1e-10)


def test_meta_train_threads_from_argument_environment_and_default(monkeypatch):
    problem = Quadratic(dim=2, n_tasks=2)
    seen = []

    class Watch(bilevel.solvers.GD):
        def step(self, k, x, aux, grad_fn):
            seen.append(torch.get_num_threads())
            return super().step(k, x, aux, grad_fn)

    settings = dict(solver=Watch(lr=0.2, steps=1), method="fomaml", steps=1,
                    tasks_per_step=2, progress=False)
    before = torch.get_num_threads()
    bilevel.meta_train(problem, threads=2, **settings)
    monkeypatch.setenv("BILEVEL_THREADS", "3")
    bilevel.meta_train(problem, **settings)
    monkeypatch.delenv("BILEVEL_THREADS")
    bilevel.meta_train(problem, **settings)
    assert seen == [2, 3, 1]
    assert torch.get_num_threads() == before
    monkeypatch.setenv("BILEVEL_THREADS", "many")
    with pytest.raises(bilevel.InvalidInputError, match="BILEVEL_THREADS must be a whole"):
        bilevel.meta_train(problem, **settings)
