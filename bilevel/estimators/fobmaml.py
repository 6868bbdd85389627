"""FO-B-MAML: the perturbation engine (paper eqs. 9-16).

For one task, with the perturbed inner objective (eq. 9, generalised)

    G_nu(phi, h) = g(phi, h) + nu * val_loss(phi, h)
    phi*_nu(h)   = argmin_phi G_nu(phi, h)
    psi(nu)      = d_h G_nu(phi*_nu(h), h)      (autograd in h only, phi fixed)

the hypergradient of F_i(h) = val_loss(phi*(h), h) is

    grad F_i(h) = d psi / d nu at nu = 0.

This is eq. 16 with the direct term d_h val_loss folded in: psi is the
h-gradient of the value function V(nu, h) = min_phi G_nu (envelope theorem), so
d_nu psi = d_h d_nu V = d_h val_loss(phi*_nu(h), h) at nu = 0. A finite
difference of psi therefore yields both terms, and the direct term comes out
evaluated at the stencil points with the scheme's own order of accuracy: no
extra solve at nu = 0 is needed for the symmetric and five-point schemes.

All the solves of one difference run in lock-step, as one batch over (task,
stencil point) pairs, from one common start with one schedule: their truncation
errors are nearly equal and cancel in the difference. (One flat batch rather than
a vmap over the stencil nested in a vmap over tasks: the nested transforms cost
about 5x more per step on CPU.) With a solver tolerance each stencil point is
frozen on its own gradient norm, so the errors cancel only down to about tol.
"""

import dataclasses

import torch
from torch.func import grad

from bilevel import checks, compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.errors import BilevelError, DivergenceError
from bilevel.estimators.base import Estimator, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.inner import solve_batch, solve_from
from bilevel.tree import tree_dot, tree_leaves, tree_map, tree_sq_norm

# scheme -> (stencil points as multiples of nu, weights of psi(points) times nu, order)
SCHEMES = {
    "forward": ((0.0, 1.0), (-1.0, 1.0), 1),
    "symmetric": ((-1.0, 1.0), (-0.5, 0.5), 2),
    "five-point": ((-2.0, -1.0, 1.0, 2.0), (1 / 12, -8 / 12, 8 / 12, -1 / 12), 4),
}


def eps_nu(scheme: str, dtype: torch.dtype) -> float:
    """nu = eps^(1 / (p + 1)) for a scheme of order p, eps the dtype's machine epsilon: the
    best step when g and val_loss are of one scale and shape (nu="eps", the rule of
    nu="auto" before it was scaled by the problem; `auto_nu` refines it).

    With lock-stepped solves the error of a difference of order p is about
    C1 nu^p (truncation of the stencil) + C2 eps / nu (round-off in psi, divided
    by nu); it is smallest at nu ~ eps^(1/(p+1)) (see docs/theory.md).
    float64: 1.5e-8 forward, 6.1e-6 symmetric, 7.4e-4 five-point;
    float32: 3.5e-4 forward, 4.9e-3 symmetric, 4.1e-2 five-point.
    """
    order = SCHEMES[scheme][2]
    return torch.finfo(dtype).eps ** (1 / (order + 1))


# k_p of nu="auto", per scheme (`auto_nu`): measured by
# `python benchmarks/auto_nu_scale.py --calibrate` (docs/theory.md).
AUTO_FACTORS = {"forward": 0.6, "symmetric": 0.29, "five-point": 0.19}
# T is kept within this factor of S either way (`problem_scale`).
CURVATURE_RANGE = 100.0
# Gradients of g per task that `problem_scale` takes (and as many of val_loss).
SCALE_GRAD_EVALS = 2


