"""Few-shot MNIST-1D: meta-test accuracy of six estimators at equal outer steps and equal
wall time, and the memory benchmark's table (docs/results/mnist1d.md).

5-way 1-shot tasks of MNIST-1D signals (length 40, generated offline by the mnist1d
package) and one small 1-D convolutional network for every method, the same inner steps
for all. The MAML form (K plain gradient steps from theta, no regulariser): second-order
`maml`, `fomaml`, `reptile`. The B-MAML form (K gradient steps on the proximal problem
CE(support) + lam/2 ||phi - theta||^2, eq. 6, lam learned): `imaml`, `fo-bmaml`
(symmetric differences, eq. 16) and `fo-bmaml-jvp`. Each method is judged with its own
inner problem, solved as in training, on the same meta-test tasks drawn from the held-out
signals (vmapped, one batch).

Equal wall time: each method's seconds per outer step are measured interleaved in this
process (one thread, `meta_train` runs of a few steps, method after method, in rounds);
the budget is the slowest method's time for `--steps` steps (or `--budget`), and each
method gets the steps that fit it. One run per method gives both budgets: h is kept at
`--steps` and at its own equal-time count.
Run: OMP_NUM_THREADS=1 nice .venv/bin/python examples/mnist1d_results.py [--quick]
(about half an hour on one thread); --render writes the page and plot again from
docs/results/mnist1d.json, with the memory section as the benchmark's JSON is then.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.blocks import ComposedProblem, models, sources  # noqa: E402
from bilevel.tree import tree_map  # noqa: E402
from examples.common import REPO, example_parser, save  # noqa: E402
from examples.common import parse as parse_args  # noqa: E402

WAYS, SHOTS, TRAIN_QUERIES, LAM, INNER_LR = 5, 1, 5, 3.0, 0.1
# (label, estimator, form): the MAML form has no regulariser, the B-MAML form the proximal one
METHODS = (
    ("MAML", "maml", "maml"),
    ("FO-MAML", "fomaml", "maml"),
    ("Reptile", "reptile", "maml"),
    ("iMAML", {"name": "imaml", "cg_steps": 10}, "bmaml"),
    ("FO-B-MAML", {"name": "fo-bmaml", "scheme": "symmetric", "nu": "eps"}, "bmaml"),
    ("FO-B-MAML-JVP", "fo-bmaml-jvp", "bmaml"),
)
FORMS = {"maml": {"regularizer": "none", "learn_lam": "fixed"},
         "bmaml": {"regularizer": "proximal", "lam": LAM, "learn_lam": "scalar"}}
TIMING_STEPS = 4  # per timed run; the first step (setup) is not counted
MEMORY = REPO / "docs" / "results" / "benchmarks" / "mnist1d_memory.cpu.json"
MEMORY_PLOT = REPO / "docs" / "results" / "mnist1d_memory.png"


def build(args, form: str, queries: int) -> ComposedProblem:
    split = {"kind": "few-shot", "ways": WAYS, "shots": SHOTS, "queries": queries,
             "test_tasks": args.test_tasks}
    cnn = models.build("cnn", {"channels": args.channels, "kernel": args.kernel,
                               "activation": "tanh", "pool": "avg"})
    source = sources.build("mnist1d", {"samples": args.samples, "split": split})
    return ComposedProblem(source, cnn, loss="cross-entropy", seed=args.seed,
                           device=args.torch_device, **FORMS[form])


def inner_solver(args) -> bilevel.solvers.GD:
    """Every method's inner solve, in meta-training and at meta-test."""
    return bilevel.solvers.GD(lr=INNER_LR, steps=args.inner_steps)


def spec(args, method, steps: int) -> bilevel.RunSpec:
    return bilevel.RunSpec(solver=inner_solver(args),
                           method=method, outer={"name": "adam", "lr": args.lr}, steps=steps,
                           tasks_per_step=args.tasks_per_step, seed=args.seed, progress=False)


