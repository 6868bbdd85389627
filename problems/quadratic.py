"""The paper's synthetic quadratic problem (Appendix B), with closed forms.

Task i holds a training quadratic and a validation quadratic

    train_loss(phi) = 1/2 phi^T A_i phi + b_i^T phi
    val_loss(phi)   = 1/2 phi^T C_i phi + d_i^T phi      (C_i = A_i, d_i = b_i unless
                                                          distinct_val=True)

with A_i = Q_i diag(s) Q_i^T, Q_i a random rotation and s log-spaced on
[1, kappa]. The inner problem is B-MAML's (eq. 6), with lam = exp(h["log_lam"])
a scalar or one value per coordinate (Lam = diag(lam)):

    phi*_nu = (A_i + nu C_i + Lam)^{-1} (Lam theta - b_i - nu d_i)
    u_i     = (A_i + Lam)^{-1} (C_i phi*_0 + d_i)
    dF_i/dtheta     = Lam u_i
    dF_i/dlog_lam_j = lam_j u_ij (theta_j - phi*_ij)        (summed over j if scalar)
"""

import math

import torch
from torch.func import vmap

from bilevel import BilevelProblem, InvalidInputError, checks
from bilevel.devices import check_memory


class Quadratic(BilevelProblem):
    """A fixed pool of `n_tasks` quadratic tasks in dimension `dim` (the paper's M tasks).

    Args:
        dim: the dimension of phi and theta
        kappa: the condition number of each A_i (its eigenvalues log-spaced on [1, kappa])
        lam: the prior's strength, the start of exp(h['log_lam'])
        n_tasks: the tasks in the pool (M)
        distinct_val: validation quadratics (C_i, d_i) of their own, not the training ones
        seed: seeds the pool
    """

    def __init__(self, dim: int = 10, kappa: float = 100.0, lam: float = 1.0,
                 n_tasks: int = 16, distinct_val: bool = False, seed: int = 0,
                 dtype=torch.float64, device="cpu"):
        self.dim = checks.integer("dim", dim, minimum=1)
        self.kappa = checks.positive("kappa", kappa)
        if self.kappa < 1:
            raise InvalidInputError(f"kappa must be >= 1, got {kappa!r}")
        self.lam_init = checks.positive("lam", lam)
        self.n_tasks = checks.integer("n_tasks", n_tasks, minimum=1)
        self.dtype, self.device = dtype, torch.device(device)
        matrices = 2 if distinct_val else 1  # float64 while drawn, then in dtype
        check_memory("the task pool (n_tasks x dim x dim)",
                     matrices * self.n_tasks * self.dim**2 * 8, self.device)
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        self.pool = {"A": self._matrices(generator), "b": self._vectors(generator)}
        if distinct_val:
            self.pool |= {"C": self._matrices(generator), "d": self._vectors(generator)}
        self.pool = {k: v.to(dtype=dtype, device=self.device) for k, v in self.pool.items()}

    def smoothness(self, h) -> float:
        """Largest eigenvalue of the inner Hessian A_i + diag(lam) bound: kappa + max lam
        (a safe GD step is 1 / smoothness)."""
        return self.kappa + self._lam_vector(h).max().item()

    def _matrices(self, generator):
        spectrum = torch.logspace(0, math.log10(self.kappa), self.dim, dtype=torch.float64)
        gaussian = torch.randn(self.n_tasks, self.dim, self.dim, generator=generator,
                               dtype=torch.float64)
        rotation, _ = torch.linalg.qr(gaussian)
        return rotation @ torch.diag(spectrum) @ rotation.mT

    def _vectors(self, generator):
        return torch.randn(self.n_tasks, self.dim, generator=generator, dtype=torch.float64)

    def init_hyper(self, generator=None):
        theta = torch.randn(self.dim, generator=generator, dtype=self.dtype)
        log_lam = torch.tensor(math.log(self.lam_init), dtype=self.dtype)
        return {"theta": {"w": theta.to(self.device)}, "log_lam": log_lam.to(self.device)}

    def all_tasks(self) -> dict:
        return dict(self.pool)

    def sample_tasks(self, n, generator=None):
        """n tasks of the pool, drawn without replacement (with it when n > n_tasks)."""
        checks.integer("n", n, minimum=1)
        if n <= self.n_tasks:
            index = torch.randperm(self.n_tasks, generator=generator)[:n]
        else:
            index = torch.randint(self.n_tasks, (n,), generator=generator)
        return {k: v[index.to(self.device)] for k, v in self.pool.items()}

    def train_loss(self, phi, h, task):
        w = phi["w"]
        return 0.5 * w @ task["A"] @ w + task["b"] @ w

    def val_loss(self, phi, h, task):
        w = phi["w"]
        return 0.5 * w @ self._val(task, "C") @ w + self._val(task, "d") @ w

    @staticmethod
    def _val(task, key):
        return task[key] if key in task else task[{"C": "A", "d": "b"}[key]]

    # Closed forms ---------------------------------------------------------------------

    def _lam_vector(self, h):
        lam = self.lam(h)
        return lam["w"] if isinstance(lam, dict) else lam.expand(self.dim)

    def solution(self, h, task, nu=0.0) -> dict:
        """phi*_nu of one task, shaped like phi."""
        lam = self._lam_vector(h)
        theta = h["theta"]["w"]
        matrix = task["A"] + nu * self._val(task, "C") + torch.diag(lam)
        rhs = lam * theta - task["b"] - nu * self._val(task, "d")
        return {"w": torch.linalg.solve(matrix, rhs)}

    def solutions(self, h, tasks) -> torch.Tensor:
        """phi*(h)["w"] of every task of the batch: shape (n, dim)."""
        return vmap(self.solution, in_dims=(None, 0))(h, tasks)["w"]

    def outer_loss(self, h, tasks) -> torch.Tensor:
        """F(h) = mean_i val_loss(phi*_i), exact."""
        phi = self.solutions(h, tasks)
        curvature = torch.einsum("ni,nij,nj->n", phi, self._val(tasks, "C"), phi)
        return (0.5 * curvature + (self._val(tasks, "d") * phi).sum(-1)).mean()

    def meta_gradient(self, h, tasks) -> dict:
        """The exact grad F(h), shaped like h (keys "theta" and "log_lam")."""
        lam = self._lam_vector(h)
        theta = h["theta"]["w"]
        phi = self.solutions(h, tasks)
        val_grad = torch.einsum("nij,nj->ni", self._val(tasks, "C"), phi) + self._val(tasks, "d")
        u = torch.linalg.solve(tasks["A"] + torch.diag(lam), val_grad)
        grad_log_lam = (lam * u * (theta - phi)).mean(0)
        if not isinstance(h["log_lam"], dict):
            grad_log_lam = grad_log_lam.sum()
        else:
            grad_log_lam = {"w": grad_log_lam}
        return {"theta": {"w": (lam * u).mean(0)}, "log_lam": grad_log_lam}