def auto_nu(scheme: str, dtype: torch.dtype, scale=1.0, curvature=None):
    """nu = k_p eps^(1/(p+1)) S^(1/(p+1)) T^(p/(p+1)) for a scheme of order p: the step of
    nu="auto". S = `scale`, T = `curvature` (default S), numbers or one per task.

    nu weighs val_loss against g, so it has units of g / val_loss, and so do S and T. With
    lock-stepped solves the relative error of a difference of order p is about

        A_p (rho nu)^p  +  B_p eps R / nu

    truncation: psi(nu) is analytic, its Taylor coefficients growing like rho^k (rho the
    size of H_g^-1 H_f, val_loss's Hessian against g's along phi's path in nu), so the
    stencil's leading error is A_p (rho nu)^p, A_p = 1, 1, 4 (forward, symmetric,
    five-point); round-off: psi, R times the size of its nu-derivative, carries an error of
    about eps |psi|, which the weights (sum of |w| = B_p = 2, 1, 3/2) divide by nu. The
    optimum is nu* = (B_p eps R / (p A_p))^(1/(p+1)) rho^(-p/(p+1)). Neither R nor rho can
    be had without solving; `problem_scale` measures at the inner init what stands for
    them: S (a ratio of gradients) for R, T (a ratio of curvatures) for 1 / rho. k_p takes
    the constants and what S and T miss (how val_loss curves where g is flat): measured on
    a family of quadratics, where the best k ranges over 9.2x, 7.6x, 7.3x (13.8x for
    five-point without T), k_p is the value whose worst error over that range is smallest
    (the error grows as (nu / nu*)^p above nu* but only linearly below). val_loss times s
    divides S and T, hence nu, by s exactly. docs/theory.md has the measurements.
    """
    return eps_nu(scheme, dtype) * nu_factor(scheme, scale, curvature)


def nu_factor(scheme: str, scale=1.0, curvature=None):
    """k_p S^(1/(p+1)) T^(p/(p+1)): nu="auto"'s step over eps^(1/(p+1)) (`auto_nu`)."""
    order = SCHEMES[scheme][2]
    curvature = scale if curvature is None else curvature
    return (AUTO_FACTORS[scheme] * scale ** (1 / (order + 1))
            * curvature ** (order / (order + 1)))


