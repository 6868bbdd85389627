"""Peak memory of one meta-step on few-shot MNIST-1D with a cnn, against the inner steps
and the channels, for maml, fomaml, reptile, imaml, fo-bmaml (symmetric) and fo-bmaml-jvp.

Each (method, steps, channels) runs in a fresh process, one CPU thread: the problem is
built, one warm-up hypergradient with 2 inner steps pays torch's one-time allocations,
then `repeats` hypergradients with the configured steps (the meta-step's memory: the outer
update adds one copy of h). On CPU, peak memory is the process's peak resident set
(`ru_maxrss` of RUSAGE_SELF, read in that process); with --device cuda it is
`torch.cuda.max_memory_allocated` (tensors only: no CUDA context, no allocator cache). It
is given in all and as added by the measured calls over the peak before them. maml, fomaml
and reptile solve MAML's inner problem (plain GD steps from theta, no regulariser); imaml,
fo-bmaml and fo-bmaml-jvp the B-MAML one (proximal prior, lam 1). The network is
`channels` x 3 convolutions (kernel 5, ReLU, max pooling) and a linear head.

Measured: the inner steps --steps at --steps-at channels, the channels --channels at
--channels-at steps, and the --anchor-channels at the fewest steps (so that the fit below
can tell per-step memory from the rest). Every row of "rows" is measured.

The fit, per method and memory key, by least squares over its rows (memory linear in the
steps K; activations grow as the channels C, parameters as C^2):

    M(K, C) = a0 + a1 C + a2 C^2 + K (b1 C + b2 C^2)

"fit_16gib", one entry per method: the widest network, C in 16, 32, ..., 1024 (the
largest C such that every C' <= C fits; 1024 means "at least 1024"), whose peak memory in
all (peak_memory_mib) at 100 inner steps is at most 16 GiB. Its peak_memory_mib is the
measured row's where (100, C) was measured ("extrapolated": false), else the fit's.
"fit_16gib_steps", same schema: the most inner steps (1 to 100000, "at least" at the cap)
that fit in 16 GiB at 256 channels. "fit_check": points measured outside the fitted rows
(--check METHOD,STEPS,CHANNELS, skipped where the fit predicts more than
--check-limit-mib), against the fit's prediction from the other rows.
A method whose memory does not grow with K gets a fitted per-step term of run-to-run noise
(a few tens of MiB between processes, either sign): its fit_16gib_steps then measures that
noise, not a limit. With --device cuda the 16 GiB are of allocated tensors.
Prints JSON: every measurement, per method the ratio of peak memory (in all and added) at
the most over the fewest steps and channels, the fit and the 16 GiB limits.

    python benchmarks/mnist1d_memory.py [--steps 5,10,25,50,100] [--steps-at 256]
        [--channels 16,32,64,128,256] [--channels-at 100] [--anchor-channels 16,64]
        [--check maml,100,512] [--device cpu|cuda] [--plot PNG]
    python benchmarks/mnist1d_memory.py --from RESULT.json [--check ...] [--plot PNG]
        (the rows and earlier checks of RESULT.json, not measured again)
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import bilevel
from bilevel.blocks import ComposedProblem, models, sources

METHODS = ("maml", "fomaml", "reptile", "imaml", "fo-bmaml", "fo-bmaml-jvp")
MAML_FORM = ("maml", "fomaml", "reptile")  # methods that follow the solver from theta
WAYS, SHOTS, QUERIES, TASKS = 5, 1, 5, 4
LIMIT_MIB = 16 * 2**10
WIDTHS = range(16, 1025, 16)  # the channels fit_16gib searches
MAX_STEPS = 100_000  # the inner steps fit_16gib_steps searches
FIT_STEPS, FIT_CHANNELS = 100, 256  # where fit_16gib and fit_16gib_steps are taken


def setting(method: str, steps: int, channels: int, device: str = "cpu"):
    """(problem, h, tasks, solver): 5-way 1-shot tasks, 5 queries per class, 4 per step."""
    source = sources.build("mnist1d", {"samples": 1000, "split": {
        "kind": "few-shot", "ways": WAYS, "shots": SHOTS, "queries": QUERIES, "test_tasks": 1}})
    cnn = models.build("cnn", {"channels": [channels] * 3, "kernel": 5, "pool": "max"})
    form = ({"regularizer": "none", "learn_lam": "fixed"} if method in MAML_FORM else
            {"regularizer": "proximal", "lam": 1.0})
    problem = ComposedProblem(source, cnn, loss="cross-entropy", device=device, **form)
    generator = torch.Generator().manual_seed(0)
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(TASKS, generator)
    return problem, h, tasks, bilevel.solvers.GD(lr=0.1, steps=steps)


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure_one(method: str, steps: int, channels: int, repeats: int,
                device: str = "cpu") -> dict:
    torch.set_num_threads(1)
    problem, h, tasks, solver = setting(method, steps, channels, device)
    bilevel.hypergradient(problem, h, tasks, solver=solver.with_steps(2), method=method)
    before = peak_mib(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"method": method, "steps": steps, "channels": channels,
            "parameters": sum(p.numel() for p in problem.start.values()),
            "peak_memory_mib": peak_mib(device),
            "peak_memory_added_mib": peak_mib(device) - before,
            "memory_before_calls_mib": before, "time_s": statistics.median(times),
            "repeats": repeats}


def run_fresh(method: str, steps: int, channels: int, repeats: int, device: str) -> dict:
    command = [sys.executable, __file__, "--one", method, str(steps), str(channels),
               "--repeats", str(repeats), "--device", device]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def ratios(rows: list[dict], key: str, fixed: str, at: int) -> dict:
    """Per method: peak memory (all, added) at the largest `key` over the smallest, with
    `fixed` equal to `at`; over the steps, whether the ratio is within the issue's 1.1x."""
    out = {}
    for method in sorted({r["method"] for r in rows}, key=METHODS.index):
        mine = sorted((r for r in rows if r["method"] == method and r[fixed] == at),
                      key=lambda r: r[key])
        few, many = mine[0], mine[-1]
        ratio = many["peak_memory_mib"] / few["peak_memory_mib"]
        out[method] = {
            f"{key}": [few[key], many[key]], fixed: few[fixed], "peak_memory_ratio": ratio,
            "added_memory_mib": [few["peak_memory_added_mib"], many["peak_memory_added_mib"]]}
        if key == "steps":
            out[method]["within_1.1x"] = ratio <= 1.1
    return out


