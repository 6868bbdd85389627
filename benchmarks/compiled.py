"""Compiled (`compile=True`) against eager hypergradients on the sinusoid workload.

MLP 1-40-40-1, 25 tasks of 10 + 10 points, float32, one CPU thread. For each estimator
and inner solver: the compile time (first compiled call less an eager call), then eager and
compiled calls interleaved, median time of each, the speed-up, the outer steps after which
compiling has paid for itself, and the relative difference of the two results (float32;
float64 for the rows marked so). Then the per-step cost of fo-bmaml-jvp and imaml against
fomaml, eager and compiled. Prints JSON.

With --device cuda: the same workload on the GPU, compiled with and without CUDA graphs
(`bilevel.compiled.Compilation(cuda_graphs=...)`) against eager, each call synchronised, at
10 inner steps and (fewer repeats, eager once) at 100 and 1000; with the peak GPU memory of one call
above what was allocated before it (`torch.cuda.max_memory_allocated`). Rows start until
--deadline seconds have passed; each row also goes to stderr as it is measured.

TorchInductor keeps what it generated in a cache directory; by default this script uses a
fresh one, so compile times are those of a first run on a new machine (--warm: the
default cache, as a second run sees it).

    python benchmarks/compiled.py [--repeats 15] [--warm] [--quick] [--device cuda]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cases(quick: bool):
    """(name, form, method, options, solver spec, dtype) of each row."""
    gd10 = {"name": "gd", "lr": 0.01, "steps": 10}
    proximal = {"name": "nesterov", "lr": 0.002, "steps": 60, "momentum": 0.8}
    rows = [("fomaml", "maml", "fomaml", {}, gd10, "float32"),
            ("maml", "maml", "maml", {}, gd10, "float32"),
            ("fo-bmaml", "bmaml", "fo-bmaml", {}, gd10, "float32"),
            ("fo-bmaml, 60 proximal steps", "bmaml", "fo-bmaml", {}, proximal, "float32")]
    if not quick:
        rows += [("reptile", "maml", "reptile", {}, gd10, "float32"),
                 ("fomaml (B-MAML form)", "bmaml", "fomaml", {}, gd10, "float32"),
                 ("fo-bmaml-jvp", "bmaml", "fo-bmaml-jvp", {}, gd10, "float32"),
                 ("imaml, 5 CG steps", "bmaml", "imaml", {"cg_steps": 5}, gd10, "float32"),
                 ("fomaml float64", "maml", "fomaml", {}, gd10, "float64"),
                 ("fo-bmaml float64", "bmaml", "fo-bmaml", {}, gd10, "float64")]
    return rows


def cuda_cases(quick: bool):
    """(name, form, method, options, solver spec, dtype) of each CUDA row: the target rows
    first, then each B-MAML-form estimator at 10, 100 and 1000 steps (the longer solves
    reuse the 10-step solve's compiled chunks)."""
    rows = cases(quick=True)
    if quick:
        return rows
    for name, method, options in (("fomaml (B-MAML form)", "fomaml", {}),
                                  ("fo-bmaml", "fo-bmaml", {}),
                                  ("fo-bmaml-jvp", "fo-bmaml-jvp", {}),
                                  ("imaml, 5 CG steps", "imaml", {"cg_steps": 5}),
                                  ("reptile", "reptile", {})):
        for steps in (10, 100, 1000):
            if (method, steps) != ("fo-bmaml", 10):  # a target row
                gd = {"name": "gd", "lr": 0.01, "steps": steps}
                suffix = "" if steps == 10 else f", {steps} steps"
                rows.append((name + suffix, "bmaml", method, options, gd, "float32"))
    return rows


def measure(name, form, method, options, solver, dtype, repeats, device="cpu") -> dict:
    import torch

    import bilevel
    from bilevel.compiled import Compilation
    from bilevel.tree import relative_error
    from problems.sinusoid import Sinusoid

    generator = torch.Generator().manual_seed(0)
    problem = Sinusoid(form=form, lam=10.0, dtype=getattr(torch, dtype), device=device)
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(25, generator)
    # Variants: eager, compiled, and on CUDA compiled with CUDA graphs.
    variants = {"eager": False, "compiled": Compilation(True, cuda_graphs=False)}
    if device == "cuda":
        variants["graphs"] = Compilation(True, cuda_graphs=True)

    def call(variant):
        start = time.perf_counter()
        result = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                       compile=variants[variant], **options)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    long = device == "cuda" and solver["steps"] >= 100  # eager once: ~4 ms per step on CUDA
    eager, eager_once = call("eager")
    if not long:  # again, warm: the problem's checks and torch's first-call costs
        eager, eager_once = call("eager")
    row = {"case": name, "method": method, "solver": solver, "dtype": dtype}

    def key(variant, what):  # "compiled"'s keys unprefixed (the CPU report reads them)
        return what if variant == "compiled" else f"{variant}_{what}"

    times = {variant: [eager_once] if long and variant == "eager" else []
             for variant in variants}
    for variant in list(variants)[1:]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            fast, first = call(variant)
        # A long row's chunks were compiled by its 10-step row: nothing to pay off.
        row[key(variant, "compile_s")] = None if long else first - eager_once
        row[key(variant, "eager_fallbacks")] = [str(w.message) for w in caught
                                                if "bilevel:" in str(w.message)]
        row[key(variant, "relative_difference")] = relative_error(fast, eager)
    for _ in range(repeats):
        for variant in variants:
            if not (long and variant == "eager"):
                times[variant].append(call(variant)[1])
    for variant, measured in times.items():
        row[f"{variant}_s"] = statistics.median(measured)
    for variant in list(variants)[1:]:
        saved = row["eager_s"] - row[f"{variant}_s"]
        row[key(variant, "speedup")] = row["eager_s"] / row[f"{variant}_s"]
        compile_s = row[key(variant, "compile_s")]
        row[key(variant, "break_even_steps")] = (compile_s / saved if saved > 0 and compile_s
                                                 is not None else None)
    if device == "cuda":
        for variant in variants:
            if long and variant == "eager":
                continue
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            call(variant)
            row[f"{variant}_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return row


def per_step_ratios(rows) -> dict:
    """fo-bmaml-jvp and imaml over fomaml (all B-MAML form, 10 GD steps), same process."""
    by_case = {row["case"]: row for row in rows}
    base = by_case.get("fomaml (B-MAML form)")
    if base is None:
        return {}
    modes = [mode for mode in ("eager", "compiled", "graphs") if f"{mode}_s" in base]
    return {case: {mode: by_case[case][f"{mode}_s"] / base[f"{mode}_s"] for mode in modes}
            for case in ("fo-bmaml-jvp", "imaml, 5 CG steps") if case in by_case}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warm", action="store_true", help="use TorchInductor's own cache")
    parser.add_argument("--quick", action="store_true", help="the four target rows only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="start no row after this many seconds")
    args = parser.parse_args(argv)
    if not args.warm:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bilevel-inductor-")
    import torch

    torch.set_num_threads(1)
    load_before, began = os.getloadavg()[0], time.perf_counter()
    rows, skipped = [], []
    for case in (cuda_cases if args.device == "cuda" else cases)(args.quick):
        if time.perf_counter() - began > args.deadline:
            skipped.append(case[0])
            continue
        rows.append(measure(*case, repeats=args.repeats, device=args.device))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    gpu = {"gpu": torch.cuda.get_device_name()} if args.device == "cuda" else {}
    print(json.dumps({"device": args.device, **gpu, "threads": 1, "torch": torch.__version__,
                      "load_average_1min": [load_before, os.getloadavg()[0]],
                      "cold_cache": not args.warm, "repeats": args.repeats, "rows": rows,
                      "skipped_at_deadline": skipped,
                      "over_fomaml": per_step_ratios(rows)}, indent=1))


if __name__ == "__main__":
    main()
