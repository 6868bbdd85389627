"""A tiny meta_train run on the quadratic, launched as a subprocess by tests/test_training_runs.py
(plainly, or under torchrun). `--sleep` slows each step down (without changing any number)
so that a test can interrupt the run halfway; `--warm-start` trains on the same 5 tasks every
step, with the inner solves warm-started across steps; `--method NAME` trains with a single-loop
method (its state carried across steps) on the same 5 tasks every step."""

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402

SETTINGS = dict(
    method={"name": "fo-bmaml", "scheme": "symmetric"},
    outer={"name": "adam", "lr": 0.05, "clip": 0.5, "schedule": {"name": "step", "step_size": 4}},
    steps=12, tasks_per_step=5, eval_every=3, eval_tasks=5, checkpoint_every=2,
)


class SlowQuadratic(Quadratic):
    def __init__(self, sleep: float, fixed_tasks: bool = False):
        super().__init__(dim=4, kappa=10.0, n_tasks=8, dtype=torch.float64)
        self.sleep, self.fixed_tasks = sleep, fixed_tasks

    def sample_tasks(self, n, generator=None):
        time.sleep(self.sleep)
        if self.fixed_tasks:
            return {k: v[:n] for k, v in self.pool.items()}
        return super().sample_tasks(n, generator)


def train(out, sleep=0.0, resume=False, warm_start=False, method=None):
    extra = {"warm_start": {"steps": 3, "estimator_steps": 4}} if warm_start else {}
    if method is not None:
        extra = {"method": {"name": method}}
    return bilevel.meta_train(SlowQuadratic(sleep, warm_start or method is not None),
                              solver=bilevel.solvers.GD(lr=0.05, steps=10), seed=3, out=out,
                              resume=resume, progress=False, **(SETTINGS | extra))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--warm-start", action="store_true")
    parser.add_argument("--method")
    args = parser.parse_args()
    train(args.out, args.sleep, args.resume, args.warm_start, args.method)


if __name__ == "__main__":
    main()
