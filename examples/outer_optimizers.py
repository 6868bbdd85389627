"""Outer optimizers on the paper's quadratic: ClippedGD, NormalizedGD, Adam and SGD.

Each run meta-trains theta (lam fixed) with `bilevel.meta_train` and FO-B-MAML (full batch: every
step uses all the tasks, so the logged loss is F(theta) itself), from the same start,
and we follow the gap F(theta_t) - min F. Writes docs/results/outer_optimizers.{png,json,md}
(or --out DIR); `--quick` runs a few steps.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import bilevel  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402

DIM, KAPPA, LAM, TASKS = 10, 100.0, 1.0, 16
OPTIMIZERS = {  # label: outer setting, chosen by hand (the initial |grad F| is 0.5)
    "clipped-gd": {"name": "clipped-gd", "lr": 1.0, "max_norm": 0.25},
    "normalized-gd": {"name": "normalized-gd", "lr": 1.0, "beta": 1.0},
    "adam": {"name": "adam", "lr": 0.1},
    "sgd": {"name": "sgd", "lr": 1.0},
}


class FixedLamQuadratic(Quadratic):
    """The quadratic with lam fixed, so that h = {"theta"} and min F is a closed form."""

    def init_hyper(self, generator=None):
        return {"theta": super().init_hyper(generator)["theta"]}

    def lam(self, h):
        return torch.tensor(self.lam_init, dtype=self.dtype, device=self.device)


def minimum_outer_loss(problem, h, tasks) -> float:
    """min over theta of F, in closed form: F is a convex quadratic in theta."""
    def loss(theta):
        return problem.outer_loss(h | {"theta": {"w": theta}}, tasks)

    theta = h["theta"]["w"]
    step = torch.linalg.solve(torch.func.hessian(loss)(theta), torch.func.grad(loss)(theta))
    return loss(theta - step).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, for tests")
    parser.add_argument("--out", default="docs/results", help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 5 if args.quick else 100
    problem = FixedLamQuadratic(dim=DIM, kappa=KAPPA, lam=LAM, n_tasks=TASKS)
    root = ((KAPPA + LAM) / (1 + LAM)) ** 0.5  # Nesterov's momentum for the inner condition
    solver = bilevel.solvers.Nesterov(lr=1 / (KAPPA + LAM), steps=150,
                                      momentum=(root - 1) / (root + 1))
    h0 = problem.init_hyper(torch.Generator().manual_seed(0))
    optimum = minimum_outer_loss(problem, h0, problem.all_tasks())
    gaps = {}
    for label, outer in OPTIMIZERS.items():
        result = bilevel.meta_train(problem, solver=solver, outer=outer, steps=steps,
                                    tasks_per_step=TASKS, seed=0, progress=False)
        final = problem.outer_loss(result.h, problem.all_tasks()).item()
        gaps[label] = [r["loss"] - optimum for r in result.history] + [final - optimum]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, gap in gaps.items():
        axis.semilogy([max(g, 1e-16) for g in gap], label=f"{label} {OPTIMIZERS[label]}")
    axis.set(xlabel="outer step", ylabel="F(theta) - min F",
             title=f"quadratic dim={DIM}, kappa={KAPPA:g}, lam={LAM:g}, {TASKS} tasks, "
                   "FO-B-MAML")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "outer_optimizers.png", dpi=110)
    (out / "outer_optimizers.json").write_text(json.dumps(
        {"optimizers": OPTIMIZERS, "min_F": optimum, "gap": gaps}, indent=1))
    checkpoints = [k for k in (0, 10, 25, 50, steps) if k <= steps]
    lines = ["| optimizer | settings | " + " | ".join(f"gap at step {k}" for k in checkpoints)
             + " |", "|---" * (2 + len(checkpoints)) + "|"]
    lines += [f"| {label} | `{json.dumps(OPTIMIZERS[label])}` | "
              + " | ".join(f"{gaps[label][k]:.1e}" for k in checkpoints) + " |"
              for label in OPTIMIZERS]
    table = "\n".join(lines) + "\n"
    (out / "outer_optimizers.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
