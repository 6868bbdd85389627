"""Warm-starting the inner solves across outer steps (`meta_train(..., warm_start=...)`).

For a problem whose tasks are the same at every outer step (hyperparameter tuning: one
task, the same data each step), the inner solution of step t - 1 is a good start at step
t, where h has moved a little. With `WarmStart(steps=k, estimator_steps=k')`, outer step t
does

    phi_t   = k solver steps on g(., h_t) from phi_{t-1}      (step 1: from
              problem.inner_init, with the solver's own steps)
    g, info = hypergradient(ProblemView(problem, start=True), h_t,
                            {"task": tasks, "start": phi_t}, solver=solver.with_steps(k'))

The estimator is unchanged: it starts its solves where `problem.inner_init` says, and
the view (`bilevel.problem_view.ProblemView`) answers with the task's "start". So
fo-bmaml's stencil points all start at phi_t and run k' steps in lock-step, fomaml's and
imaml's solve continues from phi_t for k' steps, and so on; the start is a constant to
them (maml does not differentiate through it). The step costs the estimator's inner
gradient evaluations plus k per task (the first step: the solver's steps), and `meta_train`
logs both in `inner_grad_evals`.

phi_t is part of the run's state: checkpoints hold it, so a resumed run continues bit for
bit. The tasks must not change from step to step: a fingerprint of the batch (SHA-256 of
its tensors) is kept with phi_t, and a step whose batch differs is an error.
"""

import dataclasses

import torch

from bilevel import checks
from bilevel.compiled import Compilation
from bilevel.errors import InvalidInputError
from bilevel.info import per_task_scalars
from bilevel.inner import grad_ratio, solve_batch, solve_from
from bilevel.problem_view import ProblemView
from bilevel.tree import fingerprint, tree_map

# The per-task entry of how far the warm solves got, against the first step's cold start.
GRAD_RATIO = "warm_start_grad_ratio"


@dataclasses.dataclass(frozen=True)
class WarmStart(checks.Options):
    """Warm-start the inner solves across outer steps, for problems whose tasks are the
    same every step (bilevel.training.warm_start).

    steps: solver steps that continue each task's unperturbed solve from the previous
    outer step's solution (the first step solves from `inner_init` with the solver's
    steps); estimator_steps: the steps of the estimator's own solves, started at that
    solution (None: `steps`)."""

    key, required = "warm_start", "steps"
    steps: int = checks.option("solver steps continuing each step's unperturbed solve from "
                               "the previous step's solution", minimum=1)
    estimator_steps: int | None = checks.option("steps of the estimator's solves, started "
                                                "there (null: steps)", None, minimum=1)

    def estimator_solver(self, solver):
        """The solver the estimator runs from the warm start."""
        return solver.with_steps(self.estimator_steps or self.steps)

    def continue_solves(self, problem, h, tasks, solver, start=None, *,
                        compile: bool | str | Compilation = False):
        """(phi, stats, steps): every task's unperturbed inner problem at h, solved for
        `steps` steps from `start` (one pytree, leading dim the tasks), or from
        `problem.inner_init` with the solver's steps when `start` is None, in one batch
        compiled as `compile` says (`hypergradient`'s values); `steps` is what each task cost
        in inner gradient evaluations."""
        compilation = Compilation.of(compile)
        if start is None:
            phi, stats = solve_batch(solver, problem.inner_objective, problem.inner_init,
                                     (h, tasks), (None, 0), compilation)
            return phi, stats, solver.steps
        run = solver.with_steps(self.steps)
        phi, stats = solve_from(run, problem.inner_objective, start, (h, tasks), (None, 0),
                                compilation)
        return phi, stats, run.steps


def scalars(stats: dict, evals: int, device) -> list:
    """What the warm solves log, as `Info.scalars` entries: warm_start_inner_grad_evals
    (`evals`, their cost), warm_start_grad_norm_{mean,max} (their final gradient norms)
    and warm_start_grad_ratio_{mean,max}: those norms over the first gradient norm of the
    first step's cold solve (which `meta_train`'s warning on unconverged solves reads
    instead of the estimator's inner_grad_ratio: its solves start at a near-solution)."""
    values = {"warm_start_grad_norm": stats["grad_norm"]}
    if "grad_ratio" in stats:
        values[GRAD_RATIO] = stats["grad_ratio"]
    entries = [("warm_start_inner_grad_evals",
                torch.tensor(float(evals), dtype=torch.float64, device=device), "sum")]
    for name, value in values.items():
        entries += per_task_scalars(name, value, device)
    return entries


class WarmStarts:
    """The state of a warm-started run: the last solutions phi (one per task of the batch),
    the fingerprint of the batch they solve, and the gradient norm at inner_init of the
    first (cold) solve of each task, against which later solves are judged. The warm solves
    are compiled as `compile` says (`hypergradient`'s values)."""

    def __init__(self, spec: WarmStart, problem, *, compile: bool | str | Compilation = False):
        self.spec, self.problem = spec, problem
        self.compilation = Compilation.of(compile)
        # One object: the problem checks are cached on it.
        self.started = ProblemView(problem, start=True)
        self.phi = self.tasks_digest = self.start_norm = None

    def prepare(self, h, tasks, solver, step: int):
        """(problem, tasks, solver) for the estimator at outer step `step`; the new state
        (to `commit` when the step completes); the warm solves' stats and their cost in
        inner gradient evaluations per task."""
        digest = fingerprint(tasks)
        if self.tasks_digest is not None and digest != self.tasks_digest:
            raise InvalidInputError(
                f"warm_start: the tasks of outer step {step} differ from those of the previous "
                f"step; warm_start needs a problem whose sample_tasks returns the same batch "
                f"every step (hyperparameter tuning), got another batch from "
                f"{type(self.problem).__name__}.sample_tasks")
        phi, stats, steps = self.spec.continue_solves(self.problem, h, tasks, solver, self.phi,
                                                      compile=self.compilation)
        phi = tree_map(torch.Tensor.detach, phi)
        start_norm = self.start_norm
        if start_norm is None:
            start_norm = stats.get("grad_norm_start")
        if start_norm is not None:
            stats = stats | {"grad_ratio": grad_ratio(stats | {"grad_norm_start": start_norm})}
        call = (self.started, {"task": tasks, "start": phi}, self.spec.estimator_solver(solver))
        return call, (phi, digest, start_norm), stats, steps

    def commit(self, new) -> None:
        self.phi, self.tasks_digest, self.start_norm = new

    def state(self) -> dict:
        def cpu(tree):
            return None if tree is None else tree_map(lambda t: t.detach().cpu(), tree)

        return {"phi": cpu(self.phi), "tasks_digest": self.tasks_digest,
                "start_norm": cpu(self.start_norm)}

    def restore(self, state: dict, device) -> None:
        def to_device(tree):
            return None if tree is None else tree_map(lambda t: t.to(device), tree)

        self.phi, self.start_norm = to_device(state["phi"]), to_device(state["start_norm"])
        self.tasks_digest = state["tasks_digest"]
