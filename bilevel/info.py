"""What an estimator reports beside its gradient: `Info`, with its cost (`Cost`), and the
one rule by which the trainer logs its entries and combines them over processes.

Entries of an `Info`, by kind, and how each is logged (one record per outer step):

    kind          entries                                   logged as, combined over processes
    count         n_tasks and the `Cost` fields             <name>, summed
    per task      inner_grad_norm, inner_steps, per_task    <name>_mean (a task-weighted mean)
                  (one value per task)                      and <name>_max (a maximum)
    outer loss    val_loss (one value per task)             "loss", a task-weighted mean
    setting       settings (nu, scheme, ...)                <name> if a number, as is (every
                                                            process holds the same); strings
                                                            are not logged (settings.json)

`Info` is a read-only Mapping: info["inner_grad_evals"], info["nu"] and info["cg_steps"]
read a field, a setting and a per-task entry alike.
"""

import dataclasses
from collections.abc import Mapping

import torch

# The key of the outer loss of each task in `Info`: val_loss(phi_i, h, task_i) at the inner
# solutions; the trainer logs its mean over the step's tasks as "loss".
LOSS_KEY = "val_loss"
# The per-task entry of how far each inner solve got: its final gradient norm over its first
# (`bilevel.inner.grad_ratio`); logged as per_task_name(INNER_GRAD_RATIO, "mean" / "max"),
# which the trainer's divergence check and its warning on unconverged solves read.
INNER_GRAD_RATIO = "inner_grad_ratio"


def per_task_name(name: str, op: str) -> str:
    """The logged name of a per-task entry's task-weighted mean (op "mean") or maximum
    ("max") over the tasks."""
    return f"{name}_{op}"


def per_task_scalars(name: str, values: torch.Tensor,
                     device=None) -> list[tuple[str, torch.Tensor, str]]:
    """The two logged entries (`Info.scalars`' form) of a per-task entry: its mean and its
    maximum over the tasks, 0-dim float64 tensors (on `device`, default values' own)."""
    values = values.detach().to(device=device, dtype=torch.float64)
    return [(per_task_name(name, "mean"), values.mean(), "mean"),
            (per_task_name(name, "max"), values.max(), "max")]


@dataclasses.dataclass(frozen=True)
class Cost:
    """The work of one hypergradient (or of one held-out evaluation), all tasks together,
    counted in derivatives of the inner objective g(phi, h) = train_loss + lam * Reg.

    inner_grad_evals  gradients d_phi g taken by the inner solver: solver.steps per solve
                      and task (with a tolerance too: frozen tasks are masked, not skipped)
    grad_evals        every evaluation of a derivative of g, first order or higher, in phi
                      or in h: the solver's gradients, fo-bmaml's psi = d_h g at each
                      stencil point and the two gradients of g that its nu="auto" reads
                      (and two of val_loss, not counted), and the gradient that the
                      second-order products below evaluate on their way (once per product,
                      or once for all the products of one reused pull-back: imaml's CG)
    hvps              products d_phi^2 g . v with the inner Hessian: maml's backward
                      pass through each step, fo-bmaml-jvp's tangent of each step, imaml's
                      conjugate-gradient steps; exact forms its dense Hessian from n_params
                      of them (torch.func.hessian: one per coordinate of phi)
    mixed_products    products d_h d_phi g . v (imaml, exact, fo-bmaml-jvp: one per task)

    A batch counts once per element: a function vmapped over n tasks evaluated once
    costs n evaluations. Wall time is measured by the caller (the trainer's "time",
    `bilevel.gradcheck`'s "time_s"), since an estimator is a pure function.
    """

    inner_grad_evals: int = 0
    grad_evals: int = 0
    hvps: int = 0
    mixed_products: int = 0

    @classmethod
    def solve(cls, steps: int) -> "Cost":
        """The cost of one inner solve of `steps` steps: as many gradients d_phi g."""
        return cls(inner_grad_evals=steps, grad_evals=steps)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(self.counts(), other.counts(), strict=True)))

    def __mul__(self, n: int) -> "Cost":
        return Cost(*(n * a for a in self.counts()))

    def counts(self) -> tuple[int, ...]:
        return dataclasses.astuple(self)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Info(Mapping):
    """The diagnostics of one call of an estimator over n tasks.

    method: the estimator's registered name; n_tasks: the number of tasks;
    cost: what the call spent (`Cost`);
    inner_grad_norm, inner_steps: the solver's stats at each task's inner solution
        (fo-bmaml: the slowest point of its stencil);
    val_loss: the outer loss of each task, val_loss(phi_i, h, task_i) at its inner
        solution (fo-bmaml: averaged over the stencil);
    per_task: the estimator's own per-task diagnostics (imaml: cg_steps, cg_residual);
    settings: settings the estimator resolved (fo-bmaml: nu, scheme);
    non_finite_tasks: the indices (in the batch given) of the tasks whose gradient or loss
        was not finite; n_dropped: how many of them `on_non_finite="drop"` left out of the
        average (the other entries then describe the finite tasks only);
    state: a stateful estimator's state after the call (one slot per task; the next call's
        `state`: bilevel.estimators.stateful), None for the others; not a logged entry.
    """

    method: str
    n_tasks: int
    cost: Cost
    inner_grad_norm: torch.Tensor
    inner_steps: torch.Tensor
    val_loss: torch.Tensor
    per_task: Mapping = dataclasses.field(default_factory=dict)
    settings: Mapping = dataclasses.field(default_factory=dict)
    non_finite_tasks: tuple = ()
    n_dropped: int = 0
    state: Mapping | None = None

    def _flat(self) -> dict:
        return {"method": self.method, "n_tasks": self.n_tasks, **self.cost.as_dict(),
                "inner_grad_norm": self.inner_grad_norm, "inner_steps": self.inner_steps,
                LOSS_KEY: self.val_loss, **self.per_task, **self.settings,
                "non_finite_tasks": self.non_finite_tasks, "n_dropped": self.n_dropped}

    def __getitem__(self, key):
        return self._flat()[key]

    def __iter__(self):
        return iter(self._flat())

    def __len__(self) -> int:
        return len(self._flat())

    def scalars(self, device) -> list[tuple[str, torch.Tensor, str]]:
        """(name, 0-dim float64 tensor, op) for every logged entry, op being how processes
        combine it: "sum", "mean" (task-weighted), "max" or "same" (the table above)."""

        def number(value):
            return torch.tensor(value, dtype=torch.float64, device=device)

        entries = [(name, number(value), "sum")
                   for name, value in {"n_tasks": self.n_tasks, **self.cost.as_dict()}.items()]
        entries.append(("loss", self.val_loss.detach().to(torch.float64).mean(), "mean"))
        per_task = {"inner_grad_norm": self.inner_grad_norm, "inner_steps": self.inner_steps,
                    **self.per_task}
        for name, value in per_task.items():
            entries += per_task_scalars(name, value)
        entries += [(name, number(value), "same") for name, value in self.settings.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)]
        return entries
