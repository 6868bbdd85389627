"""The contract suites: pytest classes to subclass, as Optuna ships
`optuna.testing.pytest_samplers`. Each test takes a fixture that the subclass's module
(or the subclass) provides:

    EstimatorContract   `method`: a registered estimator name; optional `options`: its
                        options (default {})
    SolverContract      `solver`: a solver object that converges on `CountingQuadratic`
                        (inner Hessian eigenvalues in [1, kappa + e] = [1, 12.8]; e.g.
                        GD(lr=1 / 13, steps=20)); its steps are set by the tests

For example, to check every registered estimator:

    @pytest.fixture(params=bilevel.estimators.estimators.names())
    def method(request):
        return request.param

    class TestEstimators(bilevel.testing.EstimatorContract):
        pass
"""

import dataclasses

import pytest
import torch
from torch.func import vmap

from bilevel.errors import InvalidInputError
from bilevel.estimators import estimators
from bilevel.hypergradient import hypergradient
from bilevel.info import Cost, Info
from bilevel.inner import solve_inner
from bilevel.solvers import GD, solvers
from bilevel.testing.counting import CountingQuadratic, CountingSolver
from bilevel.tree import relative_error, tree_leaves, tree_map, tree_structure

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
SOLVER = GD(lr=1 / 13, steps=20)
# With a tolerance the tasks freeze at different steps: masking must not couple them.
MASKED = GD(lr=1 / 13, steps=30, tol=1e-1)


@dataclasses.dataclass(frozen=True)
class PushedByJvp(CountingSolver):
    """The solver with any `linear_steps` claim dropped: fo-bmaml-jvp pushes its tangent
    through each step by jvp."""

    linear_steps = False


@dataclasses.dataclass(frozen=True)
class RunOnly(PushedByJvp):
    """The solver seen as one `run`: fo-bmaml-jvp pushes its tangent through the whole solve
    by forward mode, a reference independent of the tangent recursion."""

    stepwise = False


def setting(device="cpu", dtype=torch.float64):
    problem = CountingQuadratic(dtype=dtype, device=device)
    return problem, problem.init_hyper(torch.Generator().manual_seed(0)), problem.all_tasks()


def one_task(tasks, i):
    return {k: v[i:i + 1] for k, v in tasks.items()}


