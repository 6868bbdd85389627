"""Estimators that carry state across calls: the single-loop stochastic bilevel solvers
(SOBA, AmIGO, BOME, F2SA), as benchopt's benchmark_bilevel runs them.

A `StatefulEstimator` keeps, for each task slot i of the batch, variables that persist from
one outer step to the next (an inner iterate z_i, an auxiliary v_i ~ -H^-1 d_phi val_loss,
a penalty, a step counter). Its state is a dict of tensors (nested dicts allowed), every
leaf with a leading dimension of the number of tasks: slot i belongs to the i-th task of
every batch it is called with. The methods make sense when each call sees the same tasks
in the same order (hyperparameter tuning: `tasks_per_step` = the problem's tasks, drawn in
a fixed order), or minibatches of the same task in each slot (stochastic bilevel
optimisation: one slot, a fresh minibatch of one problem every step); tasks that change
from step to step get an inner iterate made for another task.

One call is one single-loop iteration:

    estimator(problem, h, tasks, solver, state=None) -> (direction, info)

with `info.state` the state after the iteration, to pass to the next call. With
state=None the call starts one (`init_state`): each task's inner problem solved by `solver`
from `problem.inner_init` (solver.steps gradients: a solver of one step starts from
`inner_init` as benchmark_bilevel does), made into the task's state by the method's
`start`. The direction is for h: the outer optimizer applies it (its lr is the method's
outer step size). The per-task iteration `update(state_i, h, task_i)` is written for ONE
task and batched with vmap, compiled as `compilation` says, like every estimator's work.
`hypergradient(..., state=...)` and `meta_train` (which keeps the state in its checkpoints,
so a resumed run continues bit for bit) call it so; a state whose tasks or shapes do not
match the call is refused (`check_state`).
"""

import abc
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch.func import grad, grad_and_value

from bilevel import compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.errors import InvalidInputError
from bilevel.estimators.base import Estimator, solver_lr
from bilevel.info import INNER_GRAD_RATIO, LOSS_KEY, Cost, Info
from bilevel.inner import grad_ratio, solve_batch
from bilevel.tree import keystr, ravel, tree_leaves_with_path, tree_map, tree_structure

# The state's entry that the base keeps for every task: the inner gradient norm at
# problem.inner_init (the first solve's first), against which info["inner_grad_ratio"]
# judges every call's (0 when the solver does not report it), as meta_train's divergence
# check reads it: an inner variable that blows up stops the run.
START_NORM = "grad_norm_start"


