"""A problem and a solver wrapper that count the derivatives an estimator evaluates.

What a "call" means under `torch.func`. The transforms trace a Python function once and
run the traced operations on whole batches, so a Python counter inside `train_loss`
sees one call per *trace*, not per task. `DerivativeCounter.record` therefore reads the
functorch interpreter stack at the moment of the call:

    multiplicity  the product of the batch sizes of the enclosing `vmap`s: a call traced
                  once under vmap over n tasks is n evaluations (`torch.func.hessian`'s
                  inner vmap over the n_params coordinates counts too)
    order         the number of enclosing differentiation transforms (`grad`, `vjp`,
                  `jvp`, and those built on them): the derivative order evaluated

and counts `multiplicity` first-order evaluations when order >= 1 (a gradient, or the
gradient that a second-order product evaluates on its way) and `multiplicity`
second-order products when order >= 2 (a Hessian-vector or mixed product). These are
`bilevel.info.Cost`'s grad_evals and hvps + mixed_products. The solver's own gradient
calls are counted the same way by `CountingSolver` (Cost.inner_grad_evals).
"""

import dataclasses
import math

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import VmapInterpreter, retrieve_all_functorch_interpreters

from bilevel.problem import BilevelProblem
from bilevel.solvers import InnerSolver, Tangents

_DIFFERENTIATING = (TransformType.Grad, TransformType.Jvp)


def transforms() -> tuple[int, int]:
    """(order, multiplicity) of a call made now: the number of enclosing differentiation
    transforms and the product of the enclosing vmaps' batch sizes."""
    stack = retrieve_all_functorch_interpreters()
    order = sum(i.key() in _DIFFERENTIATING for i in stack)
    return order, math.prod(i.batch_size() for i in stack if isinstance(i, VmapInterpreter))


@dataclasses.dataclass
class DerivativeCounter:
    """Evaluations counted so far (see the module's docstring); `reset()` zeroes them."""

    first_order: int = 0
    second_order: int = 0

    def record(self) -> None:
        order, multiplicity = transforms()
        if order >= 1:
            self.first_order += multiplicity
        if order >= 2:
            self.second_order += multiplicity

    def reset(self) -> None:
        self.first_order = self.second_order = 0


class CountingQuadratic(BilevelProblem):
    """n_tasks quadratic tasks in dimension `dim`, with closed forms, that count the
    derivatives of train_loss evaluated (`counter`, a `DerivativeCounter`):

        train_loss = 1/2 w^T A_i w + b_i^T w,   val_loss = 1/2 w^T C_i w + d_i^T w

    A_i, C_i with eigenvalues log-spaced on [1, kappa], the proximal regulariser with one
    lam per coordinate (lam in [e^-1, e]): the inner Hessian A_i + diag(lam) has its
    eigenvalues in [1, kappa + e], so GD with lr = 1 / (kappa + 3) converges. h also holds
    a hyperparameter that no loss reads (h["unused"]): its hypergradient is zero.
    """

    def __init__(self, dim=5, kappa=10.0, n_tasks=4, seed=0, dtype=torch.float64,
                 device="cpu"):
        self.dim, self.kappa, self.n_tasks = dim, kappa, n_tasks
        self.dtype, self.device = dtype, torch.device(device)
        self.counter = DerivativeCounter()
        generator = torch.Generator().manual_seed(seed)
        spectrum = torch.logspace(0, math.log10(kappa), dim, dtype=torch.float64)

        def matrices():
            rotation, _ = torch.linalg.qr(torch.randn(n_tasks, dim, dim, generator=generator,
                                                      dtype=torch.float64))
            return rotation @ torch.diag(spectrum) @ rotation.mT

        def vectors():
            return torch.randn(n_tasks, dim, generator=generator, dtype=torch.float64)

        pool = {"A": matrices(), "b": vectors(), "C": matrices(), "d": vectors()}
        self.pool = {k: v.to(dtype=dtype, device=self.device) for k, v in pool.items()}

    def init_hyper(self, generator=None):
        def tensor(value):
            return value.to(dtype=self.dtype, device=self.device)

        theta = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        return {"theta": {"w": tensor(theta)},
                "log_lam": {"w": tensor(torch.linspace(-1, 1, self.dim))},
                "unused": {"scale": tensor(torch.tensor(2.0))}}

    def sample_tasks(self, n, generator=None):
        index = torch.randint(self.n_tasks, (n,), generator=generator).to(self.device)
        return {k: v[index] for k, v in self.pool.items()}

    def all_tasks(self) -> dict:
        return dict(self.pool)

    def train_loss(self, phi, h, task):
        self.counter.record()
        w = phi["w"]
        return 0.5 * w @ task["A"] @ w + task["b"] @ w

    def val_loss(self, phi, h, task):
        w = phi["w"]
        return 0.5 * w @ task["C"] @ w + task["d"] @ w

    def solution(self, h, task) -> dict:
        """phi*(h) of one task: (A + diag(lam)) w = lam theta - b."""
        lam = self.lam(h)["w"]
        w = torch.linalg.solve(task["A"] + torch.diag(lam), lam * h["theta"]["w"] - task["b"])
        return {"w": w}

    def outer_loss(self, h, tasks) -> torch.Tensor:
        """F(h) = mean over tasks of val_loss(phi*_i(h)), in closed form."""
        return torch.func.vmap(lambda task: self.val_loss(self.solution(h, task), h, task))(
            tasks).mean()


@dataclasses.dataclass(frozen=True)
class CountingSolver(InnerSolver):
    """`solver`, with each call of its gradient counted in `counter.first_order` (times
    the enclosing vmaps' batch sizes): an estimator's Cost.inner_grad_evals."""

    solver: InnerSolver
    counter: DerivativeCounter = dataclasses.field(default_factory=DerivativeCounter)

    @property
    def steps(self) -> int:
        return self.solver.steps

    @property
    def lr(self) -> float | None:
        return self.solver.lr

    def with_steps(self, steps: int) -> "CountingSolver":
        return CountingSolver(self.solver.with_steps(steps), self.counter)

    @property
    def stepwise(self) -> bool:
        return self.solver.stepwise

    @property
    def linear_steps(self) -> bool:
        return self.solver.linear_steps

    def _counted(self, grad_fn):
        if isinstance(grad_fn, Tangents):  # fo-bmaml-jvp's maps of its tangents
            return grad_fn

        def counted(phi):
            # Called outside grad_fn's own transform: one gradient per batch element.
            self.counter.first_order += transforms()[1]
            return grad_fn(phi)

        return counted

    def run(self, grad_fn, init):
        return self.solver.run(self._counted(grad_fn), init)

    def start(self, init):
        return self.solver.start(init)

    def step(self, k, x, aux, grad_fn):
        return self.solver.step(k, x, aux, self._counted(grad_fn))

    def finish(self, x, aux):
        return self.solver.finish(x, aux)
