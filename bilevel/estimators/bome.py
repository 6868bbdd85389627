"""BOME: Bilevel Optimization Made Easy (Ye, Liu, Wright, Stone and Liu, NeurIPS 2022), as
benchopt's benchmark_bilevel runs it (solvers/bome.py, choice_phi "grad_norm").

BOME solves min val_loss(z, h) subject to q(z, h) = g(z, h) - g(z*, h) <= 0, z* ~ phi*(h),
by a first-order step on (z, h) that lowers val_loss and q together. One iteration for one
task, at the state z:

    z* = inner_steps GD steps on g(., h) from z, step lr
    q' = (d_phi g(z, h), d_h g(z, h) - d_h g(z*, h))         (z* held fixed)
    f' = (d_phi val_loss(z, h), d_h val_loss(z, h))
    lambda = max(eta ||q'||^2 - <f', q'>, 0) / ||q'||^2       (0 where q' = 0)
    z <- z - lr (f'_phi + lambda q'_phi);  direction for h = f'_h + lambda q'_h

with norms and inner products over (phi, h) jointly. Its fixed points are KKT points of
the value-function problem: the direction is not grad F(h) at a fixed h, but driving h with
the outer optimizer reaches the bilevel solution up to the error of z* (inner_steps). Over
a batch each task has its own z and lambda (one constraint per task) and the directions are
averaged. benchmark_bilevel defaults: step_size 0.1 (here: the solver's lr), eta 0.5,
n_inner_steps 10, constant steps.
"""

import dataclasses

import torch
from torch.func import grad

from bilevel import checks
from bilevel.estimators.base import estimators
from bilevel.estimators.imaml import safe_divide
from bilevel.estimators.stateful import StatefulEstimator, inner_gradient, outer_gradients
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_dot, tree_map, tree_sq_norm


@estimators.register("bome")
@dataclasses.dataclass(frozen=True)
class BOME(StatefulEstimator):
    """BOME: one step of z and one direction for h per call, from inner_steps GD steps.

    lr: the step size of z and of the GD steps to z* (null: the solver's lr); inner_steps:
    those steps; eta: the target rate of decrease of q, eta ||q'||^2.
    """

    lr: float | None = checks.option("step size of z and of the steps to z* (null: the "
                                     "solver's lr)", None, above=0)
    inner_steps: int = checks.option("GD steps on g from z to z* per call", 10, minimum=1)
    eta: float = checks.option("the multiplier's target decrease of q: eta ||grad q||^2",
                               0.5, above=0)

    @property
    def inner_updates(self) -> int:
        return self.inner_steps + 1

    @property
    def cost(self) -> Cost:
        k = self.inner_steps
        # k gradients to z*, d g(z, h) in (phi, h) once (it moves z), d_h g(z*, h) once.
        return Cost(inner_grad_evals=k + 1, grad_evals=k + 2)

    def start(self, problem, phi, h, task):
        return {"z": phi}

    def update(self, problem, state, h, task, lr):
        z, unravel = ravel(state["z"])
        g_phi = inner_gradient(problem, unravel, task)
        star = z
        for _ in range(self.inner_steps):
            star = star - lr * g_phi(star, h)
        (f_phi, f_h), val_loss = outer_gradients(problem, unravel, z, h, task)
        q_phi, g_h = grad(lambda x, h: problem.inner_objective(unravel(x), h, task),
                          argnums=(0, 1))(z, h)
        g_star_h = grad(lambda h: problem.inner_objective(unravel(star), h, task))(h)
        q_h = tree_map(torch.sub, g_h, g_star_h)
        squared = q_phi @ q_phi + tree_sq_norm(q_h)
        dot = f_phi @ q_phi + tree_dot(f_h, q_h)
        lam = safe_divide(torch.clamp(self.eta * squared - dot, min=0), squared)
        direction = tree_map(lambda f, q: f + lam * q, f_h, q_h)
        return (direction, {"z": unravel(z - lr * (f_phi + lam * q_phi))},
                {LOSS_KEY: val_loss, "grad_norm": torch.linalg.vector_norm(q_phi),
                 "bome_lambda": lam})
