"""Sinusoid few-shot regression (MAML, Finn et al. 2017), in its MAML and B-MAML forms.

A task draws an amplitude a ~ U[0.1, 5] and a phase p ~ U[0, pi] and asks to fit

    y = a sin(x - p),   x ~ U[-5, 5]

from K support points (x_k, y_k), judged on Q query points (xq_q, yq_q). The model
f_phi is an MLP 1-40-40-1 with ReLU (`hidden` sets the widths, `activation="tanh"` makes
it smooth); phi and theta are
dicts of its tensors ("w0", "b0", ...). Losses are mean squared errors:

    train_loss(phi) = 1/K sum_k (f_phi(x_k) - y_k)^2
    val_loss(phi)   = 1/Q sum_q (f_phi(xq_q) - yq_q)^2

form="bmaml" (paper eq. 6, proximal regulariser):

    phi*(h) = argmin_phi train_loss(phi) + lam/2 ||phi - theta||^2,   F(h) = mean val_loss(phi*)

with h = {"theta", "log_lam"} (lam learned) or h = {"theta"} (lam fixed, learn_lam=False).

form="maml" (paper eq. 1, regularization "none"): phi = the solver's iterate after its
steps of plain gradient descent on train_loss from theta; h = {"theta"}. The implicit
estimators ("fo-bmaml", "exact") return 0 for it, since phi* of an unregularised
problem does not depend on theta: meta-train this form with an estimator that follows
the solver (maml, fomaml, reptile).
"""

import math
from collections.abc import Sequence

import torch

from bilevel import InvalidInputError, checks
from problems.mlp import MLPPrior, mlp

AMPLITUDE, PHASE, INPUT = (0.1, 5.0), (0.0, math.pi), (-5.0, 5.0)
# ReLU is MAML's choice; tanh makes the inner problem smooth, for exact gradient checks.
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class Sinusoid(MLPPrior):
    """K-shot sinusoid regression; `form` is "bmaml" (proximal, lam) or "maml" (no regulariser).

    Args:
        shots: support points per task (K)
        queries: query points per task (Q)
        hidden: the MLP's hidden widths
        form: bmaml (proximal prior, lam) or maml (no regulariser: phi follows the solver)
        lam: the prior's strength (its start when learned; bmaml only)
        learn_lam: learn lam as h['log_lam'] (false: fixed; bmaml only)
        activation: the MLP's activation, relu or tanh (smooth)
    """

    def __init__(self, shots: int = 10, queries: int = 10, hidden: Sequence[int] = (40, 40),
                 form: str = "bmaml", lam: float = 1.0, learn_lam: bool = True,
                 activation: str = "relu", dtype=torch.float32, device="cpu"):
        self.shots = checks.integer("shots", shots, minimum=1)
        self.queries = checks.integer("queries", queries, minimum=1)
        self.hidden = tuple(checks.integer("hidden width", w, minimum=1) for w in hidden)
        self.form = checks.one_of("form", form, ("bmaml", "maml"))
        self.activation = ACTIVATIONS[checks.one_of("activation", activation, tuple(ACTIVATIONS))]
        self.regularization = "proximal" if form == "bmaml" else "none"
        if not isinstance(learn_lam, bool):
            raise InvalidInputError(f"learn_lam must be True or False, got {learn_lam!r}")
        self.set_prior((1, *self.hidden, 1), lam, learn_lam and form == "bmaml", dtype, device)

    def sample_tasks(self, n, generator=None):
        """{"x", "y"}: (n, shots) support set; {"xq", "yq"}: (n, queries) query set;
        {"amplitude", "phase"}: (n,)."""
        checks.integer("n", n, minimum=1)

        def uniform(shape, bounds):
            low, high = bounds
            u = torch.rand(shape, generator=generator, dtype=self.dtype)
            return (low + (high - low) * u).to(self.device)

        amplitude, phase = uniform((n, 1), AMPLITUDE), uniform((n, 1), PHASE)
        x, xq = uniform((n, self.shots), INPUT), uniform((n, self.queries), INPUT)
        return {"x": x, "y": amplitude * torch.sin(x - phase),
                "xq": xq, "yq": amplitude * torch.sin(xq - phase),
                "amplitude": amplitude[:, 0], "phase": phase[:, 0]}

    def predict(self, phi, x):
        """f_phi at the points x (shape (m,)): shape (m,)."""
        return mlp(phi, x[:, None], self.activation)[:, 0]

    def train_loss(self, phi, h, task):
        return ((self.predict(phi, task["x"]) - task["y"]) ** 2).mean()

    def val_loss(self, phi, h, task):
        return ((self.predict(phi, task["xq"]) - task["yq"]) ** 2).mean()
