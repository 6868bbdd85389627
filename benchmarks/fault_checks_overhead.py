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
    > docs/results/benchmarks/fault_checks_overhead.cpu.json
Measured 2026-11-26 (2-core shared CPU, torch 2.13 CPU, load ~2): median paired ratio 1.010,
ratio of medians 1.014 (21.9 vs 21.6 ms per call); the checks alone 0.14 ms (0.7%); the
first call's one-time check of the problem 1.1 s. Under heavier load the paired ratio
ranged 0.996-1.039 while the checks alone stayed at 0.5-0.9% of a call.
With h checked against init_hyper() too (once per problem and signature, with the problem's
code): three runs (load ~2.5) gave median paired ratios 1.018, 0.998, 0.968 and the checks
alone 0.7%, 0.3%, 1.0% of a call; the code before it, in the same session, 1.009 and 0.4%.

"run" (issue 22): every integrity check of a run together, on `meta_train` itself: the
checkpoint's checksum (at each checkpoint), the problem's fingerprints
(init_hyper, first batch of tasks), the run directory's lock, the checks of h and the tasks on
the per-step path of `hypergradient` (check_hyper, check_values, check_problem_code,
_all_finite), strict JSON in every record, and hyper.json (with the checkpoint's read-back
that writes it). "without" patches each to a no-op, in the same process; both leave out the
plots (not a check; the same in both). RUN_ROUNDS rounds of each run of RUNS in a fresh
directory, alternating which goes first; per step: the run's time / its steps, so one-time
costs are spread over the steps; "median_paired_ratio" as above. The quadratic of
training_overhead.py's small case (dim 4, 4 tasks, GD x10: the smallest step, where fixed
costs weigh most), 100 steps checkpointed at the end (the default) and 20 steps checkpointed
every step (the most a run pays for the checksum), and the sinusoid above (fomaml, 25
tasks), 50 steps. The checks are also timed
alone ("checks_alone", `checks_alone`): "checks_alone_share_of_step" is those paid every
step over the step without checks, "once_per_run_in_steps" those paid once per run, in steps.
Measured 2026-12-03 (2-core shared CPU, load 3.4-6.1; docs/results/benchmarks.md): timed
alone, the checks paid every step are 0.22% of a step (quadratic, checkpoint at the end),
1.37% (quadratic, checkpoint every step: the checksum, 0.65 ms, most of it) and 0.12%
(sinusoid); those paid once per run 0.93, 0.23 and 0.23 steps (hyper.json with its fsync and
the final checkpoint's checksum, which hashes the history: 6.7 ms after 100 steps). The whole
runs, interleaved: median paired ratios 1.052, 1.020, 0.969, with quartiles some 15% apart
(fsync and the shared machine): consistent with the above, too noisy here to resolve 3%.
Before check_hyper built its message only on failure, it
formatted repr(h) at every call: 1.27 ms against 0.09 ms without it (quadratic h, load ~8).
"""

import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel import strict_json  # noqa: E402
from bilevel.estimators import estimators  # noqa: E402
from bilevel.hypergradient import (  # noqa: E402
    _all_finite,
    check_hyper,
    check_problem,
    check_tasks,  # noqa: E402
)
from bilevel.problem_checks import check_problem_code, check_values  # noqa: E402
from bilevel.solvers import as_solver  # noqa: E402
from bilevel.training import checkpoint, rundir, trainer  # noqa: E402
from bilevel.tree import detach  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

# The module, which bilevel's own `hypergradient` (the function) hides.
hypergradient_module = importlib.import_module("bilevel.hypergradient")
N_TASKS, REPEATS, CALLS = 25, 40, 5
SOLVER = bilevel.solvers.GD(lr=0.01, steps=10)
RUN_ROUNDS = 15
QUADRATIC = dict(problem=lambda: Quadratic(dim=4, kappa=10.0, n_tasks=4),
                 solver=bilevel.solvers.GD(lr=0.05, steps=10), tasks_per_step=4,
                 method="fo-bmaml")
# name: (the problem and run, its steps, checkpoint_every: None = at the end only)
RUNS = {"quadratic": (QUADRATIC, 100, None),
        "quadratic-every-step": (QUADRATIC, 20, 1),
        "sinusoid": (dict(problem=Sinusoid, solver=SOLVER, tasks_per_step=N_TASKS,
                          method="fomaml"), 50, None)}


@contextlib.contextmanager
def no_integrity_checks():
    """Every integrity check of a run a no-op (see the docstring); the plots are left out by
    the caller, in both variants."""
    passing = {"check_hyper": lambda *a, **k: None, "check_values": lambda *a, **k: None,
               "check_problem_code": lambda *a, **k: None, "_all_finite": lambda *a: True}
    with contextlib.ExitStack() as stack:
        for name, stub in passing.items():
            stack.enter_context(mock.patch.object(hypergradient_module, name, stub))
        stack.enter_context(mock.patch.object(checkpoint, "content_digest", lambda state: ""))
        stack.enter_context(mock.patch.object(trainer, "fingerprint", lambda tree: ""))
        stack.enter_context(mock.patch.object(rundir, "_locked", lambda path: io.StringIO()))
        stack.enter_context(mock.patch.object(strict_json, "dumps", json.dumps))
        # hyper.json and the checkpoint's read-back for it: finish() finds no checkpoint
        stack.enter_context(mock.patch.object(
            rundir, "checkpoint", types.SimpleNamespace(FILENAME=".no-checkpoint")))
        yield


def run_overhead(case: dict, steps: int, checkpoint_every: int | None) -> dict:
    """Seconds per step of a run with its integrity checks and without (interleaved)."""
    problem = case["problem"]()
    options = dict(solver=case["solver"], method=case["method"], steps=steps,
                   tasks_per_step=case["tasks_per_step"], checkpoint_every=checkpoint_every,
                   progress=False)

    def checked(out):
        bilevel.meta_train(problem, out=out, **options)

    def unchecked(out):
        with no_integrity_checks():
            bilevel.meta_train(problem, out=out, **options)

    times = {"checked": [], "unchecked": []}
    with tempfile.TemporaryDirectory() as folder, \
            mock.patch.object(rundir, "plot", lambda directory, history: None):
        for name, call in (("checked", checked), ("unchecked", unchecked)):  # warm-up
            call(Path(folder) / f"warm-{name}")
        for round_ in range(RUN_ROUNDS):
            order = [("checked", checked), ("unchecked", unchecked)]
            for name, call in order if round_ % 2 else order[::-1]:
                start = time.perf_counter()
                call(Path(folder) / f"{name}-{round_}")
                times[name].append((time.perf_counter() - start) / steps)
        alone = checks_alone(problem, case, Path(folder) / "checked-0")
    if checkpoint_every is None:  # one checkpoint, at the end: its checksum once per run
        alone["once_per_run_s"]["checksum"] = alone["per_step_s"].pop("checksum")
    ratios = [a / b for a, b in zip(times["checked"], times["unchecked"], strict=True)]
    with_checks, without = (statistics.median(times[k]) for k in ("checked", "unchecked"))
    return {"steps": steps, "checkpoint_every": checkpoint_every,
            "with_checks_s_per_step": with_checks, "without_checks_s_per_step": without,
            "ratio_of_medians": with_checks / without,
            "median_paired_ratio": statistics.median(ratios),
            "paired_ratios_quartiles": statistics.quantiles(ratios, n=4),
            "checks_alone": alone,
            "checks_alone_share_of_step": sum(alone["per_step_s"].values()) / without,
            "once_per_run_in_steps": sum(alone["once_per_run_s"].values()) / without}


def checks_alone(problem, case: dict, run: Path) -> dict:
    """The same checks timed alone (no run around them: free of the noise of fsync and of a
    shared machine), on the state and records of a finished run, median seconds of each:
    per step the checksum of the final (largest) state, strict JSON's pass over a record
    and the per-step checks of `hypergradient`; once per run the two fingerprints, the lock
    and hyper.json with its read-back of the checkpoint."""
    state = checkpoint.load(run)
    record = state["history"][-1]
    h = problem.init_hyper(torch.Generator().manual_seed(0))
    tasks = problem.sample_tasks(case["tasks_per_step"], torch.Generator().manual_seed(1))
    grad, info = bilevel.hypergradient(problem, h, tasks, solver=case["solver"],
                                       method=case["method"])
    per_step = {"checksum": lambda: checkpoint.content_digest(state),
                "strict_json": lambda: strict_json.strict(record),
                "check_hyper": lambda: hypergradient_module.check_hyper(h),
                "check_values": lambda: hypergradient_module.check_values(h, tasks,
                                                                          finite=False),
                "check_problem_code": lambda: hypergradient_module.check_problem_code(
                    problem, h, tasks),
                "all_finite": lambda: hypergradient_module._all_finite(grad, info)}
    once = {"fingerprints": lambda: (trainer.fingerprint(h), trainer.fingerprint(tasks)),
            "lock": lambda: rundir._locked(run).close(),
            "hyper_json": lambda: rundir.write_hyper(run, checkpoint.load(run)["h"],
                                                     state["step"])}

    def medians(calls: dict) -> dict:
        return {name: statistics.median(_seconds(call) for _ in range(REPEATS))
                for name, call in calls.items()}

    return {"per_step_s": medians(per_step), "once_per_run_s": medians(once)}


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def hypergradient_overhead() -> dict:
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
    return {"workload": "sinusoid, 25 tasks, GD lr 0.01 x10, fomaml, 1 thread",
            "with_checks_s": with_checks, "without_checks_s": without,
            "ratio_of_medians": with_checks / without,
            "median_paired_ratio": statistics.median(ratios),
            "checks_alone_s": checks_s, "checks_share": checks_s / without,
            "first_call_s": first, "rounds": REPEATS, "calls": CALLS}


def main():
    torch.set_num_threads(1)
    loads = [os.getloadavg()[0]]
    run = {name: run_overhead(*setting) for name, setting in RUNS.items()}
    hypergradient = hypergradient_overhead()
    loads.append(os.getloadavg()[0])
    print(json.dumps({"hypergradient": hypergradient,
                      "run": run | {"rounds": RUN_ROUNDS},
                      "threads": 1, "torch": torch.__version__, "load_average": loads},
                     indent=1))


if __name__ == "__main__":
    main()
