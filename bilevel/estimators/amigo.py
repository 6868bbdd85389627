"""AmIGO: Amortized Implicit Gradient Optimization (Arbel and Mairal, ICLR 2022), as
benchopt's benchmark_bilevel runs it (solvers/amigo.py, benchmark_utils/sgd_inner.py and
hessian_approximation.py's sgd_v_jax).

One iteration for one task, at the state (z, v) (z ~ phi*(h), v ~ H^-1 d_phi val_loss),
both warm-started from the previous iteration (the amortization):

    z <- z - lr d_phi g(z, h)                    inner_steps times
    b  = d_phi val_loss(z, h),  H = d_phi^2 g(z, h)
    v <- v - lr (H v - b)                        inner_steps times (GD on 1/2 v'Hv - b'v)
    direction = d_h val_loss(z, h) - d_h d_phi g(z, h) v

With h fixed, z -> phi*(h), v -> H^-1 b and the direction -> grad F(h). The products with
H and the mixed product are pull-backs of one reverse pass through d_phi g at the final z.
benchmark_bilevel defaults: step_size 0.1 (here: the solver's lr) for z and v, constant,
n_inner_steps 10.
"""

import dataclasses

import torch
from torch.func import vjp

from bilevel import checks
from bilevel.estimators.base import estimators
from bilevel.estimators.stateful import StatefulEstimator, inner_gradient, outer_gradients
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map


@estimators.register("amigo")
@dataclasses.dataclass(frozen=True)
class AmIGO(StatefulEstimator):
    """AmIGO: inner_steps warm-started GD steps on z, then on v, per call.

    lr: the step size of z and v (null: the solver's lr); inner_steps: the steps of each.
    """

    lr: float | None = checks.option("step size of z and v (null: the solver's lr)", None,
                                     above=0)
    inner_steps: int = checks.option("GD steps on z, then on v, per call", 10, minimum=1)

    @property
    def inner_updates(self) -> int:
        return self.inner_steps

    @property
    def cost(self) -> Cost:
        k = self.inner_steps
        # d_phi g: k gradients moving z, one more traced for the pull-back of the products.
        return Cost(inner_grad_evals=k, grad_evals=k + 1, hvps=k, mixed_products=1)

    def start(self, problem, phi, h, task):
        return {"z": phi, "v": tree_map(torch.zeros_like, phi)}

    def update(self, problem, state, h, task, lr):
        z, unravel = ravel(state["z"])
        v = ravel(state["v"])[0]
        g_phi = inner_gradient(problem, unravel, task)
        for _ in range(self.inner_steps):
            z = z - lr * g_phi(z, h)
        (f_phi, f_h), val_loss = outer_gradients(problem, unravel, z, h, task)
        g, pull_back = vjp(g_phi, z, h)
        for _ in range(self.inner_steps):
            v = v - lr * (pull_back(v)[0] - f_phi)
        mixed = pull_back(v)[1]
        return (tree_map(torch.sub, f_h, mixed), {"z": unravel(z), "v": unravel(v)},
                {LOSS_KEY: val_loss, "grad_norm": torch.linalg.vector_norm(g)})