class EstimatorContract:
    """What every estimator keeps, on `CountingQuadratic` (float64 unless said)."""

    @pytest.fixture
    def options(self):
        return {}

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_result_has_the_keys_shapes_dtype_and_device_of_h(self, method, options, dtype,
                                                               device):
        problem, h, tasks = setting(device, dtype)
        grad, info = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        assert tree_structure(grad) == tree_structure(h)
        for g, x in zip(tree_leaves(grad), tree_leaves(h), strict=True):
            assert g.shape == x.shape and g.dtype == x.dtype and g.device == x.device
            assert torch.isfinite(g).all()
        assert grad["unused"]["scale"] == 0  # a hyperparameter no loss reads
        assert isinstance(info, Info) and info.method == method and info.n_tasks == 4
        assert info.inner_grad_norm.shape == (4,) and info.inner_steps.shape == (4,)
        assert info.val_loss.shape == (4,) and info.cost.inner_grad_evals > 0
        assert all(value.shape == (4,) for value in info.per_task.values())

    @pytest.mark.parametrize("solver", [SOLVER, MASKED], ids=["fixed-steps", "tol"])
    def test_batched_tasks_equal_a_loop_over_tasks(self, method, options, solver):
        problem, h, tasks = setting()
        batched, _ = hypergradient(problem, h, tasks, solver=solver, method=method, **options)
        if solver.tol is not None:  # the setting's premise: tasks stop at different steps
            _, stats = vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)
            assert len(set(stats["steps"].tolist())) > 1
        singles = [hypergradient(problem, h, one_task(tasks, i), solver=solver, method=method,
                                 **options)[0] for i in range(4)]
        looped = tree_map(lambda *g: torch.stack(g).mean(0), *singles)
        for one, other in zip(tree_leaves(batched), tree_leaves(looped), strict=True):
            torch.testing.assert_close(one, other, rtol=1e-10, atol=1e-12)

    def test_h_with_autograd_history_is_not_differentiated_through(self, method, options):
        problem, h, tasks = setting()
        h = tree_map(lambda t: t.clone().requires_grad_(), h)
        grad, info = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        # Nothing returned holds a graph, which would keep the inner solves' memory alive.
        returned = [t for t in tree_leaves((grad, dict(info))) if isinstance(t, torch.Tensor)]
        assert all(not t.requires_grad and t.grad_fn is None for t in returned)

    def test_runs_under_no_grad_with_the_same_result(self, method, options):
        problem, h, tasks = setting()
        grad, _ = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        with torch.no_grad():
            quiet, _ = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        for a, b in zip(tree_leaves(grad), tree_leaves(quiet), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_info_reports_the_outer_loss_of_each_task(self, method, options):
        """info["val_loss"]: val_loss at each task's inner solution; with converged solves
        its mean is F(h) in closed form."""
        problem, h, tasks = setting()
        _, info = hypergradient(problem, h, tasks, solver=SOLVER.with_steps(400),
                                method=method, **options)
        torch.testing.assert_close(info["val_loss"].mean(), problem.outer_loss(h, tasks),
                                   rtol=1e-8, atol=0)

    def test_cost_counts_the_derivatives_evaluated(self, method, options):
        """info.cost against what `CountingQuadratic` and `CountingSolver` counted. The
        first call's one-time check of the problem's code (cached) is not the estimator's
        cost: it runs first, then the counter starts. The counter sees each evaluation of
        a second derivative of g once, though its pull-back may give several products
        (imaml's conjugate-gradient steps): hvps count every product."""
        problem, h, tasks = setting()
        hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        problem.counter.reset()
        solver = CountingSolver(SOLVER)
        _, info = hypergradient(problem, h, tasks, solver=solver, method=method, **options)
        counted = problem.counter
        if estimators.get(method).stateful:  # its own inner updates count too, not the solver's
            assert info.cost.inner_grad_evals >= solver.counter.first_order
        else:
            assert info.cost.inner_grad_evals == solver.counter.first_order
        assert info.cost.grad_evals == counted.first_order
        assert info.cost.hvps + info.cost.mixed_products >= counted.second_order
        assert info.cost.inner_grad_evals <= info.cost.grad_evals

    def test_a_stateful_iteration_costs_what_it_reports(self, method, options):
        """A stateful estimator called with the state of a first call: one iteration, no
        solve (the solver is not called), its derivatives as counted."""
        if not estimators.get(method).stateful:
            pytest.skip("the estimator carries no state")
        problem, h, tasks = setting()
        _, first = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        problem.counter.reset()
        solver = CountingSolver(SOLVER)
        _, info = hypergradient(problem, h, tasks, solver=solver, method=method,
                                state=first.state, **options)
        assert solver.counter.first_order == 0
        assert info.cost.grad_evals == problem.counter.first_order
        assert info.cost.hvps + info.cost.mixed_products >= problem.counter.second_order
        assert 0 < info.cost.inner_grad_evals <= info.cost.grad_evals

    def test_state_has_one_slot_per_task_and_another_is_refused(self, method, options):
        """A stateful estimator's state: every leaf with a leading dimension of the tasks,
        row i that of task i alone; a state for other tasks is an InvalidInputError."""
        if not estimators.get(method).stateful:
            pytest.skip("the estimator carries no state")
        problem, h, tasks = setting()
        _, info = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        _, alone = hypergradient(problem, h, one_task(tasks, 2), solver=SOLVER, method=method,
                                 **options)
        for leaf, one in zip(tree_leaves(info.state), tree_leaves(alone.state), strict=True):
            assert leaf.shape[0] == 4
            torch.testing.assert_close(leaf[2:3], one, rtol=1e-10, atol=1e-12)
        with pytest.raises(InvalidInputError, match="state"):
            hypergradient(problem, h, one_task(tasks, 0), solver=SOLVER, method=method,
                          state=info.state, **options)

    def test_logged_entries_and_how_they_combine(self, method, options):
        problem, h, tasks = setting()
        _, info = hypergradient(problem, h, tasks, solver=SOLVER, method=method, **options)
        entries = info.scalars("cpu")
        names = [name for name, _, _ in entries]
        assert len(names) == len(set(names)) and "loss" in names
        for _, value, op in entries:
            assert value.ndim == 0 and value.dtype == torch.float64
            assert op in ("sum", "mean", "max", "same")
        ops = {name: op for name, _, op in entries}
        assert all(ops[field] == "sum" for field in Cost().as_dict())


class SolverContract:
    """What every inner solver keeps (`bilevel.solvers.InnerSolver`)."""

    converged_steps = 500

    def test_run_returns_phi_shaped_like_init_and_its_stats(self, solver):
        problem, h, tasks = setting()
        task = {k: v[0] for k, v in tasks.items()}
        phi, stats = solve_inner(problem, h, task, solver)
        assert tree_structure(phi) == tree_structure(h["theta"])
        assert phi["w"].shape == (problem.dim,) and phi["w"].dtype == torch.float64
        assert stats["grad_norm"].ndim == 0 and stats["steps"].ndim == 0

    def test_converges_to_the_closed_form_solution(self, solver):
        problem, h, tasks = setting()
        solver = solver.with_steps(self.converged_steps)
        phi, stats = vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)
        exact = vmap(problem.solution, in_dims=(None, 0))(h, tasks)
        assert relative_error(phi, exact) < 1e-8

    def test_calls_the_gradient_exactly_steps_times(self, solver):
        problem, h, tasks = setting()
        counting = CountingSolver(solver.with_steps(7))
        vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, counting)
        assert counting.counter.first_order == 7 * problem.n_tasks

    def test_batched_tasks_equal_one_task_at_a_time(self, solver):
        problem, h, tasks = setting()
        phi, _ = vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)
        for i in range(problem.n_tasks):
            alone, _ = solve_inner(problem, h, {k: v[i] for k, v in tasks.items()}, solver)
            torch.testing.assert_close(alone["w"], phi["w"][i], rtol=1e-12, atol=1e-14)

    def test_with_steps_is_a_copy_with_other_steps(self, solver):
        other = solver.with_steps(solver.steps + 3)
        assert type(other) is type(solver) and other.steps == solver.steps + 3
        if dataclasses.is_dataclass(solver):
            assert dataclasses.replace(other, steps=solver.steps) == solver

    def test_is_registered_and_rebuilt_from_its_record(self, solver):
        """A record names the solver (`name`) and its options: they rebuild it."""
        assert solver.name in solvers.names()
        assert solvers.build(solver.name, dataclasses.asdict(solver)) == solver

    def test_linear_steps_claim_holds(self, solver):
        """A solver that claims `linear_steps` (its tangents mapped by `step` itself in
        fo-bmaml-jvp) gives the hypergradient that jvp through its steps and through its
        whole run give."""
        if not solver.linear_steps:
            pytest.skip("the solver does not claim linear_steps")
        problem, h, tasks = setting()
        claimed, _ = hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml-jvp")
        for reference in (PushedByJvp(solver), RunOnly(solver)):
            pushed, _ = hypergradient(problem, h, tasks, solver=reference,
                                      method="fo-bmaml-jvp")
            assert relative_error(claimed, pushed) < 1e-12

    @pytest.mark.parametrize("method", estimators.names())
    def test_every_estimator_runs_with_it(self, solver, method):
        """Estimators vmap the solver, differentiate through it (maml), push a tangent
        through it (fo-bmaml-jvp) and run it for other steps (fo-bmaml's warm start)."""
        problem, h, tasks = setting()
        grad, _ = hypergradient(problem, h, tasks, solver=solver, method=method)
        assert all(torch.isfinite(g).all() for g in tree_leaves(grad))
