"""Cost of one outer step of data hyper-cleaning against the number of hyperparameters.

Everything but the number of learned weights is fixed: a synthetic classification set of
ROWS examples (FEATURES Gaussian features, CLASSES classes from a random linear teacher,
half the training labels corrupted by the holdout split), a linear model, L2 with lam
fixed, inner Nesterov for INNER_STEPS steps, symmetric fo-bmaml, Adam on h. The training
loss weights example i by sigmoid(w[g(i)]), g(i) = i // (ROWS / G), so G = 1 is one global
weight and G = ROWS one weight per example; the row "per-example (library)" is
`learn_weights: per-example` itself (no grouping). Each row: STEPS outer steps (one
hypergradient and one Adam update of h) from init_hyper; time per step = the median over
the steps, then over REPEATS runs (rows interleaved), one thread. The ratio is taken on CPU
time (process_time: with one thread, the work done, little disturbed by other processes
on a shared machine); wall time is reported beside it. Gradient evaluations as the
estimator counts them. Prints JSON.

With --memory: peak memory instead, each row in a fresh process (one thread) that builds
its one problem, then runs MEMORY_STEPS outer steps; peak memory is the process's peak
resident set (`ru_maxrss` of RUSAGE_SELF), in all and as added by the outer steps over the
peak before them (torch, the data, the problem). --into FILE adds these rows to FILE (the
time rows' JSON) under the key "memory", keeping the rest.
Run: .venv/bin/python benchmarks/cleaning_cost.py [--quick] [--memory [--into FILE]]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.blocks import ComposedProblem, models, sources  # noqa: E402
from bilevel.blocks.weighting import KEY, weighted_loss  # noqa: E402

ROWS, FEATURES, CLASSES, INNER_STEPS = 100_000, 32, 10, 20
STEPS, REPEATS = 4, 3
MEMORY_STEPS = 2  # the first allocates Adam's state; the second shows nothing new is kept
LIBRARY = "per-example (library)"
GROUPS = (1, 1_000, 10_000, 100_000)
SOLVER = bilevel.solvers.Nesterov(lr=0.1, steps=INNER_STEPS, momentum=0.9)


def synthetic(rows: int, path: Path) -> Path:
    """An .npz of `rows` examples: Gaussian features, labels argmax of a random teacher."""
    generator = np.random.default_rng(0)
    x = generator.standard_normal((rows, FEATURES))
    y = (x @ generator.standard_normal((FEATURES, CLASSES))).argmax(1)
    np.savez(path, x=x, y=y)
    return path


class GroupWeights(ComposedProblem):
    """`learn_weights: per-example`, but with `groups` logits, each shared by a block of
    consecutive training examples."""

    def __init__(self, source, groups: int, **options):
        super().__init__(source, models.get("linear")(), learn_weights="per-example", **options)
        rows = self.tasks.train_rows
        self.groups = groups
        self.index = torch.arange(rows) // (rows // groups)

    def init_hyper(self, generator=None):
        return super().init_hyper(generator) | {KEY: torch.zeros(self.groups)}

    def train_loss(self, phi, h, task):
        prediction = self.predict(phi, h, task["x"])
        return weighted_loss(self.loss, prediction, task["y"], h[KEY][self.index])


def step_time(problem, steps: int = STEPS) -> tuple[float, float, dict]:
    """Median CPU and wall seconds of `steps` outer steps (one hypergradient and one Adam
    update of h each) from init_hyper, and the last step's gradient evaluations."""
    h = problem.init_hyper()
    leaves = [leaf.requires_grad_() for leaf in h.values()]
    adam = torch.optim.Adam(leaves, lr=0.1)
    tasks = problem.sample_tasks(1)
    cpu, wall = [], []
    for _ in range(steps):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fo-bmaml")
        for leaf, value in zip(leaves, grad.values(), strict=True):
            leaf.grad = value
        adam.step()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    counts = {"inner_grad_evals": info.cost.inner_grad_evals,
              "grad_evals": info.cost.grad_evals}
    return statistics.median(cpu), statistics.median(wall), counts


def names(rows: int) -> list[str]:
    return [f"{g} weight(s)" for g in GROUPS if g <= rows] + [LIBRARY]


