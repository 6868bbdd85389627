"""Peak memory of one meta-step on few-shot MNIST-1D with a cnn, against the inner steps
and the channels, for maml, fomaml and fo-bmaml.

Each (method, steps, channels) runs in a fresh process, one CPU thread: the problem is
built, one warm-up hypergradient with 2 inner steps pays torch's one-time allocations,
then `repeats` hypergradients with the configured steps (the meta-step's memory: the outer
update adds one copy of h). Peak memory is the process's peak resident set (`ru_maxrss`
of RUSAGE_SELF, read in that process), in all and as added by the measured calls over the
peak before them. maml and fomaml solve MAML's inner problem (plain GD steps from theta, no
regulariser), fo-bmaml the B-MAML one (proximal prior, lam 1, symmetric differences); the
network is `channels` x 3 convolutions (kernel 5, ReLU, max pooling) and a linear head.
Prints JSON: every measurement, and per method the ratio of peak memory (in all and added)
at the most over the fewest steps and at the most over the fewest channels.

    python benchmarks/mnist1d_memory.py [--steps 5,25,100] [--channels 8,16,64]
        [--steps-at 16] [--channels-at 25]    (the steps sweep's channels, and vice versa)
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import bilevel
from bilevel.blocks import ComposedProblem, models, sources

METHODS = ("maml", "fomaml", "fo-bmaml")
WAYS, SHOTS, QUERIES, TASKS = 5, 1, 5, 4


def setting(method: str, steps: int, channels: int):
    """(problem, h, tasks, solver): 5-way 1-shot tasks, 5 queries per class, 4 per step."""
    source = sources.build("mnist1d", {"samples": 1000, "split": {
        "kind": "few-shot", "ways": WAYS, "shots": SHOTS, "queries": QUERIES, "test_tasks": 1}})
    cnn = models.build("cnn", {"channels": [channels] * 3, "kernel": 5, "pool": "max"})
    form = ({"regularizer": "proximal", "lam": 1.0} if method == "fo-bmaml" else
            {"regularizer": "none", "learn_lam": "fixed"})
    problem = ComposedProblem(source, cnn, loss="cross-entropy", **form)
    generator = torch.Generator().manual_seed(0)
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(TASKS, generator)
    return problem, h, tasks, bilevel.solvers.GD(lr=0.1, steps=steps)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure_one(method: str, steps: int, channels: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    problem, h, tasks, solver = setting(method, steps, channels)
    bilevel.hypergradient(problem, h, tasks, solver=solver.with_steps(2), method=method)
    before = peak_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
        times.append(time.perf_counter() - start)
    return {"method": method, "steps": steps, "channels": channels,
            "parameters": sum(p.numel() for p in problem.start.values()),
            "peak_memory_mib": peak_mib(), "peak_memory_added_mib": peak_mib() - before,
            "memory_before_calls_mib": before, "time_s": statistics.median(times),
            "repeats": repeats}


def run_fresh(method: str, steps: int, channels: int, repeats: int) -> dict:
    command = [sys.executable, __file__, "--one", method, str(steps), str(channels),
               "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def ratios(rows: list[dict], key: str, fixed: str, at: int) -> dict:
    """Per method: peak memory (all, added) at the largest `key` over the smallest, with
    `fixed` equal to `at`."""
    out = {}
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method and r[fixed] == at),
                      key=lambda r: r[key])
        few, many = mine[0], mine[-1]
        out[method] = {
            f"{key}": [few[key], many[key]], fixed: few[fixed],
            "peak_memory_ratio": many["peak_memory_mib"] / few["peak_memory_mib"],
            "added_memory_mib": [few["peak_memory_added_mib"], many["peak_memory_added_mib"]]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "STEPS", "CHANNELS"))
    parser.add_argument("--steps", default="5,25,100")
    parser.add_argument("--channels", default="8,16,64")
    parser.add_argument("--steps-at", type=int, default=16, help="channels of the step sweep")
    parser.add_argument("--channels-at", type=int, default=25,
                        help="inner steps of the channel sweep")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.one:
        method, steps, channels = args.one
        print(json.dumps(measure_one(method, int(steps), int(channels), args.repeats)))
        return
    configs = sorted({(k, args.steps_at) for k in map(int, args.steps.split(","))}
                     | {(args.channels_at, c) for c in map(int, args.channels.split(","))})
    rows = [run_fresh(method, steps, channels, args.repeats)
            for method in METHODS for steps, channels in configs]
    command = " ".join(["python benchmarks/mnist1d_memory.py", *(argv or sys.argv[1:])])
    print(json.dumps({
        "command": command, "device": "cpu", "threads": 1,
        "setting": {"ways": WAYS, "shots": SHOTS, "queries": QUERIES, "tasks": TASKS,
                    "signal": 40, "kernel": 5, "convolutions": 3, "pool": "max"},
        "rows": rows,
        "summary": {"over_steps": ratios(rows, "steps", "channels", args.steps_at),
                    "over_channels": ratios(rows, "channels", "steps", args.channels_at)}},
        indent=1))


if __name__ == "__main__":
    main()
