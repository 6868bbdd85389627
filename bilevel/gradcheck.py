"""`gradcheck`: every estimator against a reference hypergradient on one problem, with
what each one costs. The measurement is pure; `gradcheck_table` formats it."""

import statistics
import time
from collections.abc import Callable, Iterable

import torch

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.estimators import as_estimator, estimators
from bilevel.hypergradient import hypergradient
from bilevel.problem import BilevelProblem
from bilevel.solvers import InnerSolver
from bilevel.tree import relative_error, tree_leaves, tree_structure

COLUMNS = (  # (row key, header, format)
    ("method", "method", "{}"),
    ("rel_error", "rel. error", "{:.2e}"),
    ("inner_grad_evals", "inner grads", "{}"),
    ("hvps", "HVPs", "{}"),
    ("inner_grad_norm", "max |grad g|", "{:.1e}"),
    ("time_s", "time [ms]", "{:.1f}"),
    ("peak_memory_mib", "peak mem [MiB]", "{:.1f}"),
)


def gradcheck(problem: BilevelProblem, h: dict, tasks, *, solver: InnerSolver | str | dict,
              methods: list[str] | None = None, reference: str | dict = "exact",
              options: dict[str, dict] | None = None, repeats: int = 3,
              progress: Callable[[list[str]], Iterable[str]] | None = None) -> list[dict]:
    """Run each estimator on (problem, h, tasks, solver) and compare it with a reference.

    methods: registered estimator names (default: every one that applies to the problem,
        `bilevel list`: one that refuses it with an InvalidInputError, as fomaml refuses an
        h without 'theta', gets the row {"method": name, "skipped": why}; a method named
        here that does not apply raises that error). A single-loop method (soba, amigo, bome,
        f2sa) is measured as its first call: one iteration from a fresh state after the
        solve, not the direction it converges to over calls (docs/theory.md).
    reference: the name of an estimator whose result is the reference ("exact": implicit
        differentiation at the solver's solution, the hypergradient when the solves have
        converged), or a gradient dict shaped like h (e.g. `problem.meta_gradient(h, tasks)`,
        where the problem has a closed form).
    options: {method: {option: value}}, e.g. {"fo-bmaml": {"nu": 1e-6}}.
    repeats: timed runs per estimator, after one untimed run that gives the result; the
        median wall time is reported.
    progress: wraps the list of methods in the iterable the loop runs over (a progress
        bar, `tqdm`), or None.

    Returns one row (dict) per method:
        rel_error         ||grad - reference|| / ||reference|| over every leaf of h
        inner_grad_evals, grad_evals, hvps, mixed_products
                          the estimator's cost, all tasks together (`bilevel.info.Cost`)
        inner_grad_norm   the largest final inner gradient norm over the tasks
        time_s            median wall time of one call (perf_counter)
        peak_memory_mib   peak CUDA memory above what was allocated before the call, or None
                          on a CPU (not cheaply measurable there)
    """
    every = methods is None
    methods = estimators.names() if methods is None else list(methods)
    for name in methods:
        estimators.get(name)
    options = dict(options or {})
    reference_name = reference if isinstance(reference, str) else None
    unused = sorted(set(options) - set(methods) - {reference_name})
    if unused:
        raise InvalidInputError(f"options: given for {', '.join(unused)}, which is not among the "
                           f"methods checked ({', '.join(methods)})")
    repeats = checks.integer("repeats", repeats, minimum=1)
    if isinstance(reference, str):
        reference, _ = hypergradient(problem, h, tasks, solver=solver, method=reference,
                                     **options.get(reference, {}))
    elif reference is None:
        raise InvalidInputError("reference must be an estimator's name or a gradient shaped "
                                "like h, got None (a problem's meta_gradient gives None when "
                                "it has no closed form)")
    elif tree_structure(reference) != tree_structure(h):
        raise InvalidInputError(f"reference must be shaped like h, got {tree_structure(reference)} "
                           f"for h {tree_structure(h)}")
    rows = []
    for name in methods if progress is None else progress(methods):
        try:
            rows.append(measure(problem, h, tasks, solver, name, options.get(name, {}),
                                reference, repeats))
        except InvalidInputError as error:
            if not every:
                raise
            rows.append({"method": name, "skipped": str(error)})
    return rows


def measure(problem, h, tasks, solver, method, options, reference, repeats) -> dict:
    # An untimed first call gives the result and pays torch's one-time costs (it builds
    # forward-AD decompositions, for one), which would otherwise land on one method's time.
    estimator = as_estimator(method, options)  # built once: the timed calls reuse it
    grad, info = hypergradient(problem, h, tasks, solver=solver, method=estimator)
    device = tree_leaves(h)[0].device
    on_cuda = device.type == "cuda"
    times, peak = [], None
    for _ in range(repeats):
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        hypergradient(problem, h, tasks, solver=solver, method=estimator)
        if on_cuda:
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        times.append(time.perf_counter() - start)
    return {
        "method": method,
        "options": options,
        "rel_error": relative_error(grad, reference),
        **info.cost.as_dict(),
        "inner_grad_norm": info["inner_grad_norm"].max().item(),
        "time_s": statistics.median(times),
        "peak_memory_mib": peak,
    }


def gradcheck_table(rows: list[dict]) -> str:
    """The rows of `gradcheck` as a plain-text table, one line per method measured, then a
    line per method skipped saying why."""
    skipped = [f"skipped {row['method']}: {row['skipped']}" for row in rows if "skipped" in row]
    rows = [row for row in rows if "skipped" not in row]

    def cell(row, key, spec):
        value = row.get(key)
        if value is None:
            return "-"
        return spec.format(value * 1e3 if key == "time_s" else value)

    table = [[header for _, header, _ in COLUMNS]]
    table += [[cell(row, key, spec) for key, _, spec in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                       for i, (text, width) in enumerate(zip(line, widths, strict=True)))
             for line in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + skipped)
