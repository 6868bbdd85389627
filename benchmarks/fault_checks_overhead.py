"""What the input and problem checks of `bilevel.hypergradient` cost: time per call with
them (`bilevel.hypergradient`) against without (`unchecked`: what hypergradient did before
them: the type checks of problem, solver, h and tasks, the estimator built by name, then
called on the detached inputs).

Sinusoid (MLP 1-40-40-1, B-MAML form), 25 tasks, GD lr 0.01 10 steps, fomaml, one thread.
The two are interleaved in one process, REPEATS rounds of CALLS calls each, alternating which
goes first; "median_paired_ratio" is the median over rounds of checked / unchecked (robust
to a shared machine's drift), "ratio_of_medians" the ratio of the medians. The new checks
are also timed alone ("checks_alone_s", "checks_share" of an unchecked call). The
one-time check of the problem's code (cached per problem and shapes) is paid in warm-up
and reported apart, as "first_call_s". Prints JSON.
Run: .venv/bin/python benchmarks/fault_checks_overhead.py
Measured 2026-11-26 (2-core shared CPU, torch 2.13 CPU, load ~2): median paired ratio 1.010,
ratio of medians 1.014 (21.9 vs 21.6 ms per call); the checks alone 0.14 ms (0.7%); the
first call's one-time check of the problem 1.1 s. Under heavier load the paired ratio
ranged 0.996-1.039 while the checks alone stayed at 0.5-0.9% of a call.
With h checked against init_hyper() too (once per problem and signature, with the problem's
code): three runs (load ~2.5) gave median paired ratios 1.018, 0.998, 0.968 and the checks
alone 0.7%, 0.3%, 1.0% of a call; the code before it, in the same session, 1.009 and 0.4%.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.estimators import estimators  # noqa: E402
from bilevel.hypergradient import (  # noqa: E402
    _all_finite,
    check_hyper,
    check_problem,
    check_tasks,  # noqa: E402
)
from bilevel.problem_checks import check_problem_code, check_values  # noqa: E402
from bilevel.solvers import as_solver  # noqa: E402
from bilevel.tree import detach  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

N_TASKS, REPEATS, CALLS = 25, 40, 5
SOLVER = bilevel.solvers.GD(lr=0.01, steps=10)


def main():
    torch.set_num_threads(1)
    problem = Sinusoid()
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.sample_tasks(N_TASKS, torch.Generator().manual_seed(1))

    def checked():
        return bilevel.hypergradient(problem, h, tasks, solver=SOLVER, method="fomaml")

    def unchecked():
        check_problem(problem)
        solver = as_solver(SOLVER)
        check_hyper(h)
        check_tasks(tasks)
        estimator = estimators.build("fomaml", {}, argument="hypergradient(method='fomaml')")
        return estimator(problem, detach(h), detach(tasks), solver)

    start = time.perf_counter()
    checked()  # pays the one-time check of the problem's code
    first = time.perf_counter() - start
    for _ in range(3):
        unchecked()
    times = {"checked": [], "unchecked": []}
    for round_ in range(REPEATS):
        order = [("checked", checked), ("unchecked", unchecked)]
        for name, call in order if round_ % 2 else order[::-1]:  # alternate who goes first
            start = time.perf_counter()
            for _ in range(CALLS):
                call()
            times[name].append((time.perf_counter() - start) / CALLS)
    ratios = [a / b for a, b in zip(times["checked"], times["unchecked"], strict=True)]
    with_checks = statistics.median(times["checked"])
    without = statistics.median(times["unchecked"])
    # The new checks alone, timed apart (no estimator): their share of a call, noise-free.
    start = time.perf_counter()
    for _ in range(REPEATS * CALLS):
        grad, info = checked()
    checks_only = time.perf_counter()
    for _ in range(REPEATS * CALLS):
        check_values(h, tasks)
        check_problem_code(problem, h, tasks)
        _all_finite(grad, info)
    checks_s = (time.perf_counter() - checks_only) / (REPEATS * CALLS)
    print(json.dumps({"workload": "sinusoid, 25 tasks, GD lr 0.01 x10, fomaml, 1 thread",
                      "with_checks_s": with_checks, "without_checks_s": without,
                      "ratio_of_medians": with_checks / without,
                      "median_paired_ratio": statistics.median(ratios),
                      "checks_alone_s": checks_s, "checks_share": checks_s / without,
                      "first_call_s": first, "rounds": REPEATS, "calls": CALLS,
                      "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
