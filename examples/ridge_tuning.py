"""Tune one ridge penalty per feature by gradient descent on the validation loss.

Plain SGD on h["log_lam"] with the FO-B-MAML hypergradient, compared at every step with
the closed form; prints the validation loss and the learned penalties.
Run: .venv/bin/python examples/ridge_tuning.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.tree import ravel  # noqa: E402
from problems.ridge import Ridge  # noqa: E402

STEPS, OUTER_LR = 30, 20.0


def main():
    problem = Ridge(n_train=50, n_val=50, features=10, noise=0.5, lam=0.1, seed=0)
    h, tasks = problem.init_hyper(), problem.sample_tasks(1)
    optimizer = torch.optim.SGD([h["log_lam"]["w"]], lr=OUTER_LR)
    for step in range(STEPS + 1):
        solver = bilevel.solvers.Nesterov(lr=1 / problem.smoothness(h), steps=100, momentum=0.8)
        grad, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method="fo-bmaml")
        closed, _ = ravel(problem.meta_gradient(h, tasks))
        error = ((ravel(grad)[0] - closed).norm() / closed.norm()).item()
        if step % 10 == 0:
            print(f"step {step:>2}: validation loss {problem.outer_loss(h, tasks).item():.5f}, "
                  f"hypergradient error vs closed form {error:.1e}")
        if step < STEPS:
            h["log_lam"]["w"].grad = grad["log_lam"]["w"]
            optimizer.step()
    lam = h["log_lam"]["w"].exp()
    print("learned lam per feature:", " ".join(f"{v:.2g}" for v in lam.tolist()))


if __name__ == "__main__":
    main()
