"""Meta-train the paper's quadratic (Appendix B) with FO-B-MAML and plain gradient descent.

Prints the outer loss F(theta) falling and, at every step, the relative error of the
FO-B-MAML hypergradient against the closed form. Run: `make demo`.
"""

import time

import torch

import bilevel
from bilevel.tree import relative_error
from problems.quadratic import Quadratic

DIM, KAPPA, LAM, TASKS = 20, 100.0, 1.0, 16
INNER_STEPS, OUTER_STEPS, OUTER_LR = 200, 30, 2.0


def main():
    problem = Quadratic(dim=DIM, kappa=KAPPA, lam=LAM, n_tasks=TASKS)
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.all_tasks()
    # The inner problem is (1 + lam)-strongly convex and (kappa + lam)-smooth: Nesterov's
    # constant momentum for that condition number.
    root = ((KAPPA + LAM) / (1 + LAM)) ** 0.5
    solver = bilevel.solvers.Nesterov(lr=1 / (KAPPA + LAM), steps=INNER_STEPS,
                                      momentum=(root - 1) / (root + 1))
    print(f"quadratic: dim={DIM} kappa={KAPPA:g} lam={LAM:g} tasks={TASKS}; inner Nesterov "
          f"{INNER_STEPS} steps; FO-B-MAML symmetric, nu=auto; outer GD lr={OUTER_LR:g} on theta")
    print(f"{'step':>4}  {'outer loss F':>14}  {'|grad|':>9}  {'rel. error vs closed form':>25}")
    start = time.perf_counter()
    for step in range(OUTER_STEPS + 1):
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver,
                                           method="fo-bmaml", scheme="symmetric", nu="auto")
        exact = problem.meta_gradient(h, tasks)
        error = relative_error(grad["theta"], exact["theta"])
        if step % 5 == 0 or step == OUTER_STEPS:
            print(f"{step:>4}  {problem.outer_loss(h, tasks).item():>14.6f}  "
                  f"{grad['theta']['w'].norm().item():>9.2e}  {error:>25.2e}")
        if step < OUTER_STEPS:
            h["theta"] = {"w": h["theta"]["w"] - OUTER_LR * grad["theta"]["w"]}
    print(f"final relative error of the hypergradient: {error:.2e} "
          f"(nu={info['nu']:.1e}, {info['inner_grad_evals']} inner gradient evaluations per "
          f"step, {time.perf_counter() - start:.1f} s in all)")


if __name__ == "__main__":
    main()
