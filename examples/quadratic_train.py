"""Meta-train the paper's quadratic (Appendix B) with `bilevel.meta_train` and ClippedGD.

Writes a run directory under runs/ (settings, metrics.jsonl, summary, plots, checkpoint)
and prints where. Ctrl-C checkpoints; run again with --resume to continue.
Run: .venv/bin/python examples/quadratic_train.py [--out runs/quadratic] [--resume]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402

DIM, KAPPA, LAM, TASKS = 10, 100.0, 1.0, 16


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quadratic")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    problem = Quadratic(dim=DIM, kappa=KAPPA, lam=LAM, n_tasks=TASKS,
                        device=bilevel.resolve_device("auto"))
    # (1 + lam)-strongly convex, (kappa + lam)-smooth inner problem: Nesterov's momentum.
    root = ((KAPPA + LAM) / (1 + LAM)) ** 0.5
    solver = bilevel.solvers.Nesterov(lr=1 / (KAPPA + LAM), steps=100,
                                      momentum=(root - 1) / (root + 1))
    result = bilevel.meta_train(
        problem, solver=solver, method={"name": "fo-bmaml", "scheme": "symmetric"},
        outer={"name": "clipped-gd", "lr": 1.0, "max_norm": 1.0},
        steps=40, tasks_per_step=8, eval_every=10, eval_tasks=TASKS, seed=0,
        out=args.out, checkpoint_every=10, resume=args.resume,
    )
    first = next(r for r in result.history if "eval_val_loss" in r)
    print(f"held-out F(h): {first['eval_val_loss']:.4f} at step {first['step']} -> "
          f"{result.history[-1]['eval_val_loss']:.4f} at step {result.history[-1]['step']}; "
          f"run directory: {result.run_dir}")


if __name__ == "__main__":
    main()
