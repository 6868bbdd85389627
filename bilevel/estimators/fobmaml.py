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

from bilevel import checks
from bilevel.estimators.base import estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.inner import solve_inner
from bilevel.tree import tree_leaves, tree_map

# scheme -> (stencil points as multiples of nu, weights of psi(points) times nu, order)
SCHEMES = {
    "forward": ((0.0, 1.0), (-1.0, 1.0), 1),
    "symmetric": ((-1.0, 1.0), (-0.5, 0.5), 2),
    "five-point": ((-2.0, -1.0, 1.0, 2.0), (1 / 12, -8 / 12, 8 / 12, -1 / 12), 4),
}


def auto_nu(scheme: str, dtype: torch.dtype) -> float:
    """nu = eps^(1 / (p + 1)) for a scheme of order p, eps the dtype's machine epsilon.

    With lock-stepped solves the error of a difference of order p is about
    C1 nu^p (truncation of the stencil) + C2 eps / nu (round-off in psi, divided
    by nu); it is smallest at nu ~ eps^(1/(p+1)), taking the problem's scale,
    in which nu weighs val_loss against g, to be 1 (see docs/theory.md).
    float64: 1.5e-8 forward, 6.1e-6 symmetric, 7.4e-4 five-point;
    float32: 3.5e-4 forward, 4.9e-3 symmetric, 4.1e-2 five-point.
    """
    order = SCHEMES[scheme][2]
    return torch.finfo(dtype).eps ** (1 / (order + 1))


def perturbed_objective(problem, phi, h, task, nu):
    """G_nu(phi, h) = g(phi, h) + nu * val_loss(phi, h) (eq. 9)."""
    return problem.inner_objective(phi, h, task) + nu * problem.val_loss(phi, h, task)


@estimators.register("fo-bmaml")
@dataclasses.dataclass(frozen=True)
class FOBMAML:
    """Finite differences of psi(nu) in nu (eq. 16) for every hyperparameter at once.

    nu: step of the difference, a number > 0 or "auto" (`auto_nu`).
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
        if self.nu != "auto":
            checks.positive("nu", self.nu)
        if self.warm_start_steps is not None:
            checks.integer("warm_start_steps", self.warm_start_steps, minimum=1)

    def resolve_nu(self, dtype: torch.dtype) -> float:
        return auto_nu(self.scheme, dtype) if self.nu == "auto" else float(self.nu)

    def __call__(self, problem, h, tasks, solver):
        leaf = tree_leaves(h)[0]
        nu = self.resolve_nu(leaf.dtype)
        points, weights, _ = SCHEMES[self.scheme]
        m = len(points)
        weights = torch.tensor(weights, dtype=leaf.dtype, device=leaf.device) / nu
        if self.warm_start_steps is None:
            stencil_solver = solver
            inits = vmap(problem.inner_init, in_dims=(None, 0))(h, tasks)
        else:
            stencil_solver = solver.with_steps(self.warm_start_steps)
            inits, _ = vmap(solve_inner, in_dims=(None, None, 0, None))(problem, h, tasks, solver)
        n = tree_leaves(inits)[0].shape[0]
        nus = torch.tensor(points, dtype=leaf.dtype, device=leaf.device).repeat(n) * nu

        def stencil_point(h, task, init, nu):
            def objective(phi):
                return perturbed_objective(problem, phi, h, task, nu)

            phi, stats = stencil_solver.run(grad(objective), init)
            stats = stats | {LOSS_KEY: problem.val_loss(phi, h, task)}
            return grad(perturbed_objective, argnums=2)(problem, phi, h, task, nu), stats

        def each_point(t):  # (n, ...) -> (n * m, ...), task-major
            return t.repeat_interleave(m, dim=0)

        psis, stats = vmap(stencil_point, in_dims=(None, 0, 0, 0))(
            h, tree_map(each_point, tasks), tree_map(each_point, inits), nus)
        grads = tree_map(lambda p: torch.tensordot(
            weights, p.reshape(n, m, *p.shape[1:]).mean(0), dims=1), psis)
        # Per task: the slowest stencil point's residual and steps; val_loss averaged over
        # the stencil, which estimates F_i(h) with the scheme's order (O(nu) forward).
        stats = {key: value.reshape(n, m).amax(1) for key, value in stats.items()} | {
            LOSS_KEY: stats[LOSS_KEY].reshape(n, m).mean(1)}
        # Per task: m stencil solves (and the warm start's solve), and psi at each point.
        evals = m * stencil_solver.steps + (0 if self.warm_start_steps is None else solver.steps)
        cost = Cost(inner_grad_evals=evals, grad_evals=evals + m)
        return grads, solve_info("fo-bmaml", stats, cost,
                                 settings={"nu": nu, "scheme": self.scheme})


