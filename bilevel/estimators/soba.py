"""SOBA: the StOchastic Bilevel Algorithm (Dagreou, Ablin, Vaiter and Moreau, NeurIPS 2022),
as benchopt's benchmark_bilevel runs it (solvers/soba.py).

One iteration t = 0, 1, ... for one task, at the state (z, v) (z ~ phi*(h), v ~ -H^-1
d_phi val_loss, H = d_phi^2 g(z, h)), with rho_t = lr / (t + 1)^decay:

    direction = d_h val_loss(z, h) + d_h d_phi g(z, h) v        (for h: the outer step)
    z <- z - rho_t d_phi g(z, h)
    v <- v - rho_t (H v + d_phi val_loss(z, h))

all three read at the same (z, v). With h fixed, z -> phi*(h), v -> -H^-1 d_phi val_loss and
the direction -> grad F(h) (the implicit hypergradient, as `exact`'s). The Hessian-vector and
mixed products come from one pull-back of one reverse pass through d_phi g. benchmark_bilevel
defaults: step_size 0.1 (here: the solver's lr), decay 1/2 for z and v (and for the outer
step, which is the outer optimizer's: its scheduler).
"""

import dataclasses

import torch
from torch.func import vjp

from bilevel import checks
from bilevel.estimators.base import estimators
from bilevel.estimators.stateful import (
    StatefulEstimator,
    decayed,
    inner_gradient,
    outer_gradients,
)
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import ravel, tree_map


@estimators.register("soba")
@dataclasses.dataclass(frozen=True)
class SOBA(StatefulEstimator):
    """SOBA: one joint step of the inner iterate z and of v ~ -H^-1 d_phi val_loss per call.

    lr: the step size of z and v (null: the solver's lr); decay: its schedule's exponent,
    lr / (t + 1)^decay at iteration t (0: constant).
    """

    lr: float | None = checks.option("step size of z and v (null: the solver's lr)", None,
                                     above=0)
    decay: float = checks.option("exponent of the step-size schedule lr / (t + 1)^decay "
                                 "(0: constant; >= 0)", 0.5)

    cost = Cost(inner_grad_evals=1, grad_evals=1, hvps=1, mixed_products=1)

    def __post_init__(self):
        super().__post_init__()
        checks.non_negative("decay", self.decay)

    def start(self, problem, phi, h, task):
        return {"z": phi, "v": tree_map(torch.zeros_like, phi),
                "t": torch.zeros_like(ravel(phi)[0][0], dtype=torch.int64)}

    def update(self, problem, state, h, task, lr):
        z, unravel = ravel(state["z"])
        v = ravel(state["v"])[0]
        g, pull_back = vjp(inner_gradient(problem, unravel, task), z, h)
        hvp, cross = pull_back(v)
        (f_phi, f_h), val_loss = outer_gradients(problem, unravel, z, h, task)
        rho = decayed(lr, state["t"], self.decay, z)
        new = {"z": unravel(z - rho * g), "v": unravel(v - rho * (hvp + f_phi)),
               "t": state["t"] + 1}
        return (tree_map(torch.add, f_h, cross), new,
                {LOSS_KEY: val_loss, "grad_norm": torch.linalg.vector_norm(g)})
