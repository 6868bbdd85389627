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
from torch.func import grad, vmap

from bilevel import checks, compiled
from bilevel.errors import BilevelError, DivergenceError
from bilevel.estimators.base import estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.inner import solve_batch
from bilevel.tree import tree_leaves, tree_map, tree_sq_norm

# scheme -> (stencil points as multiples of nu, weights of psi(points) times nu, order)
SCHEMES = {
    "forward": ((0.0, 1.0), (-1.0, 1.0), 1),
    "symmetric": ((-1.0, 1.0), (-0.5, 0.5), 2),
    "five-point": ((-2.0, -1.0, 1.0, 2.0), (1 / 12, -8 / 12, 8 / 12, -1 / 12), 4),
}


def eps_nu(scheme: str, dtype: torch.dtype) -> float:
    """nu = eps^(1 / (p + 1)) for a scheme of order p, eps the dtype's machine epsilon: the
    best step when g and val_loss are of the same scale (the rule of `nu="auto"` before it
    was scaled by the problem; `auto_nu` with scale 1).

    With lock-stepped solves the error of a difference of order p is about
    C1 nu^p (truncation of the stencil) + C2 eps / nu (round-off in psi, divided
    by nu); it is smallest at nu ~ eps^(1/(p+1)) (see docs/theory.md).
    float64: 1.5e-8 forward, 6.1e-6 symmetric, 7.4e-4 five-point;
    float32: 3.5e-4 forward, 4.9e-3 symmetric, 4.1e-2 five-point.
    """
    order = SCHEMES[scheme][2]
    return torch.finfo(dtype).eps ** (1 / (order + 1))


def auto_nu(scheme: str, dtype: torch.dtype, scale: float = 1.0) -> float:
    """nu = scale * eps^(1 / (p + 1)): `eps_nu` in the problem's units.

    nu weighs val_loss against g, so it has units of g / val_loss. Multiplying val_loss
    by s leaves phi*_nu and psi(nu) unchanged if nu becomes nu / s: the best step of the
    difference is nu_best = S * eps^(1/(p+1)) with S the scale of g over that of val_loss.
    Both terms of the error carry it: the truncation C1 (nu / S)^p (psi bends where
    nu * d^2 val_loss becomes comparable to d^2 g) and the round-off C2 eps S / nu (psi is
    of the size of d_h g, its nu-derivative of the size of d_h val_loss). `scale` is that
    S, measured by `problem_scale`; scale = 1 is the unscaled rule `eps_nu`.
    """
    return scale * eps_nu(scheme, dtype)


def problem_scale(problem, h, tasks) -> torch.Tensor:
    """S_i = ||d_phi g(phi_0, h)|| / ||d_phi val_loss(phi_0, h)|| at the inner init phi_0
    of each task i (shape (n,)): how many units of val_loss one unit of g is worth where the
    solves start. One gradient of each loss per task.

    1 where it cannot be measured (a gradient that is zero or not finite): the unscaled
    rule. Per task, so that a batch gives the mean of its tasks' hypergradients; exact for
    val_loss multiplied by a constant.
    """
    def ratio(h, task):
        init = problem.inner_init(h, task)
        g = grad(problem.inner_objective)(init, h, task)
        f = grad(problem.val_loss)(init, h, task)
        scale = (tree_sq_norm(g) / tree_sq_norm(f)).sqrt()
        return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))

    return vmap(ratio, in_dims=(None, 0))(h, tasks)


def perturbed_objective(problem, phi, h, task, nu):
    """G_nu(phi, h) = g(phi, h) + nu * val_loss(phi, h) (eq. 9)."""
    return problem.inner_objective(phi, h, task) + nu * problem.val_loss(phi, h, task)


