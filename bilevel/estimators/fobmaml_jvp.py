"""The perturbation engine in forward mode: d psi / d nu by a JVP instead of a difference.

With G_nu = g + nu * val_loss (eq. 9), phi_K(nu) the K-th iterate of the solver on G_nu
from `problem.inner_init(h, task)`, and psi(nu) = d_h G_nu(phi_K(nu), h) (the
bilevel.estimators.fobmaml definitions, with the solve truncated at K steps):

    grad = d psi / d nu at nu = 0
         = d_h val_loss(phi_K, h) + d_h d_phi g(phi_K, h) . d phi_K / d nu

computed exactly by one `torch.func.jvp` in nu through the K solver steps
(forward-over-reverse: each step carries the tangent d phi_k / d nu along with phi_k).
There is no nu to choose; it is the limit nu -> 0 of the lock-stepped finite differences
of "fo-bmaml". Forward mode keeps no trajectory, so memory does not grow with K; each
step costs one inner gradient and its tangent (one Hessian-vector product).

This is the nu-derivative of the K-step *perturbed iterate*, not MAML's gradient of the
K-step objective val_loss(phi_K(h), h): the two differ at finite K, and both tend to
grad F(h) as the solve converges. The paper leaves this forward-mode variant as future
work; the name keeps it in the fo-bmaml family, though it is not first-order.
"""

import dataclasses

import torch
from torch.func import grad, jvp

from bilevel.estimators.base import average_over_tasks, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.tree import tree_leaves, tree_map


def perturbed_gradient(problem, phi, h, task, nu, argnum):
    """d G_nu / d(phi, h)[argnum] = d g + nu * d val_loss: the gradient of eq. 9 with nu
    outside the differentiated functions.

    Not grad(G_nu): under jvp in nu, differentiating nu * val_loss(...) in reverse mode
    fails in float32 when val_loss multiplies by a Python number (`0.5 * ...`): functorch
    (apparently) lifts the wrapped number to a plain 0-dim float64 tensor, so the backward of that
    product multiplies the 0-dim float32 cotangent by it and promotes to float64 ("expected
    scalar type Float but found Double"). Both forms are the same function of nu.
    """
    return tree_map(lambda a, b: a + nu * b,
                    grad(problem.inner_objective, argnums=argnum)(phi, h, task),
                    grad(problem.val_loss, argnums=argnum)(phi, h, task))


@estimators.register("fo-bmaml-jvp")
@dataclasses.dataclass(frozen=True)
class FOBMAMLJVP:
    """d psi / d nu at nu = 0 for the K-step solver, by forward-mode differentiation."""

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    def __call__(self, problem, h, tasks, solver):
        leaf = tree_leaves(h)[0]
        zero = torch.zeros((), dtype=leaf.dtype, device=leaf.device)
        one = torch.ones_like(zero)

        def task_gradient(h, task):
            init = problem.inner_init(h, task)

            def psi(nu):
                def inner_gradient(phi):
                    return perturbed_gradient(problem, phi, h, task, nu, argnum=0)

                phi, stats = solver.run(inner_gradient, init)
                stats = stats | {LOSS_KEY: problem.val_loss(phi, h, task)}
                return perturbed_gradient(problem, phi, h, task, nu, argnum=1), stats

            _, d_psi, stats = jvp(psi, (zero,), (one,), has_aux=True)
            return d_psi, stats

        grads, stats = average_over_tasks(task_gradient, h, tasks)
        # Each step: a gradient and its tangent (an HVP); psi's tangent: one mixed product.
        k = solver.steps
        cost = Cost(inner_grad_evals=k, grad_evals=k + 1, hvps=k, mixed_products=1)
        return grads, solve_info("fo-bmaml-jvp", stats, cost)
