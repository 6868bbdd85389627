"""Few-shot regression with a shared decoder and a per-task latent code (paper eq. 15).

Tasks come from a fixed random "teacher": features B(x) in R^k of a scalar input (a
1-32-k tanh MLP with tanh outputs, seeded, its first layer scaled by 4 so that a
freshly initialised decoder does not already fit them) and, per task, a code
z_i ~ N(mu, s^2 I_k) (mu fixed by the seed, s = `spread`):

    y = B(x)^T z_i + sigma eps,   x ~ U[-2, 2],  eps ~ N(0, 1),  sigma = `noise`

with K support and Q query points. The learner has the same form: a decoder
D_{theta_d}(x) in R^k shared by every task (h["decoder"], a 1-`hidden`-k tanh MLP
with tanh outputs) and a task code phi = {"z"} adapted per task:

    train_loss(z; theta_d) = 1/K sum_k (D(x_k)^T z - y_k)^2
    val_loss(z; theta_d)   = 1/Q sum_q (D(xq_q)^T z - yq_q)^2
    z*(h) = argmin_z train_loss(z; theta_d) + lam/2 ||z - theta||^2      (eq. 15)
    F(h)  = mean over tasks of val_loss(z*(h); theta_d),  h = {"theta", "decoder", "log_lam"}

(h without "log_lam", lam fixed at `lam`, when learn_lam=False.)

lam matters here: with K close to k and noisy labels the code overfits when lam is
small and ignores the data when it is large; for the teacher's own features the
Bayes posterior mean is z* with lam = 2 sigma^2 / (K s^2). The decoder's tanh outputs
are bounded, which limits (but does not remove) its freedom to rescale features and
so mimic another lam. The inner problem is a ridge regression in z: `solution` gives
z* in closed form, and g is (2k + lam)-smooth (|D(x)_j| < 1), so GD with lr = 1/(2k + lam)
converges.
"""

import math

import torch

from bilevel import BilevelProblem, InvalidInputError, checks
from problems.mlp import init_mlp, mlp

INPUT = (-2.0, 2.0)
TEACHER_HIDDEN = 32
# Sharper teacher features than a freshly initialised decoder: the decoder has to learn them.
TEACHER_SHARPNESS = 4.0


def features(decoder: dict, x: torch.Tensor) -> torch.Tensor:
    """D(x): tanh outputs of the decoder MLP at the points x (shape (m,)), shape (m, k)."""
    return torch.tanh(mlp(decoder, x[:, None], activation=torch.tanh))


class SharedDecoder(BilevelProblem):
    """Latent-code regression: meta-learn a decoder, the codes' prior theta and lam.

    Args:
        code: the latent code's dimension k
        shots: support points per task (K)
        queries: query points per task (Q)
        hidden: the decoder's hidden width
        noise: the labels' noise sigma
        spread: the spread s of the tasks' codes around their mean
        lam: the prior's strength (its start when learned)
        learn_lam: learn lam as h['log_lam'] (false: fixed)
        seed: seeds the teacher
    """

    def __init__(self, code: int = 5, shots: int = 5, queries: int = 20, hidden: int = 32,
                 noise: float = 0.5, spread: float = 1.0, lam: float = 1.0,
                 learn_lam: bool = True, seed: int = 0, dtype=torch.float32, device="cpu"):
        self.code = checks.integer("code", code, minimum=1)
        self.shots = checks.integer("shots", shots, minimum=1)
        self.queries = checks.integer("queries", queries, minimum=1)
        self.hidden = checks.integer("hidden", hidden, minimum=1)
        self.noise = checks.positive("noise", noise)
        self.spread = checks.positive("spread", spread)
        self.lam_init = checks.positive("lam", lam)
        if not isinstance(learn_lam, bool):
            raise InvalidInputError(f"learn_lam must be True or False, got {learn_lam!r}")
        self.learn_lam = learn_lam
        self.dtype, self.device = dtype, torch.device(device)
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        teacher = init_mlp((1, TEACHER_HIDDEN, code), generator, dtype, self.device)
        self.teacher = teacher | {"w0": TEACHER_SHARPNESS * teacher["w0"]}
        self.code_mean = torch.randn(code, generator=generator, dtype=dtype).to(self.device)

    @property
    def bayes_lam(self) -> float:
        """lam at which z* is the posterior mean of z given the teacher's features."""
        return 2 * self.noise**2 / (self.shots * self.spread**2)

    def init_hyper(self, generator=None):
        decoder = init_mlp((1, self.hidden, self.code), generator, self.dtype, self.device)
        h = {"theta": {"z": torch.zeros(self.code, dtype=self.dtype, device=self.device)},
             "decoder": decoder}
        if not self.learn_lam:
            return h
        log_lam = torch.tensor(math.log(self.lam_init), dtype=self.dtype, device=self.device)
        return h | {"log_lam": log_lam}

    def lam(self, h):
        """exp(h["log_lam"]) when lam is learned, the constructor's `lam` otherwise."""
        if self.learn_lam:
            return super().lam(h)
        return torch.tensor(self.lam_init, dtype=self.dtype, device=self.device)

    def sample_tasks(self, n, generator=None):
        """{"x", "y"}: (n, shots) support; {"xq", "yq"}: (n, queries) query; {"z"}: (n, code)
        the task's true code."""
        checks.integer("n", n, minimum=1)

        def draw(sampler, *shape):
            return sampler(shape, generator=generator, dtype=self.dtype).to(self.device)

        low, high = INPUT
        z = self.code_mean + self.spread * draw(torch.randn, n, self.code)
        x = low + (high - low) * draw(torch.rand, n, self.shots + self.queries)
        basis = features(self.teacher, x.reshape(-1)).reshape(n, -1, self.code)
        y = torch.einsum("nmk,nk->nm", basis, z) + self.noise * draw(torch.randn, *x.shape)
        support, query = slice(0, self.shots), slice(self.shots, None)
        return {"x": x[:, support], "y": y[:, support], "xq": x[:, query], "yq": y[:, query],
                "z": z}

    @staticmethod
    def _mse(phi, h, x, y):
        return ((features(h["decoder"], x) @ phi["z"] - y) ** 2).mean()

    def train_loss(self, phi, h, task):
        return self._mse(phi, h, task["x"], task["y"])

    def val_loss(self, phi, h, task):
        return self._mse(phi, h, task["xq"], task["yq"])

    def solution(self, h, task) -> dict:
        """z*(h) of one task in closed form: (2/K B^T B + lam I)^{-1} (2/K B^T y + lam theta)."""
        basis = features(h["decoder"], task["x"])
        lam = self.lam(h)
        identity = torch.eye(self.code, dtype=basis.dtype, device=basis.device)
        matrix = 2 / self.shots * basis.mT @ basis + lam * identity
        rhs = 2 / self.shots * basis.mT @ task["y"] + lam * h["theta"]["z"]
        return {"z": torch.linalg.solve(matrix, rhs)}
