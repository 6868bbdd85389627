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
Run: .venv/bin/python benchmarks/cleaning_cost.py [--quick]
"""

import argparse
import json
import statistics
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


def step_time(problem) -> tuple[float, float, dict]:
    """Median CPU and wall seconds of STEPS outer steps (one hypergradient and one Adam
    update of h each) from init_hyper, and the last step's gradient evaluations."""
    h = problem.init_hyper()
    leaves = [leaf.requires_grad_() for leaf in h.values()]
    adam = torch.optim.Adam(leaves, lr=0.1)
    tasks = problem.sample_tasks(1)
    cpu, wall = [], []
    for _ in range(STEPS):
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows, 2 repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = 1_000 if args.quick else ROWS
    repeats = 2 if args.quick else REPEATS
    groups = [g for g in GROUPS if g <= rows]
    split = {"kind": "holdout", "train": rows, "val": rows // 10, "corruption": 0.5,
             "standardize": False}
    with tempfile.TemporaryDirectory() as folder:
        path = synthetic(rows + rows // 10, Path(folder) / "synthetic.npz")
        source = sources.build("npz", {"path": str(path), "kind": "classification",
                                       "split": split})
        options = {"loss": "cross-entropy", "regularizer": "l2", "theta": "fixed",
                   "lam": 1e-3, "learn_lam": "fixed"}
        cases = {f"{g} weight(s)": GroupWeights(source, g, **options) for g in groups}
        cases["per-example (library)"] = ComposedProblem(
            source, models.get("linear")(), learn_weights="per-example", **options)
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