class StatefulEstimator(Estimator):
    """The base of an estimator with declared state (the module's docstring). A subclass,
    a frozen dataclass of its options registered by name, defines for ONE task:

    start(problem, phi, h, task) -> state_i: the task's state from the solver's inner
        solution phi;
    update(problem, state_i, h, task, lr) -> (direction_i, new_state_i, stats_i): one
        iteration, stats_i holding LOSS_KEY (val_loss at the iterate the direction is
        taken at), "grad_norm" (||d_phi g|| there) and the method's per-task diagnostics;
    cost: the Cost of one iteration of one task; inner_updates: the inner-variable
        updates of one iteration (Info's inner_steps);
    the base adds the entry START_NORM to every task's state and reports
    info["inner_grad_ratio"] = grad_norm / that (meta_train's divergence check reads it);
    and its option `lr` (None: the solver's lr), the inner step size.
    """

    stateful: ClassVar[bool] = True
    lr: float | None  # each subclass's dataclass field (an annotation here, not a field)

    @abc.abstractmethod
    def start(self, problem, phi: dict, h: dict, task) -> dict:
        """The state of one task, from the solver's inner solution phi."""

    @abc.abstractmethod
    def update(self, problem, state: dict, h: dict, task,
               lr: float) -> tuple[dict, dict, dict]:
        """(direction for h, new state, stats) of one iteration on one task."""

    @property
    @abc.abstractmethod
    def cost(self) -> Cost:
        """The cost of one iteration on one task."""

    @property
    def inner_updates(self) -> int:
        """The inner-variable updates of one iteration (Info's inner_steps)."""
        return 1

    def step_size(self, solver) -> float:
        """The inner step size: the option `lr`, or the solver's."""
        if self.lr is not None:
            return self.lr
        return solver_lr(solver, f"{self.name} needs lr, or a solver with a step size lr "
                                 "(lr's default)")

    def init_state(self, problem, h: dict, tasks, solver, *,
                   compilation: Compilation = EAGER) -> tuple[dict, dict]:
        """(state, stats): every task's inner problem solved by `solver` from
        problem.inner_init (one batch), made into its state by `start`, with START_NORM;
        the solver's stats."""
        def start(phi, h, task):
            return self.start(problem, phi, h, task)

        state, stats = solve_batch(solver, problem.inner_objective, problem.inner_init,
                                   (h, tasks), (None, 0), compilation, then=start)
        start_norm = stats.get("grad_norm_start", torch.zeros_like(stats["grad_norm"]))
        return state | {START_NORM: start_norm}, stats

    def template(self, problem, h: dict, tasks) -> dict:
        """The state of the first task alone, from problem.inner_init (no solve): the
        structure, shapes (less the task dimension) and dtypes a state must have."""
        task = tree_map(lambda t: t[0], tasks)
        phi = problem.inner_init(h, task)
        start_norm = torch.zeros_like(ravel(phi)[0][0])
        return self.start(problem, phi, h, task) | {START_NORM: start_norm}

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER,
                 state: Mapping | None = None) -> tuple[dict, Info]:
        lr = self.step_size(solver)
        cost = Cost()
        if state is None:
            state, _ = self.init_state(problem, h, tasks, solver, compilation=compilation)
            cost = Cost.solve(solver.steps)
        else:
            check_state(state, self.template(problem, h, tasks),
                        tree_leaves_with_path(tasks)[0][1].shape[0], self.name)

        def iteration(state, h, task):
            return self.update(problem, state, h, task, lr)

        directions, new_state, stats = compiled.batch(
            iteration, (0, None, 0), compilation, f"{self.name}'s iteration")(state, h, tasks)
        n_tasks = stats[LOSS_KEY].shape[0]
        new_state = new_state | {START_NORM: state[START_NORM]}
        ratio = grad_ratio({"grad_norm": stats["grad_norm"], "grad_norm_start": state[START_NORM]})
        per_task = {INNER_GRAD_RATIO: ratio} | {
            k: v for k, v in stats.items() if k not in (LOSS_KEY, "grad_norm")}
        steps = torch.full((n_tasks,), self.inner_updates, device=stats[LOSS_KEY].device)
        info = Info(method=self.name, n_tasks=n_tasks, cost=(cost + self.cost) * n_tasks,
                    inner_grad_norm=stats["grad_norm"], inner_steps=steps,
                    val_loss=stats[LOSS_KEY], per_task=per_task, settings={"inner_lr": lr},
                    state=new_state)
        return tree_map(lambda d: d.mean(0), directions), info


def check_state(state, template: dict, n_tasks: int, method: str) -> None:
    """`state` has the structure of `template` (one task's state), each leaf of its dtype
    and of its shape with a leading dimension of n_tasks; else an InvalidInputError naming
    the leaf, what it is and what was expected."""
    if not isinstance(state, dict) or tree_structure(state) != tree_structure(template):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise InvalidInputError(
            f"state: {method}'s state must be a dict with the keys {sorted(template)} (as "
            f"info.state returns it), got {got}")
    for (path, leaf), (_, one) in zip(tree_leaves_with_path(state),
                                      tree_leaves_with_path(template), strict=True):
        expected = (n_tasks, *one.shape)
        if not isinstance(leaf, torch.Tensor) or leaf.shape != expected or \
                leaf.dtype != one.dtype:
            got = (f"shape {tuple(leaf.shape)} {leaf.dtype}" if isinstance(leaf, torch.Tensor)
                   else repr(leaf))
            raise InvalidInputError(
                f"state{keystr(path)}: {method}'s state has one slot per task, expected shape "
                f"{expected} {one.dtype} for {n_tasks} tasks, got {got}: the number of tasks per "
                "step, the inner parameters' shapes or the dtype changed since the state was "
                "made")


def inner_gradient(problem, unravel, task):
    """(x, h) -> d_phi g(unravel(x), h, task), flat like x: the inner objective's gradient
    in phi for one task, phi given as the flat vector x (`bilevel.tree.ravel`)."""
    def g_phi(x, h):
        return grad(lambda x: problem.inner_objective(unravel(x), h, task))(x)

    return g_phi


def outer_gradients(problem, unravel, x, h, task):
    """((d_phi val_loss flat, d_h val_loss), val_loss) at phi = unravel(x) for one task."""
    return grad_and_value(lambda x, h: problem.val_loss(unravel(x), h, task),
                          argnums=(0, 1))(x, h)


def decayed(lr: float, t: torch.Tensor, exponent: float, like: torch.Tensor) -> torch.Tensor:
    """benchmark_bilevel's step-size schedule lr / (t + 1)^exponent at iteration t = 0, 1,
    ... (benchmark_utils/learning_rate_scheduler.py), in the dtype of `like`."""
    return lr / (t + 1).to(like.dtype) ** exponent