def features(steps, channels) -> np.ndarray:
    """The fit's columns [1, C, C^2, K C, K C^2], one row per (K, C)."""
    k, c = np.broadcast_arrays(np.asarray(steps, float), np.asarray(channels, float))
    return np.stack([np.ones_like(c), c, c**2, k * c, k * c**2], axis=-1)


def fit(rows: list[dict], key: str = "peak_memory_mib") -> dict:
    """Per method, [a0, a1, a2, b1, b2] of M(K, C) (module docstring) by least squares on
    the rows' `key`. Needs, per method, rows at >= 3 channels and >= 2 step counts, one
    channel count at >= 2 step counts (else the K terms are not identified)."""
    out = {}
    for method in sorted({r["method"] for r in rows}, key=METHODS.index):
        mine = [r for r in rows if r["method"] == method]
        x = features([r["steps"] for r in mine], [r["channels"] for r in mine])
        if np.linalg.matrix_rank(x) < x.shape[1]:
            raise ValueError(f"rows of {method} do not identify the fit: need >= 3 channel "
                             f"counts and two step counts at >= 2 of them, got "
                             f"{sorted((r['steps'], r['channels']) for r in mine)}")
        y = np.array([r[key] for r in mine])
        out[method] = np.linalg.lstsq(x, y, rcond=None)[0].tolist()
    return out


