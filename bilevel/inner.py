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
    solved in one vmapped batch (compiled as `compilation` says): one value (or dict of
    values) per task, stacked; with `with_stats`, also the solver's stats of every task.
    Costs solver.steps inner gradient evaluations per task."""
    inits = vmap(problem.inner_init, in_dims=(None, 0))(h, tasks)
    phi, stats = solve_batch(solver, problem.inner_objective, inits, (h, tasks), (None, 0),
                             compilation)
    values = compiled.batch(metric, (0, None, 0), compilation)(phi, h, tasks)
    return (values, stats) if with_stats else values


def solve_batch(solver, objective, inits, args, in_dims, compilation: Compilation):
    """phi_K and the solver's stats of every task, stacked: argmin_phi objective(phi, *a)
    for each task's arguments `a` (`args` batched as `in_dims` says, vmap's convention),
    from its row of `inits` (leading dim: the tasks), compiled as `compilation` says.

    A stepwise solver runs through `run_steps` (compiled in chunks of UNROLL steps); a
    solver that only defines `run` is vmapped whole (and compiled whole, unrolled).
    """
    if not solver.stepwise:
        def one_solve(init, *args):
            return solver.run(grad(lambda phi: objective(phi, *args)), init)

        return compiled.batch(one_solve, (0, *in_dims), compilation)(inits, *args)

    def one_step(k, state, *args):
        return solver.step(k, *state, grad(lambda phi: objective(phi, *args)))

    def finish(state):
        return solver.finish(*state)

    return run_steps(solver.start, one_step, finish, solver.steps, inits, args, in_dims,
                     compilation)


def run_steps(start, step, finish, steps: int, inits, args, in_dims,
              compilation: Compilation):
    """finish(state_K) for every task, where state_0 = start(init) and state_{k+1} =
    step(k, state_k, *a), a task's row of `inits` and its arguments `a` (`args` batched as
    `in_dims` says).

    Eagerly: the whole loop of one task, vmapped. Compiled (`compilation.active`): a chunk of
    `UNROLL` steps compiled once, batched over the tasks, and called steps / UNROLL times
    (a shorter chunk for the remainder) with the index of its first step a 0-dim float64
    tensor, an input rather than a constant baked into the code: the compile time does not
    grow with the steps. `step` uses k in arithmetic only; start and finish, a few
    operators each, run eagerly.
    """
    if not compilation.active:
        def one_task(init, *args):
            state = start(init)
            for k in range(steps):
                state = step(k, state, *args)
            return finish(state)

        return compiled.batch(one_task, (0, *in_dims), compilation)(inits, *args)

    def chunk(first, state, *args, length):
        for i in range(length):
            state = step(first + i, state, *args)
        return state

    # vmap hands back what does not depend on the task (a step count) expanded, with
    # stride 0: contiguous, every chunk sees the same strides and reuses one graph.
    state = tree_map(torch.Tensor.contiguous, vmap(start)(inits))
    device = tree_leaves(inits)[0].device
    for first in range(0, steps, UNROLL):
        length = min(UNROLL, steps - first)
        run_chunk = compiled.batch(functools.partial(chunk, length=length),
                                   (None, 0, *in_dims), compilation)
        # torch.full, not torch.tensor: a copy from the host would wait for the GPU.
        state = run_chunk(torch.full((), float(first), dtype=torch.float64, device=device),
                          state, *args)
    return vmap(finish)(state)


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