def build_cases(rows: int, folder: Path, only: str | None = None) -> dict:
    """{row name: problem} on a synthetic set of `rows` training examples written in
    `folder` (`only`: that row's problem alone)."""
    split = {"kind": "holdout", "train": rows, "val": rows // 10, "corruption": 0.5,
             "standardize": False}
    path = synthetic(rows + rows // 10, folder / "synthetic.npz")
    source = sources.build("npz", {"path": str(path), "kind": "classification", "split": split})
    options = {"loss": "cross-entropy", "regularizer": "l2", "theta": "fixed", "lam": 1e-3,
               "learn_lam": "fixed"}
    cases = {}
    for name in names(rows):
        if only not in (None, name):
            continue
        cases[name] = (ComposedProblem(source, models.get("linear")(),
                                       learn_weights="per-example", **options)
                       if name == LIBRARY else
                       GroupWeights(source, int(name.split()[0]), **options))
    return cases


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def memory_one(name: str, rows: int) -> dict:
    """In this (fresh) process: build row `name`'s problem, then MEMORY_STEPS outer steps."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        (problem,) = build_cases(rows, Path(folder), only=name).values()
    before = peak_mib()
    _, _, counts = step_time(problem, MEMORY_STEPS)
    return {"hyperparameters": problem.init_hyper()[KEY].numel(), "peak_memory_mib": peak_mib(),
            "peak_memory_added_mib": peak_mib() - before, "memory_before_steps_mib": before,
            **counts}


def memory(rows: int) -> dict:
    """Every row's `memory_one` in a fresh process; ratios over the one-weight row."""
    results = {}
    for name in names(rows):
        command = [sys.executable, __file__, "--memory-one", name, "--rows", str(rows)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout)
    base = results[names(rows)[0]]
    for row in results.values():
        row["peak_over_one_weight"] = row["peak_memory_mib"] / base["peak_memory_mib"]
        row["added_over_one_weight"] = (row["peak_memory_added_mib"]
                                        / base["peak_memory_added_mib"])
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows, 2 repeats")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory, each row in a fresh process, instead of time")
    parser.add_argument("--into", type=Path, help="with --memory: the JSON file to add to")
    parser.add_argument("--memory-one", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = args.rows or (1_000 if args.quick else ROWS)
    if args.memory_one:
        print(json.dumps(memory_one(args.memory_one, rows)))
        return
    if args.memory:
        command = "python benchmarks/cleaning_cost.py --memory" + (" --quick" if args.quick
                                                                    else "")
        record = {"command": command, "rows": rows, "steps": MEMORY_STEPS, "threads": 1,
                  "torch": torch.__version__, "results": memory(rows)}
        if args.into is not None:
            saved = json.loads(args.into.read_text())
            args.into.write_text(json.dumps(saved | {"memory": record}, indent=1) + "\n")
        print(json.dumps(record, indent=1))
        return
    torch.set_num_threads(1)
    repeats = 2 if args.quick else REPEATS
    with tempfile.TemporaryDirectory() as folder:
        cases = build_cases(rows, Path(folder))
    groups = [g for g in GROUPS if g <= rows]
    start = time.perf_counter()
    cpu, wall = {name: [] for name in cases}, {name: [] for name in cases}
    counts = {}
    for problem in cases.values():
        step_time(problem)  # warm-up: torch's one-time costs
    for _ in range(repeats):
        for name, problem in cases.items():
            seconds, wall_seconds, counts[name] = step_time(problem)
            cpu[name].append(seconds)
            wall[name].append(wall_seconds)
    base = statistics.median(cpu[f"{groups[0]} weight(s)"])
    results = {name: {"hyperparameters": problem.init_hyper()[KEY].numel(),
                      "step_cpu_s": statistics.median(cpu[name]),
                      "over_one_weight": statistics.median(cpu[name]) / base,
                      "step_wall_s": statistics.median(wall[name]),
                      "step_cpu_s_runs": cpu[name], **counts[name]}
               for name, problem in cases.items()}
    command = "python benchmarks/cleaning_cost.py" + (" --quick" if args.quick else "")
    print(json.dumps({"benchmark": "cleaning_cost", "command": command, "rows": rows,
                      "features": FEATURES, "classes": CLASSES, "inner_steps": INNER_STEPS,
                      "method": "fo-bmaml (symmetric)", "steps": STEPS, "repeats": repeats,
                      "threads": 1, "torch": torch.__version__,
                      "seconds": time.perf_counter() - start, "results": results}, indent=1))


if __name__ == "__main__":
    main()
