"""Compiled (`compile=True`) against eager hypergradients on the sinusoid workload.

MLP 1-40-40-1, 25 tasks of 10 + 10 points, float32, one CPU thread. For each estimator
and inner solver: the compile time (first compiled call less an eager call), then eager and
compiled calls interleaved, median time of each, the speed-up, the outer steps after which
compiling has paid for itself, and the relative difference of the two results (float32;
float64 for the rows marked so). Then the per-step cost of fo-bmaml-jvp and imaml against
fomaml, eager and compiled. Prints JSON.

TorchInductor keeps what it generated in a cache directory; by default this script uses a
fresh one, so compile times are those of a first run on a new machine (--warm: the
default cache, as a second run sees it).

    python benchmarks/compiled.py [--repeats 15] [--warm] [--quick]
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


def measure(name, form, method, options, solver, dtype, repeats) -> dict:
    import torch

    import bilevel
    from bilevel.tree import relative_error
    from problems.sinusoid import Sinusoid

    generator = torch.Generator().manual_seed(0)
    problem = Sinusoid(form=form, lam=10.0, dtype=getattr(torch, dtype))
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(25, generator)

    def call(compile):
        return bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                     compile=compile, **options)[0]

    eager = call(False)  # warm: the problem's checks and torch's first-call costs
    start = time.perf_counter()
    eager = call(False)
    eager_once = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        fast = call(True)
    compile_s = time.perf_counter() - start - eager_once
    fallbacks = [str(w.message) for w in caught if "bilevel:" in str(w.message)]
    times = {False: [], True: []}
    for _ in range(repeats):
        for mode in (False, True):
            start = time.perf_counter()
            call(mode)
            times[mode].append(time.perf_counter() - start)
    eager_s, compiled_s = statistics.median(times[False]), statistics.median(times[True])
    saved = eager_s - compiled_s
    return {"case": name, "method": method, "solver": solver, "dtype": dtype,
            "eager_s": eager_s, "compiled_s": compiled_s, "speedup": eager_s / compiled_s,
            "compile_s": compile_s,
            "break_even_steps": compile_s / saved if saved > 0 else None,
            "relative_difference": relative_error(fast, eager),
            "eager_fallbacks": fallbacks}


def per_step_ratios(rows) -> dict:
    """fo-bmaml-jvp and imaml over fomaml (all B-MAML form, 10 GD steps), same process."""
    by_case = {row["case"]: row for row in rows}
    base = by_case.get("fomaml (B-MAML form)")
    if base is None:
        return {}
    return {case: {mode: by_case[case][f"{mode}_s"] / base[f"{mode}_s"]
                   for mode in ("eager", "compiled")}
            for case in ("fo-bmaml-jvp", "imaml, 5 CG steps")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warm", action="store_true", help="use TorchInductor's own cache")
    parser.add_argument("--quick", action="store_true", help="the four target rows only")
    args = parser.parse_args(argv)
    if not args.warm:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bilevel-inductor-")
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = [measure(*case, repeats=args.repeats) for case in cases(args.quick)]
    print(json.dumps({"device": "cpu", "threads": 1, "torch": torch.__version__,
                      "load_average_1min": [load_before, os.getloadavg()[0]],
                      "cold_cache": not args.warm, "repeats": args.repeats, "rows": rows,
                      "over_fomaml": per_step_ratios(rows)}, indent=1))


if __name__ == "__main__":
    main()
