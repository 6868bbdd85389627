"""What the input and problem checks of `bilevel.hypergradient` cost: time per call with
them (`bilevel.hypergradient`) against without (`unchecked`: what hypergradient did before
them: the type checks of problem, solver, h and tasks, the estimator built by name, then
called on the detached inputs).

Sinusoid (MLP 1-40-40-1, B-MAML form), 25 tasks, GD lr 0.01 10 steps, fomaml, one thread.
The two are interleaved in one process, REPEATS rounds of CALLS calls each; the ratio is
between the medians of the per-round times per call. The one-time check of the problem's
code (cached per problem and shapes) is paid in warm-up and reported apart, as
"first_call_s" against "steady_call_s". Prints JSON.
Run: .venv/bin/python benchmarks/fault_checks_overhead.py
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
from bilevel.hypergradient import check_hyper, check_problem, check_tasks  # noqa: E402
from bilevel.solvers import as_solver  # noqa: E402
from bilevel.tree import detach  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

N_TASKS, REPEATS, CALLS = 25, 15, 10
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
    for _ in range(REPEATS):
        for name, call in (("checked", checked), ("unchecked", unchecked)):
            start = time.perf_counter()
            for _ in range(CALLS):
                call()
            times[name].append((time.perf_counter() - start) / CALLS)
    with_checks = statistics.median(times["checked"])
    without = statistics.median(times["unchecked"])
    print(json.dumps({"workload": "sinusoid, 25 tasks, GD lr 0.01 x10, fomaml, 1 thread",
                      "with_checks_s": with_checks, "without_checks_s": without,
                      "ratio": with_checks / without, "first_call_s": first,
                      "steady_call_s": with_checks, "rounds": REPEATS, "calls": CALLS,
                      "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
