"""Ridge regression with one learnable L2 weight per feature, and its closed-form hypergradient.

A synthetic dataset (seeded): X ~ N(0, 1) of shape (n, d), half of the features
informative (w_true_j ~ N(0, 1)) and half irrelevant (w_true_j = 0),
y = X w_true + sigma eps; a training set (X, y) and a validation set (Xv, yv).

    train_loss(w) = 1/(2n) ||X w - y||^2
    g(w, h)       = train_loss(w) + sum_j lam_j / 2 w_j^2,   lam = exp(h["log_lam"]["w"])
    w*(h)         = (X^T X / n + diag(lam))^{-1} X^T y / n
    F(h)          = val_loss(w*) = 1/(2 n_v) ||Xv w* - yv||^2

with h = {"log_lam": {"w": (d,)}} and regularization "l2"; the inner solver starts
from w = 0. Closed-form hypergradient (`meta_gradient`), with A = X^T X / n + diag(lam):

    dF/dlog_lam_j = -lam_j w*_j (A^{-1} Xv^T (Xv w* - yv) / n_v)_j

A single-task problem: `sample_tasks(n)` returns the one dataset repeated n times
(leading dim n, a view), so every task of a batch is the same.
"""

import math

import torch
from torch.func import vmap

from bilevel import BilevelProblem, checks


class Ridge(BilevelProblem):
    """Per-feature ridge penalties tuned on a validation set (float64 by default).

    Args:
        n_train: training rows
        n_val: validation rows
        features: features (half of them informative)
        noise: the noise's standard deviation sigma in y
        lam: every feature's L2 weight at the start
        seed: seeds the dataset
    """

    regularization = "l2"

    def __init__(self, n_train: int = 50, n_val: int = 50, features: int = 10,
                 noise: float = 0.5, lam: float = 0.1, seed: int = 0, dtype=torch.float64,
                 device="cpu"):
        self.n_train = checks.integer("n_train", n_train, minimum=1)
        self.n_val = checks.integer("n_val", n_val, minimum=1)
        self.features = checks.integer("features", features, minimum=1)
        self.noise = checks.positive("noise", noise)
        self.lam_init = checks.positive("lam", lam)
        self.dtype, self.device = dtype, torch.device(device)
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        informative = torch.arange(features) < (features + 1) // 2
        w_true = torch.randn(features, generator=generator, dtype=dtype) * informative
        self.data = {}
        for name, size in (("", n_train), ("v", n_val)):
            x = torch.randn(size, features, generator=generator, dtype=dtype)
            y = x @ w_true + noise * torch.randn(size, generator=generator, dtype=dtype)
            self.data |= {f"x{name}": x.to(self.device), f"y{name}": y.to(self.device)}
        self.w_true = w_true.to(self.device)

    def init_hyper(self, generator=None):
        """log_lam = log(lam) for every feature (`generator` is not used)."""
        log_lam = torch.full((self.features,), math.log(self.lam_init), dtype=self.dtype,
                             device=self.device)
        return {"log_lam": {"w": log_lam}}

    def sample_tasks(self, n, generator=None):
        """The dataset {"x", "y", "xv", "yv"} repeated n times (`generator` is not used)."""
        checks.integer("n", n, minimum=1)
        return {k: v.expand(n, *v.shape) for k, v in self.data.items()}

    def inner_init(self, h, task):
        return {"w": torch.zeros(self.features, dtype=self.dtype, device=self.device)}

    def train_loss(self, phi, h, task):
        return 0.5 * ((task["x"] @ phi["w"] - task["y"]) ** 2).mean()

    def val_loss(self, phi, h, task):
        return 0.5 * ((task["xv"] @ phi["w"] - task["yv"]) ** 2).mean()

    def smoothness(self, h) -> float:
        """Largest eigenvalue of the inner Hessian A: a safe GD step is 1 / smoothness."""
        return torch.linalg.eigvalsh(self._hessian(h)).max().item()

    # Closed forms ---------------------------------------------------------------------

    def _hessian(self, h, x=None):
        x = self.data["x"] if x is None else x
        return x.mT @ x / x.shape[-2] + torch.diag(self.lam(h)["w"])

    def solution(self, h, task) -> dict:
        """w*(h) of one task, shaped like phi."""
        rhs = task["x"].mT @ task["y"] / self.n_train
        return {"w": torch.linalg.solve(self._hessian(h, task["x"]), rhs)}

    def solutions(self, h, tasks) -> torch.Tensor:
        """w*(h) of every task of the batch: shape (n, d)."""
        return vmap(self.solution, in_dims=(None, 0))(h, tasks)["w"]

    def outer_loss(self, h, tasks) -> torch.Tensor:
        """F(h), exact."""
        w = self.solutions(h, tasks)
        residual = torch.einsum("nsd,nd->ns", tasks["xv"], w) - tasks["yv"]
        return 0.5 * (residual**2).mean()

    def meta_gradient(self, h, tasks) -> dict:
        """The exact grad F(h), shaped like h, averaged over the tasks."""
        w = self.solutions(h, tasks)
        residual = torch.einsum("nsd,nd->ns", tasks["xv"], w) - tasks["yv"]
        val_grad = torch.einsum("nsd,ns->nd", tasks["xv"], residual) / self.n_val
        u = torch.linalg.solve(self._hessian(h, tasks["x"]), val_grad)
        return {"log_lam": {"w": -(self.lam(h)["w"] * w * u).mean(0)}}
