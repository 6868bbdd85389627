"""The inner problem of one task and the outer objective it defines."""

import functools
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from bilevel import compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.problem import BilevelProblem
from bilevel.solvers import InnerSolver
from bilevel.tree import tree_leaves, tree_map

# Inner steps per compiled call. Each call of compiled code costs ~0.1 ms on CPU (dynamo
# checks its guards on every input), more than one step of a small problem; each step of a
# chunk costs compile time, mostly dynamo tracing through torch.func (benchmarks/compiled.py).
UNROLL = 5


def solve_inner(problem: BilevelProblem, h: dict, task, solver: InnerSolver,
                init: dict | None = None) -> tuple[dict, dict]:
    """phi*(h) = argmin_phi g(phi, h) for one task (eq. 15), by `solver` from
    `init` (default `problem.inner_init`). Returns (phi, solver stats)."""
    if init is None:
        init = problem.inner_init(h, task)

    def objective(phi: dict) -> torch.Tensor:
        return problem.inner_objective(phi, h, task)

    return solver.run(grad(objective), init)


def at_inner_solutions(metric: Callable, problem: BilevelProblem, h: dict, tasks,
                       solver: InnerSolver, *, with_stats: bool = False,
                       compilation: Compilation = EAGER):
    """metric(phi*_i(h), h, task_i) for every task of the batch `tasks`, the inner problems
    solved in one vmapped batch (compiled as `compilation` says, init, solve and metric in
    one function): one value (or dict of values) per task, stacked; with `with_stats`, also
    the solver's stats of every task. Costs solver.steps inner gradient evaluations per
    task."""
    values, stats = solve_batch(solver, problem.inner_objective, problem.inner_init, (h, tasks),
                                (None, 0), compilation, then=metric)
    return (values, stats) if with_stats else values


def solve_batch(solver, objective, init, args, in_dims, compilation: Compilation, then=None):
    """(then(phi_K, *a), stats) of every task, stacked (phi_K itself when `then` is None):
    phi_K = argmin_phi objective(phi, *a) by `solver` from init(*a), for each task's
    arguments `a` (`args` batched as `in_dims` says, vmap's convention), and the solver's
    stats; compiled as `compilation` says.

    A stepwise solver runs through `run_steps` (compiled in chunks of UNROLL steps); a
    solver that only defines `run` is vmapped whole (and compiled whole, unrolled).
    """
    name = "the inner solve" + ("" if then is None else f" and {compiled.describe(then)}")

    def finished(out, *args):
        phi, stats = out
        return (phi if then is None else then(phi, *args)), stats

    if not solver.stepwise:
        def one_solve(*args):
            out = solver.run(grad(lambda phi: objective(phi, *args)), init(*args))
            return finished(out, *args)

        return compiled.batch(one_solve, in_dims, compilation, name)(*args)

    def begin(*args):
        return solver.start(init(*args))

    def one_step(k, state, *args):
        return solver.step(k, *state, grad(lambda phi: objective(phi, *args)))

    def finish(state):
        return solver.finish(*state)

    return run_steps(begin, one_step, finish, finished, solver.steps, args, in_dims,
                     compilation, name)


def solve_from(solver, objective, inits, args, in_dims, compilation: Compilation, then=None):
    """`solve_batch` from given starts: row i of `inits` (leading dim: the tasks) for task i."""
    def from_start(phi, start, *args):
        return objective(phi, *args)

    def start(start, *args):
        return start

    def then_from(phi, start, *args):
        return then(phi, *args)

    return solve_batch(solver, from_start, start, (inits, *args), (0, *in_dims), compilation,
                       then=None if then is None else then_from)


def run_steps(begin, step, finish, then, steps: int, args, in_dims, compilation: Compilation,
              name: str | None = None):
    """then(finish(state_K), *a) for every task, where state_0 = begin(*a) and state_{k+1} =
    step(k, state_k, *a), `a` a task's arguments (`args` batched as `in_dims` says).

    Eagerly, and compiled (`compilation.active`) up to 2 UNROLL steps: the whole of one
    task, vmapped (compiled as one function, unrolled: one call, one guard check). Compiled,
    longer: begin and the first UNROLL steps in one compiled function, then a chunk of
    UNROLL steps compiled once and called as often as needed (and a shorter one for the
    rest), each taking the index of its first step as a 0-dim float64 tensor, an input
    rather than a constant baked into the code, so that the compile time does not grow
    with the steps; `finish` (a few operators, which may read the step count: GD's stats
    do) vmapped eagerly; `then` compiled. `step` uses k in arithmetic only. `name`: what
    warnings and errors call the compiled function that ends with `then`.
    """
    if not compilation.active or steps <= 2 * UNROLL:
        def whole(*args):
            state = begin(*args)
            for k in range(steps):
                state = step(k, state, *args)
            return then(finish(state), *args)

        return compiled.batch(whole, in_dims, compilation, name)(*args)

    def first(*args):
        state = begin(*args)
        for k in range(UNROLL):
            state = step(k, state, *args)
        return state

    def chunk(first, state, *args, length):
        for i in range(length):
            state = step(first + i, state, *args)
        return state

    # vmap hands back what does not depend on the task (a step count) expanded, with
    # stride 0: contiguous, every chunk sees the same strides and reuses one graph.
    state = tree_map(torch.Tensor.contiguous, compiled.batch(first, in_dims, compilation)(*args))
    device = tree_leaves(state)[0].device
    for k in range(UNROLL, steps, UNROLL):
        length = min(UNROLL, steps - k)
        run_chunk = compiled.batch(functools.partial(chunk, length=length),
                                   (None, 0, *in_dims), compilation)
        # torch.full, not torch.tensor: a copy from the host would wait for the GPU.
        state = run_chunk(torch.full((), float(k), dtype=torch.float64, device=device),
                          state, *args)
    return compiled.batch(then, (0, *in_dims), compilation, name)(vmap(finish)(state), *args)


def grad_ratio(stats: dict) -> torch.Tensor | None:
    """How far each solve got: the final inner gradient norm over the first (0 for a solve
    that starts at a stationary point), from a solver's stats; None if the solver does not
    report its first gradient norm ("grad_norm_start")."""
    start = stats.get("grad_norm_start")
    if start is None:
        return None
    return torch.where(start > 0, stats["grad_norm"] / start.clamp_min(1e-300), 0.0)


def outer_loss(problem: BilevelProblem, h: dict, tasks, solver: InnerSolver, *,
               compilation: Compilation = EAGER) -> torch.Tensor:
    """F(h) = mean over tasks of val_loss(phi*_i(h), h, task_i) (eq. 5), solves batched."""
    return at_inner_solutions(problem.val_loss, problem, h, tasks, solver,
                              compilation=compilation).mean()
