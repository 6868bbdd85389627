"""Overhead of `meta_train` over bare `hypergradient` calls, per outer step.

Same problem, solver, method and batch size, in one process. The bare loop calls
`hypergradient` on a pre-sampled batch; the trainer samples a batch, estimates,
logs, updates h with Adam (and, with a run directory, writes metrics.jsonl and a
checkpoint every 10 steps). Per-step times: the median of the step-to-step
differences of metrics' "time" (trainer) or of each call (bare), then the median
over repeats. Prints JSON. Run: .venv/bin/python benchmarks/training_overhead.py
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402

STEPS, REPEATS = 30, 5
CASES = {
    "small": dict(dim=4, inner_steps=10, tasks_per_step=4),
    "medium": dict(dim=20, inner_steps=50, tasks_per_step=16),
}


def bare(problem, solver, tasks_per_step) -> float:
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.sample_tasks(tasks_per_step, torch.Generator().manual_seed(1))
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        bilevel.hypergradient(problem, h, tasks, solver=solver)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def trainer(problem, solver, tasks_per_step, out=None) -> float:
    result = bilevel.meta_train(problem, solver=solver, steps=STEPS, tasks_per_step=tasks_per_step,
                                outer={"name": "adam", "lr": 1e-3}, progress=False, out=out,
                                checkpoint_every=10 if out else None)
    times = [r["time"] for r in result.history]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def main():
    torch.set_num_threads(1)
    report = {"steps": STEPS, "repeats": REPEATS, "threads": 1, "torch": torch.__version__}
    for name, case in CASES.items():
        problem = Quadratic(dim=case["dim"], kappa=100.0, n_tasks=16)
        solver = bilevel.solvers.GD(lr=0.01, steps=case["inner_steps"])
        n = case["tasks_per_step"]
        runs = {"bare": [], "loop": [], "loop_with_run_dir": []}
        for _ in range(REPEATS):
            runs["bare"].append(bare(problem, solver, n))
            runs["loop"].append(trainer(problem, solver, n))
            with tempfile.TemporaryDirectory() as out:
                runs["loop_with_run_dir"].append(trainer(problem, solver, n, Path(out) / "run"))
        seconds = {k: statistics.median(v) for k, v in runs.items()}
        report[name] = case | {f"{k}_ms_per_step": round(v * 1e3, 3) for k, v in seconds.items()}
        report[name] |= {"ratio_loop": round(seconds["loop"] / seconds["bare"], 3),
                         "ratio_loop_with_run_dir":
                             round(seconds["loop_with_run_dir"] / seconds["bare"], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
