"""Time and peak memory of every estimator against the number of inner steps.

Each (problem, estimator, steps) is measured in a fresh process, one CPU thread:
median wall time of a few hypergradient calls after one warm-up call (2 inner steps),
and peak memory: CPU, the process's peak resident set (`ru_maxrss`), in all and as
added by the timed calls; CUDA, `torch.cuda.max_memory_allocated`, in all and above
what was allocated before. Then, in this
process with the calls interleaved, the time ratio fo-bmaml / fomaml beside the ratio
of inner gradient evaluations. Prints JSON: every measurement, the memory ratio
1000 / 10 steps of each estimator, and those time ratios.

    python benchmarks/estimators.py [--device cpu|cuda] [--steps 10,100,1000]
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
from problems.quadratic import Quadratic
from problems.sinusoid import Sinusoid

METHODS = ["fo-bmaml", "fomaml", "reptile", "imaml", "fo-bmaml-jvp", "maml", "exact"]
NOT_ON = {"sinusoid": {"exact"}}  # a dense 1761 x 1761 Hessian per task is not the point


def setting(problem_name, steps, device):
    """(problem, h, tasks, solver) of each benchmark problem."""
    generator = torch.Generator().manual_seed(0)
    if problem_name == "quadratic":
        problem = Quadratic(dim=100, kappa=100.0, lam=1.0, n_tasks=32, device=device)
        solver = bilevel.solvers.GD(lr=1 / 101, steps=steps)
    else:  # the B-MAML sinusoid: MLP 1-40-40-1, 25 tasks of 10 + 10 points, float32
        problem = Sinusoid(form="bmaml", lam=10.0, device=device)
        solver = bilevel.solvers.GD(lr=0.01, steps=steps)
    tasks = problem.sample_tasks(32 if problem_name == "quadratic" else 25, generator)
    return problem, problem.init_hyper(generator), tasks, solver


def peak_mib(device) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure_one(problem_name, method, steps, device, repeats) -> dict:
    torch.set_num_threads(1)
    problem, h, tasks, solver = setting(problem_name, steps, device)
    warm_solver = setting(problem_name, 2, device)[3]
    bilevel.hypergradient(problem, h, tasks, solver=warm_solver, method=method)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else peak_mib(device)
    setup = {"memory_before_calls_mib": before}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, info = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"problem": problem_name, "method": method, "steps": steps, "device": device,
            "time_s": statistics.median(times), "repeats": repeats,
            "peak_memory_mib": peak_mib(device), "peak_memory_added_mib": peak_mib(device) - before,
            **setup,
            "inner_grad_evals": info["inner_grad_evals"], "hvps": info.get("hvps")}


def run_fresh(problem_name, method, steps, device, repeats) -> dict:
    command = [sys.executable, __file__, "--one", problem_name, method, str(steps),
               "--device", device, "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def summarise(rows, steps) -> dict:
    def row(problem_name, method, k):
        return next(r for r in rows if (r["problem"], r["method"], r["steps"]) ==
                    (problem_name, method, k))

    summary = {f"peak_memory_ratio_{max(steps)}_over_{min(steps)}_steps": {},
               f"peak_memory_added_mib_at_{min(steps)}_and_{max(steps)}_steps": {}}
    for problem_name in ("quadratic", "sinusoid"):
        methods = [m for m in METHODS if m not in NOT_ON.get(problem_name, ())]
        few, many = ({m: row(problem_name, m, k) for m in methods} for k in (min(steps),
                                                                                 max(steps)))
        summary[f"peak_memory_ratio_{max(steps)}_over_{min(steps)}_steps"][problem_name] = {
            m: many[m]["peak_memory_mib"] / few[m]["peak_memory_mib"] for m in methods}
        summary[f"peak_memory_added_mib_at_{min(steps)}_and_{max(steps)}_steps"][problem_name] = {
            m: [few[m]["peak_memory_added_mib"], many[m]["peak_memory_added_mib"]]
            for m in methods}
    return summary


def time_ratios(steps, device, repeats) -> dict:
    """fo-bmaml (symmetric and forward) / fomaml: median time, interleaved in one process."""
    torch.set_num_threads(1)
    ratios = {}
    for problem_name in ("quadratic", "sinusoid"):
        ratios[problem_name] = {}
        for k in steps:
            problem, h, tasks, solver = setting(problem_name, k, device)
            calls = {name: (lambda method=method, options=options, problem=problem, h=h,
                            tasks=tasks, solver=solver: bilevel.hypergradient(
                problem, h, tasks, solver=solver, method=method, **options))
                for name, method, options in (("fomaml", "fomaml", {}),
                                              ("symmetric", "fo-bmaml", {}),
                                              ("forward", "fo-bmaml", {"scheme": "forward"}))}
            times = {name: [] for name in calls}
            evals = {name: call()[1]["inner_grad_evals"] for name, call in calls.items()}
            for _ in range(repeats):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - start)
            base = statistics.median(times["fomaml"])
            ratios[problem_name][k] = {
                f"fo-bmaml {scheme}": {"time": statistics.median(times[scheme]) / base,
                                       "grad_evals": evals[scheme] / evals["fomaml"]}
                for scheme in ("symmetric", "forward")}
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("PROBLEM", "METHOD", "STEPS"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.one:
        problem_name, method, steps = args.one
        print(json.dumps(measure_one(problem_name, method, int(steps), args.device,
                                     args.repeats)))
        return
    steps = [int(k) for k in args.steps.split(",")]
    rows = [run_fresh(problem_name, method, k, args.device, args.repeats)
            for problem_name in ("quadratic", "sinusoid") for method in METHODS
            if method not in NOT_ON.get(problem_name, ()) for k in steps]
    summary = summarise(rows, steps) | {
        "fobmaml_over_fomaml": time_ratios(steps, args.device, max(args.repeats, 5))}
    print(json.dumps({"device": args.device, "threads": 1, "rows": rows, "summary": summary},
                     indent=1))


if __name__ == "__main__":
    main()