def problem_scale(problem, h, tasks, compilation: Compilation = EAGER
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, T) of each task i at its inner init phi_0 (each of shape (n,)), for `auto_nu`:

        S_i = ||d_phi g(phi_0)|| / ||d_phi val_loss(phi_0)||      (gradients)
        T_i = c_g / c_f,  c = <d, grad(phi_0 + d) - grad(phi_0)>  (curvatures along d)

    d = t v, v the unit vector along d_phi val_loss(phi_0): the direction in which nu pushes
    the solves first; t = eps^(1/3) max(||phi_0||, 1), long enough that the difference of
    the gradients stands above their round-off, short enough to read the curvature at
    phi_0 (exact for quadratics). Four gradients per task: two of g (Cost.grad_evals counts
    them) and two of val_loss; first-order only, like the rest of fo-bmaml.

    S = 1 where it cannot be measured (a gradient that is zero or not finite), and T = S
    where the curvature ratio cannot (a zero or non-finite curvature); T is kept within
    CURVATURE_RANGE of S either way: a curvature read along one direction is a guess, and
    then nu stays within CURVATURE_RANGE^(p/(p+1)) of the rule without it. Per task, so
    that a batch gives the mean of its tasks' hypergradients; exact for val_loss multiplied
    by a constant (both S and T are divided by it).
    """
    def scales(h, task):
        init = problem.inner_init(h, task)
        g0 = grad(problem.inner_objective)(init, h, task)
        f0 = grad(problem.val_loss)(init, h, task)
        f_norm = tree_sq_norm(f0).sqrt()
        start = tree_leaves(init)[0]
        length = torch.finfo(start.dtype).eps ** (1 / 3) * tree_sq_norm(init).sqrt().clamp_min(1.0)
        moved = tree_map(lambda p, d: p + (length / f_norm) * d, init, f0)
        delta = tree_map(torch.sub, moved, init)  # the step as rounded
        g1 = grad(problem.inner_objective)(moved, h, task)
        f1 = grad(problem.val_loss)(moved, h, task)
        curvature_g = tree_dot(delta, tree_map(torch.sub, g1, g0)).abs()
        curvature_f = tree_dot(delta, tree_map(torch.sub, f1, f0)).abs()
        scale = tree_sq_norm(g0).sqrt() / f_norm
        scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
        ratio = curvature_g / curvature_f
        ratio = torch.where(torch.isfinite(ratio) & (ratio > 0), ratio.clamp(
            scale / CURVATURE_RANGE, scale * CURVATURE_RANGE), scale)
        return scale, ratio

    return compiled.batch(scales, (None, 0), compilation)(h, tasks)


def perturbed_objective(problem, phi, h, task, nu):
    """G_nu(phi, h) = g(phi, h) + nu * val_loss(phi, h) (eq. 9)."""
    return problem.inner_objective(phi, h, task) + nu * problem.val_loss(phi, h, task)


@estimators.register("fo-bmaml")
@dataclasses.dataclass(frozen=True)
class FOBMAML(Estimator):
    """Finite differences of psi(nu) in nu (eq. 16) for every hyperparameter at once.

    nu: step of the difference, a number > 0, "auto" (`auto_nu`: k_p eps^(1/(p+1))
        S^(1/(p+1)) T^(p/(p+1)), S and T the problem's gradient and curvature scales
        measured at the inner init by `problem_scale`, four more gradients per task) or
        "eps" (eps^(1/(p+1)) alone, `eps_nu`).
    scheme: "forward" (bias O(nu), 2 solves), "symmetric" (O(nu^2), 2 solves),
        "five-point" (O(nu^4), 4 solves).
    warm_start_steps: if set, first solve the unperturbed problem with the solver,
        then run every stencil point (nu = 0 included, for "forward") from that
        solution for this many steps, all with the same schedule.
    """

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    nu: float | str = checks.option(
        "the difference's step: a number > 0, auto (from the problem's gradient and curvature "
        "scales at the inner init) or eps (from the float's precision alone)", "auto")
    scheme: str = checks.option("forward (bias O(nu), 2 solves), symmetric (O(nu^2), 2 "
                                "solves) or five-point (O(nu^4), 4 solves)", "symmetric")
    warm_start_steps: int | None = checks.option(
        "solve the unperturbed problem first, then every stencil point from its solution for "
        "this many steps (null: every point solved from the inner init)", None, minimum=1)

    def __post_init__(self):
        checks.one_of("scheme", self.scheme, tuple(SCHEMES))
        if self.nu not in ("auto", "eps"):
            checks.positive("nu", self.nu)
        super().__post_init__()

    def resolve_nu(self, dtype: torch.dtype, scale=1.0):
        """The step: `scale` (nu="auto"'s `nu_factor`, a number or one per task) times
        eps^(1/(p+1)) for "auto", `eps_nu` for "eps", else nu."""
        if self.nu == "auto":
            return scale * eps_nu(self.scheme, dtype)
        return eps_nu(self.scheme, dtype) if self.nu == "eps" else float(self.nu)

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        leaf = tree_leaves(h)[0]
        points, stencil, _ = SCHEMES[self.scheme]
        m = len(points)
        n = tree_leaves(tasks)[0].shape[0]
        scale = (nu_factor(self.scheme, *problem_scale(problem, h, tasks, compilation))
                 if self.nu == "auto"
                 else torch.ones(n, dtype=leaf.dtype, device=leaf.device))
        nu = torch.as_tensor(self.resolve_nu(leaf.dtype, scale), dtype=leaf.dtype,
                             device=leaf.device).expand(n)  # one step per task
        weights = torch.tensor(stencil, dtype=leaf.dtype, device=leaf.device) / nu[:, None]
        nus = (torch.tensor(points, dtype=leaf.dtype, device=leaf.device) * nu[:, None]).reshape(-1)

        def objective(phi, h, task, nu):
            return perturbed_objective(problem, phi, h, task, nu)

        def psi(phi, h, task, nu):
            return (grad(perturbed_objective, argnums=2)(problem, phi, h, task, nu),
                    {LOSS_KEY: problem.val_loss(phi, h, task)})

        def each_point(t):  # (n, ...) -> (n * m, ...), task-major
            return t.repeat_interleave(m, dim=0)

        def init(h, task, nu):
            return problem.inner_init(h, task)

        # Solve and psi of each (task, stencil point) pair in one batch (one compiled
        # function, init included, when compiling: bilevel.inner.run_steps).
        batch = ((h, tree_map(each_point, tasks), nus), (None, 0, 0), compilation)
        stencil_solver = solver
        if self.warm_start_steps is None:
            (psis, val_loss), stats = solve_batch(solver, objective, init, *batch, then=psi)
        else:
            stencil_solver = solver.with_steps(self.warm_start_steps)
            inits, _ = solve_batch(solver, problem.inner_objective, problem.inner_init,
                                   (h, tasks), (None, 0), compilation)
            (psis, val_loss), stats = solve_from(stencil_solver, objective,
                                                 tree_map(each_point, inits), *batch, then=psi)
        stats |= val_loss
        _check_finite(psis, stats, nus, self.scheme)
        grads = tree_map(lambda p: torch.tensordot(
            weights, p.reshape(n, m, *p.shape[1:]), dims=2) / n, psis)
        # Per task: the slowest stencil point's residual and steps; val_loss averaged over
        # the stencil, which estimates F_i(h) with the scheme's order (O(nu) forward).
        stats = {key: value.reshape(n, m).amax(1) for key, value in stats.items()} | {
            LOSS_KEY: stats[LOSS_KEY].reshape(n, m).mean(1)}
        # Per task: m stencil solves (and the warm start's solve), and psi at each point.
        # "auto": SCALE_GRAD_EVALS more gradients of g per task, for S and T.
        evals = m * stencil_solver.steps + (0 if self.warm_start_steps is None else solver.steps)
        evals_all = evals + m + SCALE_GRAD_EVALS * (self.nu == "auto")
        cost = Cost(inner_grad_evals=evals, grad_evals=evals_all)
        # One number each: the geometric mean over the batch (the step itself with one task).
        mean_scale = _geometric_mean(scale)
        settings = {"nu": self.resolve_nu(leaf.dtype, mean_scale), "scheme": self.scheme,
                    "nu_scale": mean_scale}
        return grads, solve_info(self.name, stats, cost, settings=settings)


def _geometric_mean(values: torch.Tensor) -> float:
    if bool((values == values[0]).all()):
        return values[0].item()
    return values.double().log().mean().exp().item()


def _check_finite(psis, stats, nus, scheme):
    """Raise if a perturbed solve that started finite diverged: psi not finite, or val_loss
    not finite after a solve whose gradient norm grew (psi may stay finite while val_loss,
    quadratic in a blown-up phi, overflows): nu (or the solver's lr) is too large for it.
    Solves that start from a non-finite gradient (NaN in h or the task) pass their NaN on:
    the input, not nu, is at fault, and the trainer reports it; so does a val_loss that is
    not finite at the end of a solve that converged."""
    bad = torch.zeros_like(nus, dtype=torch.bool)
    for leaf in tree_leaves(psis):
        bad |= ~torch.isfinite(leaf.reshape(leaf.shape[0], -1)).all(1)
    start = stats.get("grad_norm_start")
    if start is not None:
        grew = ~(stats["grad_norm"] <= start)  # NaN counts as grown
        bad = (bad | (~torch.isfinite(stats[LOSS_KEY]) & grew)) & torch.isfinite(start)
    if bad.any():
        where = nus[bad].tolist()
        raise StencilDivergenceError(
            f"fo-bmaml (scheme={scheme!r}): psi or val_loss is not finite at the stencil "
            f"point(s) nu={', '.join(f'{x:.3g}' for x in sorted(set(where)))} ({len(where)} "
            f"of {nus.numel()} perturbed solves diverged); pass a smaller nu (or nu='auto') "
            "or lower the solver's lr")


class StencilDivergenceError(DivergenceError):
    """A perturbed inner solve of fo-bmaml diverged (psi not finite at a stencil point); a
    DivergenceError with no outer step (`step` is None), which the trainer records."""

    def __init__(self, message: str):
        BilevelError.__init__(self, message)
        self.step, self.quantity = None, "psi"


