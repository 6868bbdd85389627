"""Finite differences against forward mode across ReLU kinks, and threads, on the sinusoid.

1. fo-bmaml (symmetric difference in nu) against fo-bmaml-jvp (the exact nu-derivative of
   the same K-step solver): relative L2 difference on one batch of 25 tasks (MLP 1-40-40-1,
   B-MAML form, lam 10, 10 GD steps at lr 0.01), for ReLU and tanh, float32 with
   nu="auto" and float64 with nu = 1e-7. Where the perturbed solves cross a kink of ReLU,
   psi(nu) is not smooth in nu and the difference is off; forward mode is not.
2. Time of one fo-bmaml call on that batch with 1 thread and with torch's default (one per
   core), interleaved, median.

    python benchmarks/kinks.py
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.tree import relative_error  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

SOLVER = bilevel.solvers.GD(lr=0.01, steps=10)


def batch(activation, dtype):
    generator = torch.Generator().manual_seed(0)
    problem = Sinusoid(form="bmaml", lam=10.0, activation=activation, dtype=dtype)
    return problem, problem.init_hyper(generator), problem.sample_tasks(25, generator)


def difference(activation, dtype, nu) -> dict:
    problem, h, tasks = batch(activation, dtype)
    exact, _ = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fo-bmaml-jvp")
    finite, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fo-bmaml",
                                         nu=nu)
    return {"activation": activation, "dtype": str(dtype).removeprefix("torch."),
            "nu": info["nu"], "relative_difference": relative_error(finite, exact)}


def thread_times(repeats=7) -> dict:
    problem, h, tasks = batch("relu", torch.float32)
    counts = {"1": 1, "default": torch.get_num_threads()}
    times = {name: [] for name in counts}
    for _ in range(repeats):
        for name, count in counts.items():
            torch.set_num_threads(count)
            start = time.perf_counter()
            bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fo-bmaml")
            times[name].append(time.perf_counter() - start)
    return {f"threads_{name}": {"threads": counts[name], "time_s": statistics.median(t)}
            for name, t in times.items()}


def main():
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = [difference(activation, dtype, nu) for activation in ("relu", "tanh")
            for dtype, nu in ((torch.float32, "auto"), (torch.float64, 1e-7))]
    torch.set_num_threads(default)
    print(json.dumps({"fo_bmaml_vs_jvp": rows, "fo_bmaml_time": thread_times()}, indent=1))


if __name__ == "__main__":
    main()
