"""benchmark_bilevel's quadratic (problems/bb_quadratic.py): its closed-form hypergradient
against autograd through the solved inner problem, the estimators against it, its tasks
against the per-sample quadratics, and the spectrum of its draw. Float64."""

import runpy
from pathlib import Path

import pytest
import torch
from torch.func import grad

import bilevel
from bilevel import InvalidInputError
from problems.bb_quadratic import BenchmarkQuadratic


@pytest.fixture(scope="module")
def small():
    """A small instance: 2 blocks of 64 inner samples, 1 of outer."""
    return BenchmarkQuadratic(dim_inner=12, dim_outer=4, n_inner=128, n_outer=64,
                              batches=None, seed=3)


def per_sample_mean(samples: dict, rows, z, x) -> torch.Tensor:
    """The mean of q_i(z, x) over `rows`, from the factors, as the module's docstring
    writes q_i."""
    s = {k: v[rows] for k, v in samples.items()}
    q = (0.5 * (s["a"] @ z) ** 2 + 0.5 * (s["b"] @ x) ** 2 + (s["p"] @ x) * (s["q"] @ z)
         + s["lz"] @ z + s["lx"] @ x)
    return q.mean()


def test_exact_hypergradient_is_autograd_through_the_solved_inner_problem(small):
    inner, outer = small.samples["inner"], small.samples["outer"]
    rows_in, rows_out = torch.arange(128), torch.arange(64)

    def outer_value(x):
        hessian = torch.func.hessian(per_sample_mean, argnums=2)(inner, rows_in,
                                                                 torch.zeros(12, dtype=x.dtype), x)
        z0 = torch.zeros(12, dtype=x.dtype)
        residual = grad(per_sample_mean, argnums=2)(inner, rows_in, z0, x)  # H z0 + l + C^T x
        z = -torch.linalg.solve(hessian, residual)
        return per_sample_mean(outer, rows_out, z, x)

    x = torch.linspace(-1.0, 2.0, 4, dtype=torch.float64)
    expected = grad(outer_value)(x)
    got = small.exact_hypergradient({"x": x})
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert expected.norm() > 0.1


def test_meta_gradient_of_full_batch_tasks_is_the_exact_hypergradient(small):
    h = small.init_hyper()
    got = small.meta_gradient(h, small.sample_tasks(3))["x"]
    assert torch.allclose(got, small.exact_hypergradient(h), rtol=1e-12, atol=0)


# h = {x} enters the inner objective directly (no theta): the warning that an implicit
# estimator returns a zero gradient for theta without a regulariser does not apply.
@pytest.mark.filterwarnings("error:.*regularization='none'")
@pytest.mark.parametrize("method", ["exact", "fo-bmaml", {"name": "imaml", "cg_steps": 30}])
def test_estimators_at_converged_inner_solutions_match_the_closed_form(small, method):
    h = small.init_hyper()
    mu, smoothness = small.inner_spectrum()
    solver = bilevel.solvers.GD(lr=1 / smoothness, steps=int(40 * smoothness / mu))
    got, _ = bilevel.hypergradient(small, h, small.sample_tasks(1), solver=solver,
                                   method=method)
    expected = small.exact_hypergradient(h)
    assert (got["x"] - expected).norm() / expected.norm() < 1e-6


def test_minibatch_tasks_are_means_over_blocks_of_consecutive_samples():
    problem = BenchmarkQuadratic(dim_inner=6, dim_outer=3, n_inner=64 * 4, n_outer=64 * 2,
                                 batches=1, seed=5)
    tasks = problem.sample_tasks(5, torch.Generator().manual_seed(0))
    z = torch.linspace(-1, 1, 6, dtype=torch.float64)
    x = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    for i in range(5):
        task = {level: {k: v[i] for k, v in m.items()} for level, m in tasks.items()}
        for level, loss in (("inner", problem.train_loss), ("outer", problem.val_loss)):
            value = loss({"z": z}, {"x": x}, task)
            blocks = problem.samples[level]["a"].shape[0] // 64
            candidates = [per_sample_mean(problem.samples[level], torch.arange(64) + 64 * b, z, x)
                          for b in range(blocks)]
            assert min(abs(value - c).item() for c in candidates) < 1e-12


def test_the_draw_has_the_published_spectrum():
    """E[a a^T] has eigenvalues log-spaced on [mu, L] = [0.1, 1]: the 32,768-sample mean's
    extreme eigenvalues are within 5% of them (a wrong square root would give 0.01)."""
    mu, smoothness = BenchmarkQuadratic().inner_spectrum()
    assert mu == pytest.approx(0.1, rel=0.05) and smoothness == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("options, key", [({"n_inner": 100}, "n_inner"),
                                          ({"batches": 0}, "batches"),
                                          ({"mu": -1.0}, "mu")])
def test_bad_options_name_the_argument(options, key):
    with pytest.raises(InvalidInputError, match=key):
        BenchmarkQuadratic(**{"dim_inner": 4, "dim_outer": 2, "n_inner": 128, "n_outer": 64}
                           | options)


def test_the_script_runs_registered_single_loop_solvers_with_their_known_options(monkeypatch):
    """examples/bb_quadratic.py picks a single-loop solver up by its registered name and
    passes only the options its dataclass has ("darts" stands in for one here)."""
    from examples import bb_quadratic

    monkeypatch.setattr(bb_quadratic, "SINGLE_LOOP",
                        {"darts": (0.1, 0.2, 3, {"xi": 0.05, "eta": 0.5}),
                         "not-registered": (0.1, 0.1, 1, {})})
    settings, skipped = bb_quadratic.single_loop(7)
    assert skipped == ["not-registered"]
    (setting,) = settings
    assert setting.method == {"name": "darts", "xi": 0.05}
    assert (setting.steps, setting.outer_lr, setting.inner_steps, setting.inner_lr,
            setting.batches) == (7, 0.2, 3, 0.1, 1)


def test_example_counts_a_level_reached_only_where_the_curve_stays_below_it(tmp_path):
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples"
                                / "bb_quadratic.py"))
    dips = [(10, 0.0, 1.0), (20, 0.0, 0.01), (30, 0.0, 0.5), (40, 0.0, 0.02), (50, 0.0, 0.03)]
    settles = [(10, 0.0, 1.0), (20, 0.0, 0.5), (30, 0.0, 0.04), (40, 0.0, 0.03), (50, 0.0, 0.02)]
    assert script["reach"]([settles], 0.05) == 30
    assert script["reach"]([dips], 0.05) == 40  # the dip at 20 does not count
    assert script["reach"]([dips], 0.015) is None  # below it only in passing
    assert script["reach"]([dips, settles, settles], 0.05) == 30  # the median seed's
    script["main"](["--quick", "--out", str(tmp_path)])
    page = (tmp_path / "bb_quadratic.md").read_text()
    (tmp_path / "bb_quadratic.md").unlink()
    script["main"](["--render", "--out", str(tmp_path)])  # from the JSON, nothing run
    assert (tmp_path / "bb_quadratic.md").read_text() == page
