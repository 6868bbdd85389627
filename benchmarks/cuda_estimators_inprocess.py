"""Every estimator on CUDA in one process (the fresh-process benchmarks/estimators.py
--device cuda needs several minutes of process starts): time and peak memory of one
hypergradient at 10, 100 and 1000 inner steps, sinusoid B-MAML workload (MLP 1-40-40-1,
25 tasks, float32) and the quadratic (dim 100, 32 tasks). Prints one JSON line per
measurement. Run: python benchmarks/cuda_estimators_inprocess.py
"""

import json
import statistics
import time

import torch

import bilevel
from problems.quadratic import Quadratic
from problems.sinusoid import Sinusoid

METHODS = ["fo-bmaml", "fomaml", "reptile", "imaml", "fo-bmaml-jvp", "maml"]


def main():
    for name in ("sinusoid", "quadratic"):
        for steps in (10, 100, 1000):
            if name == "sinusoid":
                problem = Sinusoid(form="bmaml", lam=10.0, device="cuda")
                solver, n = bilevel.solvers.GD(lr=0.01, steps=steps), 25
            else:
                problem = Quadratic(dim=100, kappa=100.0, n_tasks=32, device="cuda")
                solver, n = bilevel.solvers.GD(lr=1 / 101, steps=steps), 32
            h = problem.init_hyper(torch.Generator().manual_seed(0))
            tasks = problem.sample_tasks(n, torch.Generator().manual_seed(1))
            for method in METHODS:
                bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                peak = (torch.cuda.max_memory_allocated() - before) / 2**20
                print(json.dumps({"problem": name, "steps": steps, "method": method,
                                  "time_s": statistics.median(times), "peak_mib": peak}),
                      flush=True)


if __name__ == "__main__":
    main()