@estimators.register("fo-bmaml")
@dataclasses.dataclass(frozen=True)
class FOBMAML:
    """Finite differences of psi(nu) in nu (eq. 16) for every hyperparameter at once.

    nu: step of the difference, a number > 0, "auto" (`auto_nu`: eps^(1/(p+1)) times the
        problem's scale S measured at the inner init by `problem_scale`, one more gradient
        of g and of val_loss per task) or "eps" (eps^(1/(p+1)) alone, `eps_nu`: right
        when g and val_loss are of one scale).
    scheme: "forward" (bias O(nu), 2 solves), "symmetric" (O(nu^2), 2 solves),
        "five-point" (O(nu^4), 4 solves).
    warm_start_steps: if set, first solve the unperturbed problem with the solver,
        then run every stencil point (nu = 0 included, for "forward") from that
        solution for this many steps, all with the same schedule.
    """

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    nu: float | str = "auto"
    scheme: str = "symmetric"
    warm_start_steps: int | None = None

    def __post_init__(self):
        checks.one_of("scheme", self.scheme, tuple(SCHEMES))
        if self.nu not in ("auto", "eps"):
            checks.positive("nu", self.nu)
        if self.warm_start_steps is not None:
            checks.integer("warm_start_steps", self.warm_start_steps, minimum=1)

    def resolve_nu(self, dtype: torch.dtype, scale=1.0):
        """The step: `auto_nu` at `scale` (a number, or one per task) for "auto", `eps_nu`
        for "eps", else nu."""
        if self.nu == "auto":
            return auto_nu(self.scheme, dtype, scale)
        return eps_nu(self.scheme, dtype) if self.nu == "eps" else float(self.nu)

    def __call__(self, problem, h, tasks, solver):
        leaf = tree_leaves(h)[0]
        points, weights, _ = SCHEMES[self.scheme]
        m = len(points)
        n = tree_leaves(tasks)[0].shape[0]
        scale = (problem_scale(problem, h, tasks) if self.nu == "auto"
                 else torch.ones(n, dtype=leaf.dtype, device=leaf.device))
        nu = torch.as_tensor(self.resolve_nu(leaf.dtype, scale), dtype=leaf.dtype,
                             device=leaf.device).expand(n)  # one step per task
        weights = torch.tensor(weights, dtype=leaf.dtype, device=leaf.device) / nu[:, None]
        inits = vmap(problem.inner_init, in_dims=(None, 0))(h, tasks)
        stencil_solver = solver
        if self.warm_start_steps is not None:
            stencil_solver = solver.with_steps(self.warm_start_steps)
            inits, _ = solve_batch(solver, problem.inner_objective, inits, (h, tasks), (None, 0))
        nus = (torch.tensor(points, dtype=leaf.dtype, device=leaf.device) * nu[:, None]).reshape(-1)

        def objective(phi, h, task, nu):
            return perturbed_objective(problem, phi, h, task, nu)

        def psi(phi, h, task, nu):
            return (grad(perturbed_objective, argnums=2)(problem, phi, h, task, nu),
                    {LOSS_KEY: problem.val_loss(phi, h, task)})

        def each_point(t):  # (n, ...) -> (n * m, ...), task-major
            return t.repeat_interleave(m, dim=0)

        point_tasks = tree_map(each_point, tasks)
        phis, stats = solve_batch(stencil_solver, objective, tree_map(each_point, inits),
                                  (h, point_tasks, nus), (None, 0, 0))
        psis, val_loss = compiled.batch(psi, in_dims=(0, None, 0, 0))(phis, h, point_tasks, nus)
        stats |= val_loss
        _check_finite(psis, stats, nus, self.scheme)
        grads = tree_map(lambda p: torch.tensordot(
            weights, p.reshape(n, m, *p.shape[1:]), dims=2) / n, psis)
        # Per task: the slowest stencil point's residual and steps; val_loss averaged over
        # the stencil, which estimates F_i(h) with the scheme's order (O(nu) forward).
        stats = {key: value.reshape(n, m).amax(1) for key, value in stats.items()} | {
            LOSS_KEY: stats[LOSS_KEY].reshape(n, m).mean(1)}
        # Per task: m stencil solves (and the warm start's solve), and psi at each point.
        # "auto": one more gradient of g per task, for the scale.
        evals = m * stencil_solver.steps + (0 if self.warm_start_steps is None else solver.steps)
        cost = Cost(inner_grad_evals=evals, grad_evals=evals + m + (self.nu == "auto"))
        # One number each: the geometric mean over the batch (the step itself with one task).
        mean_scale = _geometric_mean(scale)
        settings = {"nu": self.resolve_nu(leaf.dtype, mean_scale), "scheme": self.scheme,
                    "nu_scale": mean_scale}
        return grads, solve_info("fo-bmaml", stats, cost, settings=settings)


def _geometric_mean(values: torch.Tensor) -> float:
    if bool((values == values[0]).all()):
        return values[0].item()
    return values.double().log().mean().exp().item()


def _check_finite(psis, stats, nus, scheme):
    """Raise if a perturbed solve that started finite ended with psi not finite: nu (or
    the solver's lr) is too large for it. Solves that start from a non-finite gradient
    (NaN in h or the task) pass their NaN on: the input, not nu, is at fault, and the
    trainer reports it."""
    bad = torch.zeros_like(nus, dtype=torch.bool)
    for leaf in tree_leaves(psis):
        bad |= ~torch.isfinite(leaf.reshape(leaf.shape[0], -1)).all(1)
    start = stats.get("grad_norm_start")
    if start is not None:
        bad &= torch.isfinite(start)
    if bad.any():
        where = nus[bad].tolist()
        raise StencilDivergenceError(
            f"fo-bmaml (scheme={scheme!r}): psi is not finite at the stencil point(s) "
            f"nu={', '.join(f'{x:.3g}' for x in sorted(set(where)))} ({len(where)} of "
            f"{nus.numel()} perturbed solves diverged); pass a smaller nu (or nu='auto') or "
            f"lower the solver's lr")


class StencilDivergenceError(DivergenceError):
    """A perturbed inner solve of fo-bmaml diverged (psi not finite at a stencil point); a
    DivergenceError with no outer step (`step` is None), which the trainer records."""

    def __init__(self, message: str):
        BilevelError.__init__(self, message)
        self.step, self.quantity = None, "psi"