def step_seconds(history: list[dict]) -> list[float]:
    """Seconds of each outer step after the first (whose time includes the run's setup)."""
    return [b["time"] - a["time"] for a, b in zip(history[:-1], history[1:], strict=True)]


def measure_step_times(args, problems) -> dict[str, float]:
    """Median seconds per outer step of each method, its runs interleaved with the others'
    in `args.timing_rounds` rounds."""
    times: dict[str, list[float]] = {label: [] for label, _, _ in METHODS}
    for _ in range(args.timing_rounds):
        for label, method, form in METHODS:
            result = bilevel.meta_train(problems[form], spec(args, method, TIMING_STEPS))
            times[label] += step_seconds(result.history)
    return {label: statistics.median(values) for label, values in times.items()}


class Snapshots(bilevel.Callback):
    """h after each outer step in `steps`."""

    def __init__(self, steps):
        self.steps, self.h = set(steps), {}

    def on_step(self, record, h):
        if record["step"] in self.steps:
            self.h[record["step"]] = tree_map(torch.clone, h)


def meta_test(problem, h, tasks, solver) -> dict:
    """Query accuracy after the inner solve on every test task (one vmapped batch): mean,
    95% interval half-width (1.96 standard errors over tasks), and the query loss."""
    metrics = bilevel.at_inner_solutions(problem.eval_metrics, problem, h, tasks, solver)
    accuracy = metrics["accuracy"].double()
    return {"accuracy": accuracy.mean().item(),
            "ci95": 1.96 * (accuracy.std() / len(accuracy) ** 0.5).item(),
            "query_loss": metrics["val_loss"].mean().item()}


def eval_points(n: int, equal_time: int) -> list[int]:
    points = {max(1, round(f * n)) for f in (0.25, 0.5, 1)}
    return sorted(points | {max(1, round(f * equal_time)) for f in (0.5, 1)})


def run_method(args, label, method, form, problems, tests, steps_equal_time) -> dict:
    points = eval_points(args.steps, steps_equal_time)
    snapshots = Snapshots(points)
    result = bilevel.meta_train(problems[form], spec(args, method, points[-1]),
                                callbacks=[snapshots])
    test_problem, tasks = tests[form]
    curve = [{"step": step, **meta_test(test_problem, snapshots.h[step], tasks,
                                        inner_solver(args))}
             for step in points]
    at = {row["step"]: row for row in curve}
    out = {"label": label, "method": method, "form": form, "curve": curve,
           "equal_steps": at[args.steps], "equal_time": at[steps_equal_time],
           "steps_equal_time": steps_equal_time,
           "train_seconds": result.history[-1]["time"],
           "step_seconds_in_run": statistics.median(step_seconds(result.history)),
           "inner_grad_ratio": result.history[-1].get("inner_grad_ratio_mean")}
    if form == "bmaml":
        out["lam"] = problems[form].lam(result.h).item()
    print(f"{label}: {args.steps} steps {out['equal_steps']['accuracy']:.3f}, "
          f"{steps_equal_time} steps {out['equal_time']['accuracy']:.3f} "
          f"({out['train_seconds']:.0f} s)")
    return out


# The page ---------------------------------------------------------------------------------

def accuracy_cell(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f} +- {100 * row['ci95']:.1f}"


def goal_lines(results: list[dict], budget: str) -> list[str]:
    """The issue's goal at one budget: FO-B-MAML within 1 point of MAML and above FO-MAML
    and Reptile; where it fails, by how much."""
    acc = {r["label"]: 100 * r[budget]["accuracy"] for r in results}
    gap = acc["FO-B-MAML"] - acc["MAML"]
    lines = [f"- FO-B-MAML - MAML: {gap:+.1f} points "
             f"({'met' if gap >= -1 else f'not met: {-1 - gap:.1f} points short of -1'})"]
    for other in ("FO-MAML", "Reptile"):
        margin = acc["FO-B-MAML"] - acc[other]
        lines.append(f"- FO-B-MAML - {other}: {margin:+.1f} points "
                     f"({'met' if margin > 0 else 'not met'})")
    return lines