def predict(coefficients: list[float], steps, channels) -> np.ndarray:
    return features(steps, channels) @ np.asarray(coefficients)


def largest_fitting(candidates: np.ndarray, memory: np.ndarray) -> int | None:
    """The largest candidate below the first one whose memory is over LIMIT_MIB (all of
    them when none is); None when the first is over."""
    over = np.flatnonzero(memory > LIMIT_MIB)
    last = len(candidates) if len(over) == 0 else over[0]
    return int(candidates[last - 1]) if last > 0 else None


def fits_16gib(rows: list[dict], coefficients: dict, over: str) -> list[dict]:
    """One entry per method (module docstring): over="channels", the widest network at
    FIT_STEPS steps; over="steps", the most steps at FIT_CHANNELS channels."""
    out = []
    for method, coef in coefficients.items():
        if over == "channels":
            candidates = np.array(WIDTHS)
            best = largest_fitting(candidates, predict(coef, FIT_STEPS, candidates))
            steps, channels = FIT_STEPS, best
        else:
            candidates = np.arange(1, MAX_STEPS + 1)
            best = largest_fitting(candidates, predict(coef, candidates, FIT_CHANNELS))
            steps, channels = best, FIT_CHANNELS
        measured = [r["peak_memory_mib"] for r in rows if r["method"] == method
                    and (r["steps"], r["channels"]) == (steps, channels)]
        memory = measured[0] if measured else (
            None if best is None else float(predict(coef, steps, channels)))
        out.append({"method": method, "steps": steps, "channels": channels,
                    "peak_memory_mib": memory, "extrapolated": not measured})
    return out


def fit_check(checks: list[dict], coefficients: dict) -> list[dict]:
    """Each check ({"method", "steps", "channels", "measured_peak_memory_mib"}: None when
    skipped) with the fit's prediction at its point."""
    return [check | {"predicted_peak_memory_mib": float(
                predict(coefficients[check["method"]], check["steps"], check["channels"]))}
            for check in checks]


