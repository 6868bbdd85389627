"""benchmark_bilevel's quadratic problem (benchopt/benchmark_bilevel, datasets/simulated.py
with benchmark_utils/gen_matrices.py), with the exact hypergradient in closed form.

Inner variable z (dim_inner), outer variable x (dim_outer). Each sample i is a quadratic

    q_i(z, x) = 1/2 (a_i.z)^2 + 1/2 (b_i.x)^2 + (p_i.x)(q_i.z) + l_i.z + m_i.x

(the benchmark's per-sample Hessians are the rank-one empirical correlations a_i a_i^T,
b_i b_i^T and p_i q_i^T, stored here by their factors). The inner objective g is the mean of
q_i over the `n_inner` inner samples, the outer objective f the mean over the `n_outer`
outer samples (two sample sets drawn alike), with no regulariser:

    z*(x) = argmin_z g(z, x) = -H^-1 (l + C^T x)                  (H, C, l: inner means)
    grad F(x) = d_x f(z*, x) - C H^-1 d_z f(z*, x)                 (the benchmark's metric
                                                                     is its squared norm)

How the factors are drawn (gen_matrices): a_i = A s_i with A = U diag(sqrt(spectrum)) U^T,
the spectrum log-spaced on [mu, L_inner] (so E[a a^T] has it); b_i likewise in dim_outer with
spectrum {0} and [mu, L_outer]; p_i = U' D s'_i, q_i = V s'_i with D the dim_outer x dim_inner
diagonal log-spaced on [mu, L_cross]; l_i, m_i standard normal. The benchmark draws with JAX's
generator and takes U from an SVD of one Gaussian vector; here torch's generator and a random
rotation (QR of a Gaussian matrix): the same distributions' second moments, not its bits.

A task is a minibatch, as the benchmark's samplers give: `batches` blocks of `batch`
consecutive samples, at random, for each objective (the outer one capped at its sample count),
or every sample (`batches=None`: the full-batch problem). Its leaves are the minibatch's mean
matrices, so train_loss and val_loss are the benchmark's minibatch means exactly.
"""

import math

import torch
from torch.func import vmap

from bilevel import BilevelProblem, InvalidInputError, checks

TERMS = ("Hzz", "Hxx", "C", "lz", "lx")  # the mean quadratic's pieces, in q_i's order