def reasons(args, by_label: dict, step_times: dict) -> list[str]:
    """Where FO-B-MAML's distance to MAML comes from, from what was measured: the estimator
    (FO-B-MAML against FO-B-MAML-JVP, two estimates of the same derivative, and iMAML's
    curve), the inner problem (both forms before meta-training, the inner solves'
    convergence, lam) and the time per step."""
    fob, jvp, imaml, maml = (by_label[k] for k in ("FO-B-MAML", "FO-B-MAML-JVP", "iMAML",
                                                      "MAML"))
    a, b = fob["equal_steps"], jvp["equal_steps"]
    gap = 100 * (a["accuracy"] - b["accuracy"])
    agree = (f"agree (within the 95% interval, {gap:+.1f} points)"
             if abs(gap) <= 100 * max(a["ci95"], b["ci95"]) else f"differ by {gap:+.1f} points")
    best = max(imaml["curve"], key=lambda row: row["accuracy"])
    last = imaml["curve"][-1]
    untrained = {form: 100 * row["accuracy"] for form, row in args.untrained.items()}
    rising = [label for label, r in by_label.items()
              if r["curve"][-1]["accuracy"] > r["curve"][-2]["accuracy"]]
    return [
        "Where the distance to MAML comes from, measured here:", "",
        f"- Not the finite difference: at {args.steps} steps FO-B-MAML "
        f"({100 * a['accuracy']:.1f}) and FO-B-MAML-JVP ({100 * b['accuracy']:.1f}), the "
        "symmetric difference and the forward-mode derivative of the same lock-stepped "
        f"solves, {agree}. iMAML, the implicit gradient of the same problem, reaches "
        f"{100 * best['accuracy']:.1f} at step {best['step']} and ends at "
        f"{100 * last['accuracy']:.1f} at step {last['step']}: its formula holds at a "
        f"solution, which {args.inner_steps} inner steps do not reach (inner gradient "
        f"{imaml['inner_grad_ratio']:.2g} of its start at the last step), so it is no "
        "reference for the B-MAML form here.",
        f"- Likely the inner problem: the proximal term (lam learned from {LAM:g} to "
        f"{fob['lam']:.3g}) keeps phi near theta through the {args.inner_steps} inner steps, "
        "where MAML's steps adapt freely: before meta-training, the same network adapted "
        f"by the B-MAML form reaches {untrained['bmaml']:.1f} against {untrained['maml']:.1f} "
        f"by the MAML form. The B-MAML solves end at {fob['inner_grad_ratio']:.2g} of their "
        "starting gradient norm: FO-B-MAML differentiates the K-step iterate of a problem "
        "that it does not solve, while MAML differentiates exactly the K-step adaptation "
        "it is tested with.",
        f"- The time: FO-B-MAML's outer step costs "
        f"{step_times['FO-B-MAML'] / step_times['MAML']:.1f}x MAML's and "
        f"{step_times['FO-B-MAML'] / step_times['FO-MAML']:.1f}x FO-MAML's on this CPU (two "
        "perturbed solves, each reading the queries at every inner step, where MAML's "
        "steps read the support alone), so at equal time it gets "
        f"{fob['steps_equal_time']} steps against MAML's {maml['steps_equal_time']}.",
        f"- Reptile (its update (theta - phi_K) / (K lr) from the support's {WAYS * SHOTS} "
        "signals alone, no query) ends at "
        f"{100 * by_label['Reptile']['curve'][-1]['accuracy']:.1f}, against "
        f"{untrained['maml']:.1f} for the untrained network in the same form.",
        "- Not varied in this run: lam's start, the inner steps, the network's width and "
        "the run's length (still rising at their last evaluation: "
        f"{', '.join(rising) or 'none'}).",
    ]


