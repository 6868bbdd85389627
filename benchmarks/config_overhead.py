"""A problem composed in YAML against the same problem written in Python: time per outer step.

The sinusoid (B-MAML form, MLP 1-40-40-1, 25 tasks, 60 Nesterov steps, symmetric
fo-bmaml; examples/sinusoid.yaml) and the per-feature logistic regression on the digits
(200 Nesterov steps). Each is meta-trained for STEPS outer steps by `meta_train`,
alternating Python and YAML in one process, REPEATS times; a run's time per step is the
median of the step-to-step differences of its logged "time", and the ratio is taken
between the medians. One thread. Prints JSON.
Run: .venv/bin/python benchmarks/config_overhead.py
"""

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.config import build, from_dict  # noqa: E402
from problems.logreg import LogReg  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

STEPS, REPEATS = 8, 5


def composed(problem: dict, solver: dict):
    return build(from_dict({"problem": problem, "solver": solver, "steps": 1,
                            "tasks_per_step": 1, "device": "cpu"})).problem


def cases():
    sinusoid_solver = {"name": "nesterov", "lr": 0.01, "steps": 60}
    yield "sinusoid", sinusoid_solver, 25, Sinusoid(lam=10.0), composed(
        {"source": {"name": "sinusoid"}, "model": {"name": "mlp", "widths": [40, 40]},
         "loss": "mse", "lam": 10.0}, sinusoid_solver)
    logreg_solver = {"name": "nesterov", "lr": 0.1, "steps": 200}
    yield "logreg-per-feature", logreg_solver, 1, LogReg(per_feature=True, lam=0.1), composed(
        {"source": {"name": "sklearn", "dataset": "digits", "split": {"train": 500, "val": 500}},
         "model": "linear", "loss": "cross-entropy", "regularizer": "l2", "theta": "fixed",
         "lam": 0.1, "learn_lam": "per-feature"}, logreg_solver)


def step_time(problem, solver, tasks_per_step) -> float:
    result = bilevel.meta_train(problem, solver=solver, steps=STEPS, tasks_per_step=tasks_per_step,
                                outer={"name": "adam", "lr": 1e-3}, progress=False)
    times = [r["time"] for r in result.history]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for name, spec, tasks_per_step, python, yaml in cases():
        solver = bilevel.solvers.solvers.from_spec(spec, argument="solver")
        times = {"python": [], "yaml": []}
        step_time(python, solver, tasks_per_step)  # warm-up: torch's one-time costs
        for _ in range(REPEATS):
            times["python"].append(step_time(python, solver, tasks_per_step))
            times["yaml"].append(step_time(yaml, solver, tasks_per_step))
        medians = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {"python_s": medians["python"], "yaml_s": medians["yaml"],
                         "yaml_over_python": medians["yaml"] / medians["python"]}
    print(json.dumps({"benchmark": "config_overhead", "steps": STEPS, "repeats": REPEATS,
                      "threads": 1, "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