def plot(result: dict, path: str) -> None:
    """Two panels: peak memory in all against the steps (at the step sweep's channels) and
    against the channels (at the channel sweep's steps); markers measured, dashed lines the
    fit (extrapolated beyond the markers), crosses the --check points (measured, not fitted),
the 16 GiB limit dotted.

    Memory in all rather than added: the first-order methods add 0 to 60 MiB, the
    allocator's noise (zeros included, so no log axis), and fitting that noise extrapolates
    to negative memory."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, sweep = result["rows"], result["sweep"]
    coefficients = fit(rows)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("steps", "channels", sweep["steps_at"], np.geomspace(5, 1000, 60)),
              ("channels", "steps", sweep["channels_at"], np.geomspace(16, 1024, 60)))
    for axis, (key, fixed, at, grid) in zip(axes, panels, strict=True):
        for i, method in enumerate(coefficients):
            mine = sorted((r for r in rows if r["method"] == method and r[fixed] == at),
                          key=lambda r: r[key])
            axis.plot([r[key] for r in mine], [r["peak_memory_mib"] / 2**10 for r in mine],
                      "o-", ms=4, label=method, color=f"C{i}")
            k, c = (grid, at) if key == "steps" else (at, grid)
            axis.plot(grid, predict(coefficients[method], k, c) / 2**10, "--", lw=1,
                      color=f"C{i}")
            checked = [(r[key], r["measured_peak_memory_mib"] / 2**10)
                       for r in result["fit_check"] if r["method"] == method
                       and r[fixed] == at and r["measured_peak_memory_mib"] is not None]
            if checked:
                axis.plot(*zip(*checked, strict=True), "x", ms=7, mew=2, color=f"C{i}",
                          label=f"{method}: check, not fitted")
        axis.axhline(LIMIT_MIB / 2**10, color="grey", lw=0.8, ls=":")
        axis.text(grid[0], LIMIT_MIB / 2**10 * 1.1, "16 GiB", color="grey", fontsize=8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylim(0.3, 100)
        axis.set_xlabel(f"inner steps (at {at} channels)" if key == "steps"
                        else f"channels (at {at} inner steps)")
        axis.set_ylabel("peak memory of the process, meta-step (GiB)")
        axis.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"5-way 1-shot MNIST-1D, cnn (3 conv), {result['device']}: dots "
                    "measured (fresh process each), dashed the fit, extrapolated beyond them; "
                    "crosses measured, not fitted", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "STEPS", "CHANNELS"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", default="5,10,25,50,100")
    parser.add_argument("--channels", default="16,32,64,128,256")
    parser.add_argument("--steps-at", type=int, default=256, help="channels of the step sweep")
    parser.add_argument("--channels-at", type=int, default=100,
                        help="inner steps of the channel sweep")
    parser.add_argument("--anchor-channels", default="16,64",
                        help="channels also measured at the fewest steps, for the fit")
    parser.add_argument("--check", action="append", default=[],
                        help="METHOD,STEPS,CHANNELS measured against the fit")
    parser.add_argument("--check-limit-mib", type=float, default=12 * 2**10,
                        help="skip a --check whose predicted peak memory is over this")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--plot", help="write the two-panel plot here (PNG)")
    parser.add_argument("--from", dest="source",
                        help="take the rows (and earlier checks) from this result JSON "
                             "instead of measuring them")
    args = parser.parse_args(argv)
    if args.one:
        method, steps, channels = args.one
        print(json.dumps(measure_one(method, int(steps), int(channels), args.repeats,
                                     args.device)))
        return
    command = " ".join(["python benchmarks/mnist1d_memory.py", *(argv or sys.argv[1:])])
    if args.source:
        with open(args.source) as file:
            previous = json.load(file)
        rows, checks = previous["rows"], previous["fit_check"]
        command = f"{previous['command']}; then {command}"
        device, steps_at, channels_at = (previous["device"], previous["sweep"]["steps_at"],
                                         previous["sweep"]["channels_at"])
    else:
        steps = sorted(map(int, args.steps.split(",")))
        configs = sorted({(k, args.steps_at) for k in steps}
                         | {(args.channels_at, c) for c in map(int, args.channels.split(","))}
                         | {(steps[0], c) for c in map(int, args.anchor_channels.split(","))})
        rows = [run_fresh(method, k, c, args.repeats, args.device)
                for method in args.methods.split(",") for k, c in configs]
        checks, device, steps_at, channels_at = [], args.device, args.steps_at, args.channels_at
    coefficients = fit(rows)
    for method, k, c in (check.split(",") for check in args.check):
        k, c = int(k), int(c)
        measured = (run_fresh(method, k, c, args.repeats, device)["peak_memory_mib"]
                    if predict(coefficients[method], k, c) <= args.check_limit_mib else None)
        checks.append({"method": method, "steps": k, "channels": c,
                       "measured_peak_memory_mib": measured})
    result = {
        "command": command, "device": device, "threads": 1,
        "setting": {"ways": WAYS, "shots": SHOTS, "queries": QUERIES, "tasks": TASKS,
                    "signal": 40, "kernel": 5, "convolutions": 3, "pool": "max"},
        "sweep": {"steps_at": steps_at, "channels_at": channels_at},
        "rows": rows,
        "summary": {"over_steps": ratios(rows, "steps", "channels", steps_at),
                    "over_channels": ratios(rows, "channels", "steps", channels_at)},
        "fit": {"model": "M(K, C) = a0 + a1 C + a2 C^2 + K (b1 C + b2 C^2), MiB",
                "peak_memory_mib": coefficients,
                "peak_memory_added_mib": fit(rows, "peak_memory_added_mib")},
        "fit_16gib": fits_16gib(rows, coefficients, "channels"),
        "fit_16gib_steps": fits_16gib(rows, coefficients, "steps"),
        "fit_check": fit_check(checks, coefficients)}
    print(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
