"""F2SA: Fully First-order Stochastic Approximation (Kwon, Kwon, Wright and Nowak, ICML
2023), with its growing penalty, as benchopt's benchmark_bilevel runs it (solvers/f2sa.py).

F2SA replaces the bilevel problem by the penalty min_h min_y val_loss(y, h) + lambda (g(y,
h) - min_z g(z, h)), lambda growing. One iteration t = 0, 1, ... for one task, at the state
(y, z, lambda) (y ~ argmin val_loss / lambda + g, z ~ phi*(h)):

    y <- y - a_t (lambda d_phi g(y, h) + d_phi val_loss(y, h))     inner_steps times,
    z <- z - c_t d_phi g(z, h)                                     in lock-step
    direction = d_h val_loss(y, h) + lambda (d_h g(y, h) - d_h g(z, h))
    lambda <- lambda + delta_lambda / (t + 1)^(1/7)

with a_t = lr / (t + 1)^(5/7), c_t = lr / (t + 1)^(4/7) (`decay`; constant steps and
lambda <- lambda + delta_lambda without). No second derivative. At the penalty's solution
(y, z exact) the direction is grad F(h) up to O(1/lambda): on a quadratic,
-d_h d_phi g (H + H_val / lambda)^-1 d_phi val_loss(phi*) + d_h val_loss terms. The y steps
are stable while a_t (lambda L_g + L_val) < 2: lambda grows, so lr must leave room.
benchmark_bilevel defaults: step_size 0.01 (here: the solver's lr), lmbda0 1, delta_lmbda
0.1, n_inner_steps 10, the decaying schedules above.
"""

import dataclasses

import torch
from torch.func import grad

from bilevel import checks
from bilevel.estimators.base import estimators
from bilevel.estimators.stateful import (
    StatefulEstimator,
    decayed,
    inner_gradient,
)
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map

# benchmark_bilevel's exponents of the schedules of y's and z's steps and of lambda's growth.
Y_DECAY, Z_DECAY, LAMBDA_DECAY = 5 / 7, 4 / 7, 1 / 7


@estimators.register("f2sa")
@dataclasses.dataclass(frozen=True)
class F2SA(StatefulEstimator):
    """F2SA: inner_steps steps of y and z per call, a first-order direction for h, and the
    penalty lambda grown.

    lr: the step size of y and z (null: the solver's lr); inner_steps: their steps per call;
    lmbda0: lambda at the first call; delta_lmbda: its growth; decay: benchmark_bilevel's
    polynomial schedules (false: constant steps, lambda growing by delta_lmbda a call).
    """

    lr: float | None = checks.option("step size of y and z (null: the solver's lr)", None,
                                     above=0)
    inner_steps: int = checks.option("steps of y and z per call", 10, minimum=1)
    lmbda0: float = checks.option("the penalty lambda at the first call", 1.0, above=0)
    delta_lmbda: float = checks.option("lambda's growth per call, divided by (t + 1)^(1/7) "
                                       "with decay (>= 0)", 0.1)
    decay: bool = checks.option("benchmark_bilevel's decaying schedules of the steps and of "
                                "lambda's growth (false: constant)", True)

    def __post_init__(self):
        super().__post_init__()
        checks.non_negative("delta_lmbda", self.delta_lmbda)

    @property
    def inner_updates(self) -> int:
        return self.inner_steps

    @property
    def cost(self) -> Cost:
        k = self.inner_steps
        # d_phi g at y and at z each step; d_h g at y and at z once.
        return Cost(inner_grad_evals=2 * k, grad_evals=2 * k + 2)

    def start(self, problem, phi, h, task):
        flat = ravel(phi)[0]
        return {"y": phi, "z": phi, "lmbda": torch.zeros_like(flat[0]) + self.lmbda0,
                "t": torch.zeros_like(flat[0], dtype=torch.int64)}

    def update(self, problem, state, h, task, lr):
        y, unravel = ravel(state["y"])
        z = ravel(state["z"])[0]
        t, lam = state["t"], state["lmbda"]
        exponents = (Y_DECAY, Z_DECAY, LAMBDA_DECAY) if self.decay else (0.0, 0.0, 0.0)
        a, c, grow = (decayed(rate, t, e, y) for rate, e in
                      zip((lr, lr, self.delta_lmbda), exponents, strict=True))
        g_phi = inner_gradient(problem, unravel, task)

        def val_phi(x):
            return grad(lambda x: problem.val_loss(unravel(x), h, task))(x)

        for _ in range(self.inner_steps):
            g_z = g_phi(z, h)
            y, z = y - a * (lam * g_phi(y, h) + val_phi(y)), z - c * g_z

        def g_h(x):
            return grad(lambda h: problem.inner_objective(unravel(x), h, task))(h)

        f_h = grad(lambda h: problem.val_loss(unravel(y), h, task))(h)
        direction = tree_map(lambda f, gy, gz: f + lam * (gy - gz), f_h, g_h(y), g_h(z))
        new = {"y": unravel(y), "z": unravel(z), "lmbda": lam + grow, "t": t + 1}
        return direction, new, {LOSS_KEY: problem.val_loss(unravel(z), h, task),
                                "grad_norm": torch.linalg.vector_norm(g_z), "lmbda": lam}
