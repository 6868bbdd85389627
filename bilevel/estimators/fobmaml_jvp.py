"""The perturbation engine in forward mode: d psi / d nu by a JVP instead of a difference.

With G_nu = g + nu * val_loss (eq. 9), phi_K(nu) the K-th iterate of the solver on G_nu
from `problem.inner_init(h, task)`, and psi(nu) = d_h G_nu(phi_K(nu), h) (the
bilevel.estimators.fobmaml definitions, with the solve truncated at K steps):

    grad = d psi / d nu at nu = 0
         = d_h val_loss(phi_K, h) + d_h d_phi g(phi_K, h) . d phi_K / d nu

computed exactly in forward mode: each solver step carries the tangent d phi_k / d nu
along with phi_k (`_tangent_recursion`; a solver with `run` only gets one `torch.func.jvp`
through the whole run). There is no nu to choose; it is the limit nu -> 0 of the
lock-stepped finite differences of "fo-bmaml". Forward mode keeps no trajectory, so memory
does not grow with K; each step costs one inner gradient and its tangent (one
Hessian-vector product).

This is the nu-derivative of the K-step *perturbed iterate*, not MAML's gradient of the
K-step objective val_loss(phi_K(h), h): the two differ at finite K, and both tend to
grad F(h) as the solve converges. The paper leaves this forward-mode variant as future
work; the name keeps it in the fo-bmaml family, though it is not first-order.
"""

import dataclasses

import torch
from torch.func import grad, grad_and_value, jvp, vjp

from bilevel import compiled
from bilevel.compiled import EAGER, Compilation
from bilevel.estimators.base import Estimator, estimators, solve_info
from bilevel.info import LOSS_KEY, Cost
from bilevel.inner import run_steps
from bilevel.solvers import Tangents
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
class FOBMAMLJVP(Estimator):
    """d psi / d nu at nu = 0 for the K-step solver, by forward-mode differentiation."""

    # Its result is grad F(h) only at converged inner solutions (meta_train warns).
    assumes_converged_inner = True

    def __call__(self, problem, h, tasks, solver, *, compilation: Compilation = EAGER):
        def d_psi(phi, tangent, h, task):
            """d_h val_loss(phi_K, h) + d_h d_phi g(phi_K, h) . d phi_K / d nu."""
            (f_h, val_loss), mixed = _direct_and_mixed(problem, phi, tangent, h, task)
            return tree_map(torch.add, f_h, mixed), {LOSS_KEY: val_loss}

        solve = _tangent_recursion if solver.stepwise else _jvp_through_run
        (grads, val_loss), stats = solve(problem, h, tasks, solver, d_psi, compilation)
        grads = tree_map(lambda g: g.mean(0), grads)
        # In derivatives of g: each step, a gradient and its tangent (an HVP); psi's tangent,
        # one mixed product (the gradients of val_loss are not g's).
        k = solver.steps
        cost = Cost(inner_grad_evals=k, grad_evals=k + 1, hvps=k, mixed_products=1)
        return grads, solve_info(self.name, stats | val_loss, cost)


def _direct_and_mixed(problem, phi, tangent, h, task):
    """((d_h val_loss, val_loss), d_h d_phi g . tangent) at phi for one task; the mixed
    product as d_h <d_phi g, tangent> (reverse over reverse: a Hessian is symmetric)."""
    direct = grad_and_value(problem.val_loss, argnums=1)(phi, h, task)
    _, pull_back = vjp(lambda h: grad(problem.inner_objective)(phi, h, task), h)
    (mixed,) = pull_back(tangent)
    return direct, mixed


def _tangent_recursion(problem, h, tasks, solver, then, compilation):
    """(then(phi_K, d phi_K / d nu, h, task), stats) of every task, for a stepwise solver
    (init, steps and `then` in one batched function: `bilevel.inner.run_steps`): each step of the
    solver on G_nu pushed forward in (iterates, nu) at nu = 0, so the tangent d x_k / d nu
    follows its own recursion in the same batched loop as the iterates (for GD,
    t_{k+1} = t_k - lr (H_g(y_k) t_k + d_phi val_loss(y_k))).

    The step's one gradient query, at y_k, is its only nonlinear part. Its tangent,
    H_g(y_k) dy_k + d_phi val_loss(y_k), is the pull-back of the reverse pass that gives
    the gradient (H_g is symmetric: the vector-Hessian product is the Hessian-vector
    product), not a jvp through it: forward over reverse made this estimator 9.0x fomaml's
    time on the sinusoid, eager, against 2.5x now, and did not compile through an MLP's
    matrix products (torch 2.13). The rest of the step is the solver's arithmetic:
    a solver with `linear_steps` maps the tangents by `step` itself; any other is pushed
    forward by jvp (twice: to find dy_k, then to step, the gradient an input). Per step:
    one gradient of g, one HVP, one gradient of val_loss (at y_k; the term nu * H_val dy_k
    is 0 at nu = 0)."""

    def start(h, task):
        x, aux = solver.start(problem.inner_init(h, task))
        return x, tree_map(torch.zeros_like, x), aux

    def step(k, state, h, task):
        x, tangent, aux = state
        queries = []

        def gradient(y):
            value, pull_back = vjp(lambda y: grad(problem.inner_objective)(y, h, task), y)
            queries.append((y, pull_back))
            return value

        def d_gradient(dy):
            y, pull_back = queries[0]
            return tree_map(torch.add, pull_back(dy)[0], grad(problem.val_loss)(y, h, task))

        if solver.linear_steps:
            x_next, aux_next = solver.step(k, x, aux, gradient)
            tangent_next, _ = solver.step(k, tangent, aux, Tangents(d_gradient))
            return x_next, tangent_next, aux_next

        def query_point(x):
            """The point y_k where step k queries the gradient."""
            points = []
            solver.step(k, x, aux, Tangents(
                lambda y: points.append(y) or tree_map(torch.zeros_like, y)))
            return points[0]

        def step_given(x, value):
            """Step k with `value` as the gradient."""
            return solver.step(k, x, aux, Tangents(lambda _: value))

        y, dy = jvp(query_point, (x,), (tangent,))
        return jvp(step_given, (x, gradient(y)), (tangent, d_gradient(dy)), has_aux=True)

    def finish(state):
        x, tangent, aux = state
        phi, stats = solver.finish(x, aux)
        return phi, tangent[0], stats

    def finished(out, h, task):
        phi, tangent, stats = out
        return then(phi, tangent, h, task), stats

    return run_steps(start, step, finish, finished, solver.steps, (h, tasks), (None, 0),
                     compilation)


def _jvp_through_run(problem, h, tasks, solver, then, compilation):
    """(then(phi_K, d phi_K / d nu, h, task), stats) of every task by one jvp in nu through
    the whole `solver.run` (forward-over-reverse), for a solver that defines no steps."""

    def solve(h, task):
        init = problem.inner_init(h, task)

        def run(nu):
            def gradient(phi):
                return perturbed_gradient(problem, phi, h, task, nu, argnum=0)

            phi, stats = solver.run(gradient, init)
            return phi, stats

        leaf = tree_leaves(init)[0]
        zero = torch.zeros((), dtype=leaf.dtype, device=leaf.device)
        phi, tangent, stats = jvp(run, (zero,), (torch.ones_like(zero),), has_aux=True)
        return then(phi, tangent, h, task), stats

    return compiled.batch(solve, (None, 0), compilation)(h, tasks)