class BenchmarkQuadratic(BilevelProblem):
    """benchmark_bilevel's quadratic; its published setting (config/
    quadratics_021424_best_params.yml) is the default.

    Args:
        dim_inner, dim_outer: dimensions of z and x
        n_inner, n_outer: samples of the inner and the outer objective
        mu: the smallest nonzero eigenvalue of the expected Hessians (and of the cross term)
        l_inner, l_outer, l_cross: their largest (the benchmark's L_inner_inner = L_inner_outer,
            L_outer_inner = L_outer_outer and L_cross_inner = L_cross_outer)
        batch: samples per minibatch block (the benchmark's batch_size)
        batches: blocks per task, or None for every sample (full batch)
        seed: seeds the samples (the benchmark's dataset random_state)
    """

    regularization = "none"

    def __init__(self, dim_inner: int = 100, dim_outer: int = 10, n_inner: int = 32768,
                 n_outer: int = 1024, mu: float = 0.1, l_inner: float = 1.0,
                 l_outer: float = 1.0, l_cross: float = 0.1, batch: int = 64,
                 batches: int | None = 1, seed: int = 2442, dtype=torch.float64, device="cpu"):
        self.dim_inner = checks.integer("dim_inner", dim_inner, minimum=1)
        self.dim_outer = checks.integer("dim_outer", dim_outer, minimum=2)
        self.batch = checks.integer("batch", batch, minimum=1)
        for name, n in (("n_inner", n_inner), ("n_outer", n_outer)):
            checks.integer(name, n, minimum=batch)
            if n % batch:
                raise InvalidInputError(f"{name} must be a multiple of batch={batch}, got {n}")
        self.batches = None if batches is None else checks.integer("batches", batches,
                                                                   minimum=1)
        spectrum = {"mu": checks.positive("mu", mu), "l_inner": checks.positive("l_inner", l_inner),
                    "l_outer": checks.positive("l_outer", l_outer),
                    "l_cross": checks.positive("l_cross", l_cross)}
        self.dtype, self.device = dtype, torch.device(device)
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        self.samples = {level: self._draw(n, spectrum, generator)
                        for level, n in (("inner", n_inner), ("outer", n_outer))}
        self.full = {level: self._means(s) for level, s in self.samples.items()}
        self.full = {level: {k: v.to(dtype=dtype, device=self.device) for k, v in m.items()}
                     for level, m in self.full.items()}
        self.samples = {level: {k: v.to(dtype=dtype, device=self.device) for k, v in s.items()}
                        for level, s in self.samples.items()}
        eigenvalue = self.value_hessian_min_eigenvalue()
        if eigenvalue < 1e-12:  # the benchmark's own acceptance test of a draw
            raise InvalidInputError(f"seed={seed} draws a problem whose value function is not "
                                    f"strongly convex (smallest eigenvalue {eigenvalue:.3g}); "
                                    "expected >= 1e-12: take another seed")

    # The data --------------------------------------------------------------------------

    def _draw(self, n: int, spectrum: dict, generator) -> dict:
        """n samples' factors (gen_matrices), float64."""
        d_in, d_out = self.dim_inner, self.dim_outer

        def normal(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        def rotation(d):
            return torch.linalg.qr(normal(d, d))[0]

        def root(d, low, high, zero=False):  # U diag(sqrt(spectrum)) U^T
            values = torch.logspace(math.log10(low) / 2, math.log10(high) / 2,
                                    d - zero, dtype=torch.float64)
            if zero:
                values = torch.cat([torch.zeros(1, dtype=torch.float64), values])
            u = rotation(d)
            return u @ torch.diag(values) @ u.T

        mu = spectrum["mu"]
        a = normal(n, d_in) @ root(d_in, mu, spectrum["l_inner"])
        b = normal(n, d_out) @ root(d_out, mu, spectrum["l_outer"], zero=True)
        u, _, vh = torch.linalg.svd(normal(d_out, d_in))
        singular = torch.logspace(math.log10(mu), math.log10(spectrum["l_cross"]),
                                  min(d_in, d_out), dtype=torch.float64)
        s = normal(n, d_in)
        p = (s[:, : d_out] * singular) @ u.T  # U D s^T, D diagonal d_out x d_in
        q = s @ vh.T
        return {"a": a, "b": b, "p": p, "q": q, "lz": normal(n, d_in), "lx": normal(n, d_out)}

    @staticmethod
    def _means(s: dict) -> dict:
        """The mean quadratic of the samples `s` (a slice of one level's factors)."""
        n = s["a"].shape[0]
        return {"Hzz": s["a"].T @ s["a"] / n, "Hxx": s["b"].T @ s["b"] / n,
                "C": s["p"].T @ s["q"] / n, "lz": s["lz"].mean(0), "lx": s["lx"].mean(0)}

    def _minibatch(self, level: str, generator) -> dict:
        samples = self.samples[level]
        blocks = samples["a"].shape[0] // self.batch
        chosen = torch.randperm(blocks, generator=generator)[: self.batches]
        rows = (chosen[:, None] * self.batch + torch.arange(self.batch)).reshape(-1)
        return self._means({k: v[rows.to(self.device)] for k, v in samples.items()})

    def sample_tasks(self, n, generator=None):
        """n minibatch tasks: {"inner": ..., "outer": ...}, each the mean matrices TERMS of
        `batches` random blocks of `batch` consecutive samples (distinct within a task), or
        of every sample with batches=None."""
        checks.integer("n", n, minimum=1)
        if self.batches is None:
            return {level: {k: v.expand(n, *v.shape) for k, v in m.items()}
                    for level, m in self.full.items()}
        tasks = [{level: self._minibatch(level, generator) for level in self.samples}
                 for _ in range(n)]
        return {level: {k: torch.stack([t[level][k] for t in tasks]) for k in TERMS}
                for level in self.samples}

    def init_hyper(self, generator=None):
        """The benchmark's start: x = -2 (every coordinate)."""
        return {"x": torch.full((self.dim_outer,), -2.0, dtype=self.dtype, device=self.device)}

    def inner_init(self, h, task):
        """The benchmark's start: z = 0."""
        return {"z": torch.zeros(self.dim_inner, dtype=h["x"].dtype, device=h["x"].device)}

    @staticmethod
    def _quadratic(m: dict, z, x):
        return (0.5 * z @ m["Hzz"] @ z + 0.5 * x @ m["Hxx"] @ x + x @ m["C"] @ z
                + m["lz"] @ z + m["lx"] @ x)

    def train_loss(self, phi, h, task):
        return self._quadratic(task["inner"], phi["z"], h["x"])

    def val_loss(self, phi, h, task):
        return self._quadratic(task["outer"], phi["z"], h["x"])

    def inner_spectrum(self) -> tuple[float, float]:
        """The smallest and largest eigenvalues (mu, L) of the full-batch inner Hessian."""
        values = torch.linalg.eigvalsh(self.full["inner"]["Hzz"])
        return values[0].item(), values[-1].item()

    # Closed forms ----------------------------------------------------------------------

    @staticmethod
    def _gradient(task: dict, x):
        """grad F(x) of one task (its inner and outer mean matrices), and z*(x)."""
        inner, outer = task["inner"], task["outer"]
        z = -torch.linalg.solve(inner["Hzz"], inner["lz"] + inner["C"].T @ x)
        f_z = outer["Hzz"] @ z + outer["C"].T @ x + outer["lz"]
        f_x = outer["Hxx"] @ x + outer["C"] @ z + outer["lx"]
        return f_x - inner["C"] @ torch.linalg.solve(inner["Hzz"], f_z)

    def exact_hypergradient(self, h: dict) -> torch.Tensor:
        """grad F(x) of the full problem (every sample): the benchmark's metric is
        `exact_hypergradient(h).square().sum()`."""
        return self._gradient(self.full, h["x"])

    def meta_gradient(self, h, tasks):
        """grad of the mean over the batch of tasks of F_i(x), each task's own bilevel
        problem (its minibatch means; needs each task's inner Hessian invertible)."""
        grads = vmap(self._gradient, in_dims=(0, None))(tasks, h["x"])
        return {"x": grads.mean(0)}

    def value_hessian_min_eigenvalue(self) -> float:
        """The smallest eigenvalue of the Hessian of x -> f(z*(x), x) (full batch): the
        benchmark rejects a draw where it is below 1e-12."""
        inner, outer = self.full["inner"], self.full["outer"]
        jac = -torch.linalg.solve(inner["Hzz"], inner["C"].T)  # dz*/dx
        cross = outer["C"] @ jac
        hessian = jac.T @ outer["Hzz"] @ jac + outer["Hxx"] + cross + cross.T
        return torch.linalg.eigvalsh(hessian).min().item()