def memory_section() -> list[str]:
    """Tables of the memory benchmark's JSON (benchmarks/mnist1d_memory.py), whatever rows
    it holds."""
    lines = ["## Memory per meta-step", ""]
    if not MEMORY.exists():
        return lines + [f"No measurements yet (`{MEMORY.relative_to(REPO)}` is missing).", ""]
    data = json.loads(MEMORY.read_text())
    rows = data["rows"]
    setting = ", ".join(f"{k} {v}" for k, v in data.get("setting", {}).items())
    lines += [f"From `docs/results/benchmarks/{MEMORY.name}`, made by `{data['command']}` "
              f"(device {data.get('device', '?')}, {data.get('threads', '?')} thread(s); "
              f"setting: {setting}). Each cell: peak resident memory added by the "
              "measured meta-steps over the process's peak before them, in MiB (in "
              "parentheses the process's whole peak), each in a fresh process.", ""]
    if MEMORY_PLOT.exists():
        lines += [f"![Peak memory]({MEMORY_PLOT.name})", ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = {(r["method"], r["steps"], r["channels"]): r for r in rows}

    def sweep(fixed: str, varied: str) -> tuple:
        """The value of `fixed` at which `varied` takes the most values, and those values."""
        values = {r[fixed] for r in rows}
        best = max(values, key=lambda v: (len({r[varied] for r in rows if r[fixed] == v}), v))
        return best, sorted({r[varied] for r in rows if r[fixed] == best})

    for fixed, varied in (("channels", "steps"), ("steps", "channels")):
        at, values = sweep(fixed, varied)
        lines += [f"Against the inner steps ({at} channels):" if varied == "steps" else
                  f"Against the channels ({at} inner steps):", "",
                  f"| method | {' | '.join(f'{varied} {v}' for v in values)} |",
                  "|---|" + "---|" * len(values)]
        for method in methods:
            row = []
            for v in values:
                key = (method, v, at) if varied == "steps" else (method, at, v)
                r = cells.get(key)
                row.append("-" if r is None else f"{r['peak_memory_added_mib']:.1f} "
                           f"({r['peak_memory_mib']:.0f})")
            lines.append(f"| {method} | {' | '.join(row)} |")
        lines.append("")
    if "fit_16gib" in data:
        lines += ["What fits in 16 GiB of peak memory, per method, from a least-squares fit of the "
                  "measured rows, M(K, C) = a0 + a1 C + a2 C^2 + K (b1 C + b2 C^2) (K inner "
                  "steps, C channels; the benchmark's docstring): the widest network at 100 "
                  "inner steps (searched to 1024 channels) and the most inner steps at 256 "
                  "channels (searched to 100,000; \">=\" marks the search's end). A first-order "
                  "method's fitted per-step term is run-to-run noise, so its step count says only "
                  "that no growth was measured.", "",
                  "| method | channels at 100 steps | its peak (MiB) | inner steps at 256 "
                  "channels | its peak (MiB) |", "|---|---|---|---|---|"]
        by_steps = {f["method"]: f for f in data.get("fit_16gib_steps", [])}
        for f in data["fit_16gib"]:
            g = by_steps.get(f["method"])
            widest = f"{'>= ' if f['channels'] >= 1024 else ''}{f['channels']}"
            most = "-" if g is None else f"{'>= ' if g['steps'] >= 100_000 else ''}{g['steps']}"
            peak = "-" if g is None else f"{g['peak_memory_mib']:.0f}"
            lines.append(f"| {f['method']} | {widest} | {f['peak_memory_mib']:.0f} | {most} | "
                         f"{peak} |")
        lines.append("")
        for check in data.get("fit_check", []):
            if check["measured_peak_memory_mib"] is not None:
                lines.append(f"Check outside the fitted rows: {check['method']} at "
                             f"{check['steps']} steps and {check['channels']} channels, predicted "
                             f"{check['predicted_peak_memory_mib']:.0f} MiB, measured "
                             f"{check['measured_peak_memory_mib']:.0f} MiB.")
        lines.append("")
    return lines


def markdown(args, results, step_times, budget, rendered: bool = False) -> str:
    """The page; `rendered`: from the saved JSON by --render (the memory section new)."""
    channels = ", ".join(map(str, args.channels))
    by_label = {r["label"]: r for r in results}
    budget_source = (f"the slowest method's time for {args.steps} steps" if args.budget is None
                     else "given by --budget")
    lines = [
        "# Few-shot MNIST-1D: six estimators at equal steps and equal time",
        "",
        f"Generated by `{command(args)}`; do not edit by hand."
        + (" Rendered again from docs/results/mnist1d.json by `python "
           "examples/mnist1d_results.py --render` (the memory section reads the benchmark's "
           "JSON as it is now)." if rendered else ""),
        "",
        f"Setting: MNIST-1D (the mnist1d package's generator, {args.samples} signals, "
        f"{args.samples // 5} of them held out), {WAYS}-way {SHOTS}-shot tasks with "
        f"{TRAIN_QUERIES} queries per class in meta-training; the meta-test tasks "
        f"({args.test_tasks}, {args.test_queries} queries per class) are drawn once from the "
        f"held-out signals. Network: cnn, channels [{channels}], "
        f"kernel {args.kernel}, tanh, average pooling by 2, linear head "
        f"({args.parameters} parameters). Inner solve for "
        f"every method, in training and at test: {args.inner_steps} gradient steps, lr "
        f"{INNER_LR}, from theta. MAML form (MAML, FO-MAML, Reptile): no regulariser. B-MAML "
        f"form (iMAML with 10 CG steps, FO-B-MAML symmetric with nu eps, FO-B-MAML-JVP): the "
        f"proximal term lam/2 ||phi - theta||^2, lam learned from {LAM:g}. Outer: Adam lr "
        f"{args.lr}, {args.tasks_per_step} tasks per step, seed {args.seed}; one CPU thread.",
        "",
        f"Smaller than the paper's network (250 channels): channels [{channels}] keep the "
        "six runs, two budgets each, within about half an hour on one thread of a shared "
        "2-core machine; the queries in meta-training are 5 per class for the same reason (the "
        "B-MAML form's perturbed solves read the queries at every inner step). The memory "
        "section below (benchmarks/mnist1d_memory.py) measures larger networks.",
        "",
        "## Meta-test accuracy (%)",
        "",
        f"Mean query accuracy over {args.test_tasks} meta-test tasks +- the 95% interval "
        "(1.96 standard errors over tasks; tasks share held-out signals, so the interval is "
        "somewhat optimistic). Equal time: the budget is "
        f"{budget:.0f} s ({budget_source}); "
        "each method gets budget / (its seconds per step) steps, from the step times measured "
        f"interleaved ({args.timing_rounds} rounds of {TIMING_STEPS}-step runs, median of the "
        "steps after the first).",
        "",
        f"| method | form | s / step (interleaved) | s / step (in its run) | {args.steps} "
        "steps | equal time: steps | equal time | learned lam |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lam = f"{r['lam']:.3g}" if "lam" in r else "-"
        lines.append(f"| {r['label']} | {r['form']} | {step_times[r['label']]:.3f} | "
                     f"{r['step_seconds_in_run']:.3f} | {accuracy_cell(r['equal_steps'])} | "
                     f"{r['steps_equal_time']} | {accuracy_cell(r['equal_time'])} | {lam} |")
    untrained = ", ".join(f"{form} form {accuracy_cell(row)}"
                          for form, row in args.untrained.items())
    lines += ["", f"Untrained network (the model's initialisation as theta): {untrained}. "
              "Chance: 20.0.", "", "![Meta-test accuracy](mnist1d.png)", "",
              "## The goal: FO-B-MAML within 1 point of MAML, above FO-MAML and Reptile", "",
              f"At {args.steps} outer steps:", ""] + goal_lines(results, "equal_steps") + [
              "", f"At equal wall time ({budget:.0f} s):", ""] + goal_lines(results, "equal_time")
    lines += [""] + reasons(args, by_label, step_times) + [""]
    return "\n".join(lines + memory_section())


def command(args) -> str:
    return " ".join(["OMP_NUM_THREADS=1 nice python examples/mnist1d_results.py", *args.argv])


def plot(args, results, step_times, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for r in results:
        steps = [row["step"] for row in r["curve"]]
        acc = [100 * row["accuracy"] for row in r["curve"]]
        ci = [100 * row["ci95"] for row in r["curve"]]
        seconds = [s * step_times[r["label"]] for s in steps]
        for ax, x in zip(axes, (steps, seconds), strict=True):
            ax.errorbar(x, acc, yerr=ci, marker="o", ms=3, capsize=2, label=r["label"])
    axes[0].axvline(args.steps, color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("outer steps")
    axes[1].set_xlabel("seconds (steps x measured s / step)")
    axes[0].set_ylabel(f"meta-test accuracy (%), {args.test_tasks} tasks, 95% interval")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"MNIST-1D {WAYS}-way {SHOTS}-shot, cnn [{', '.join(map(str, args.channels))}]"
                 f", {args.inner_steps} inner steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    parser = example_parser(__doc__, "mnist1d", "a tiny network, a few steps and tasks")
    parser.add_argument("--steps", type=int, default=250, help="outer steps (equal steps)")
    parser.add_argument("--budget", type=float, help="equal-time budget in seconds "
                        "(default: the slowest method's time for --steps steps)")
    parser.add_argument("--tasks-per-step", type=int, default=16)
    parser.add_argument("--test-tasks", type=int, default=1000)
    parser.add_argument("--test-queries", type=int, default=15,
                        help="queries per class of each meta-test task")
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")],
                        default=[16, 16, 16])
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5000,
                        help="MNIST-1D signals generated, a fifth held out")
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--render", action="store_true", help="no training: write the page "
                        "and plot again from <out>/mnist1d.json (after the memory benchmark "
                        "changed)")
    return parse_args(parser, argv, steps=3, tasks_per_step=2, test_tasks=20, channels=[2, 2],
                      kernel=3, inner_steps=2, timing_rounds=1, samples=600,
                      test_queries=5)


def render(out: Path) -> None:
    """mnist1d.md and mnist1d.png again from out/mnist1d.json, with the memory section as
    the benchmark's JSON is now."""
    saved = json.loads((out / "mnist1d.json").read_text())
    args = argparse.Namespace(**saved["settings"], quick=False, out=out)
    results = saved["results"]
    (out / "mnist1d.md").write_text(markdown(args, results["methods"], results["step_times_s"],
                                             results["budget_s"], rendered=True))
    plot(args, results["methods"], results["step_times_s"], out / "mnist1d.png")


def main(argv=None):
    args = parse(argv)
    if args.render:
        return render(args.out)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(1)
    args.torch_device = bilevel.resolve_device(args.device)
    problems = {form: build(args, form, TRAIN_QUERIES) for form in FORMS}
    tests = {}
    for form in FORMS:
        test_problem = build(args, form, args.test_queries)
        tests[form] = (test_problem, test_problem.test_tasks())
    args.parameters = sum(p.numel() for p in problems["maml"].start.values())
    args.untrained = {form: meta_test(p, p.init_hyper(), tasks, inner_solver(args))
                      for form, (p, tasks) in tests.items()}
    step_times = measure_step_times(args, problems)
    budget = args.budget or args.steps * max(step_times.values())
    results = [run_method(args, label, method, form, problems, tests,
                          max(args.steps, math.floor(budget / step_times[label])))
               for label, method, form in METHODS]
    page = markdown(args, results, step_times, budget)
    record = {"step_times_s": step_times, "budget_s": budget, "untrained": args.untrained,
              "methods": results}
    del args.torch_device
    save(args, "mnist1d", page, record)
    if args.out is not None:
        plot(args, results, step_times, args.out / "mnist1d.png")
    return record


if __name__ == "__main__":
    main()
