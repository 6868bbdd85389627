"""FO-B-MAML against Optuna's samplers on the same problem and the same budget of inner
gradient evaluations (`bilevel compare`): logistic regression on the digits with one L2
weight and with one per feature, and data hyper-cleaning (one weight per training example).

Settings are those of examples/logreg_digits.py and examples/hypercleaning_digits.py
(inner Nesterov, FO-B-MAML symmetric, Adam on h); nothing is chosen on the test set.
log_lam is searched in [-10, 1]: lam up to e, below the largest at which the inner
solver (Nesterov, lr 0.3) stays stable; with an upper end of 3, random per-feature points
made it diverge (validation losses of 1e90). The
bilevel side validates every 5 outer steps, each Optuna trial once; both count those
inner solves. Each case runs `compare` once with TPE (both sides), then every other
sampler and seed on the Optuna side only, then the case's variants of the bilevel side
(`VARIANTS`: warm-started inner solves, a penalty on the hyperparameters), and puts all
curves in one table and figure.
Prints JSON; writes <out>/<case>/{summary.json, compare.md, compare.png}; with --docs DIR,
also DIR/compare_optuna.{json,md} (the cases run replace those of an earlier run, the
others are kept) and DIR/compare_<case>.png.
Run: .venv/bin/python benchmarks/compare_optuna.py [--cases ...] [--samplers ...] [--seeds N]
     [--docs docs/results]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilevel.compare import compare  # noqa: E402
from bilevel.compare.curves import Curve  # noqa: E402
from bilevel.compare.report import markdown, rows  # noqa: E402
from bilevel.config import from_dict  # noqa: E402

LOGREG_SOLVER = {"name": "nesterov", "lr": 0.3, "steps": 200, "momentum": 0.8}
CLEANING_SOLVER = {"name": "nesterov", "lr": 0.5, "steps": 150, "momentum": 0.8}
COMMON = {"method": {"name": "fo-bmaml", "scheme": "symmetric"}, "steps": 1,
          "tasks_per_step": 1, "eval": {"every": 5, "tasks": 1}, "dtype": "float64",
          "progress": False}
CASES = {
    "logreg-scalar": COMMON | {
        "problem": {"name": "logreg", "n_train": 500, "n_val": 500, "lam": 0.01},
        "solver": LOGREG_SOLVER, "outer": {"name": "adam", "lr": 0.1},
        "search": {"budget": {"inner_grad_evals": 40000},
                   "space": {"log_lam": {"low": -10, "high": 1}}}},
    "logreg-per-feature": COMMON | {
        "problem": {"name": "logreg", "n_train": 500, "n_val": 500, "lam": 0.01,
                    "per_feature": True},
        # At step 75 one stencil solve's gradient norm grows 3,840-fold (a weight near the
        # Nesterov solver's stability limit), once; the default factor (1,000) would stop
        # the run there. Allowed, so that the run goes on as it did before the check.
        "divergence_factor": 1e6,
        "solver": LOGREG_SOLVER, "outer": {"name": "adam", "lr": 0.1},
        "search": {"budget": {"inner_grad_evals": 40000},
                   "space": {"log_lam.W": {"low": -10, "high": 1, "per_coordinate": True},
                             "log_lam.b": {"low": -10, "high": 1}}}},
    "hypercleaning": COMMON | {
        "problem": {"name": "hypercleaning", "n_train": 600, "n_val": 300,
                    "corruption": 0.5, "l2": 0.01},
        "solver": CLEANING_SOLVER, "outer": {"name": "adam", "lr": 0.3},
        "search": {"budget": {"inner_grad_evals": 20000},
                   "space": {"weights": {"low": -5, "high": 5, "per_coordinate": True}}}},
}
# Each outer step continues the unperturbed solve for 10 steps from the previous step's
# solution and runs the stencil's solves 10 steps from there (a twentieth of the cold
# solve's 200; the first step solves cold).
WARM_START = {"steps": 10}
# Against fitting 65 weights to 500 validation images: each per-feature log-weight pulled
# toward their mean, as by a Gaussian prior of spread s = 1 (a factor e in lam) on a
# validation loss averaged over n = 500 images: weight 1 / (n s^2). Chosen before the run,
# not on any result.
PENALTY = {"weight": 1 / 500, "leaves": ["log_lam.W"]}
# Further runs of the bilevel side (seed 0) beside the case's own: side name -> config keys.
VARIANTS = {"logreg-scalar": {"bilevel-warm": {"warm_start": WARM_START}},
            "logreg-per-feature": {"bilevel-penalty": {"hyper_penalty": PENALTY}}}


def run_case(name: str, samplers: list, seeds: int, out: Path) -> dict:
    curves, tests, runs = {}, {}, {}
    for sampler in samplers:
        for seed in range(seeds):
            data = CASES[name] | {"seed": seed}
            data["search"] = data["search"] | {"sampler": sampler}
            both = sampler == samplers[0] and seed == 0
            record = compare(from_dict(data), out=out / name / f"{sampler}-{seed}",
                             only="both" if both else "optuna")
            saved = json.loads((Path(record["directory"]) / "compare.json").read_text())
            for row in record["table"]:
                side = row["side"] if row["side"] == "bilevel" else f"{row['side']}-{seed}"
                points = saved["curves"][row["side"]]
                curves[side] = Curve(side, points["cost"], points["seconds"],
                                     points["best_val_loss"])
                tests[side] = {k: row.get(k) for k in ("test_loss", "test_accuracy")}
                runs[side] = record["directory"]
    for side, changes in VARIANTS.get(name, {}).items():
        record = compare(from_dict(CASES[name] | changes | {"seed": 0}), out=out / name / side,
                         only="bilevel")
        saved = json.loads((Path(record["directory"]) / "compare.json").read_text())
        (row,) = record["table"]
        points = saved["curves"]["bilevel"]
        curves[side] = Curve(side, points["cost"], points["seconds"], points["best_val_loss"])
        tests[side] = {k: row.get(k) for k in ("test_loss", "test_accuracy")}
        runs[side] = record["directory"]
    table = rows(curves, tests)
    budget = CASES[name]["search"]["budget"]["inner_grad_evals"]
    figure(out / name / "compare.png", curves, f"{name}: {budget:,} inner gradient evaluations")
    (out / name / "compare.md").write_text(markdown(table))
    summary = {"case": name, "budget_inner_grad_evals": budget, "samplers": samplers,
               "seeds": seeds, "variants": VARIANTS.get(name, {}), "table": table,
               "runs": runs}
    (out / name / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def figure(path: Path, curves: dict, title: str) -> None:
    """Best validation loss so far against cost and against wall seconds, both on log
    scales: one colour per sampler (and per bilevel run), one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ["-", "--", ":", "-."]
    families = list(dict.fromkeys(side.rstrip("0123456789").rstrip("-") for side in curves))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, curve in curves.items():
        family = side.rstrip("0123456789").rstrip("-")
        seed = side[len(family) + 1:]
        style = {"color": f"C{families.index(family)}",
                 "linestyle": styles[int(seed) % len(styles)] if seed else "-",
                 "linewidth": 2.2 if family.startswith("bilevel") else 1.2}
        axes[0].step(curve.cost, curve.best, where="post", label=side, **style)
        axes[1].step(curve.seconds, curve.best, where="post", label=side, **style)
    axes[0].set_xlabel("inner gradient evaluations (+ HVPs), log scale")
    axes[1].set_xlabel("wall seconds, log scale")
    best = min(c.best[-1] for c in curves.values() if c.best)
    for axis in axes:
        axis.axhline(best + 0.01 * abs(best), color="grey", linewidth=0.8, linestyle="--")
        axis.set_xscale("log")
        axis.set_ylabel("best validation loss so far")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title} (grey: within 1% of the best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def redraw(out: Path, docs: Path | None, cases: list) -> None:
    """The figures of `cases` again, from the curves in their run directories (the
    summary.json of an earlier run under `out`), without running anything."""
    for name in cases:
        summary = json.loads((out / name / "summary.json").read_text())
        curves = {}
        for side, directory in summary["runs"].items():
            saved = json.loads((Path(directory) / "compare.json").read_text())["curves"]
            points = saved["bilevel" if side.startswith("bilevel") else
                           side.rstrip("0123456789").rstrip("-")]
            curves[side] = Curve(side, points["cost"], points["seconds"],
                                 points["best_val_loss"])
        budget = summary["budget_inner_grad_evals"]
        figure(out / name / "compare.png", curves,
               f"{name}: {budget:,} inner gradient evaluations")
        if docs is not None:
            shutil.copyfile(out / name / "compare.png",
                            docs / f"compare_{name.replace('-', '_')}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"],
                        choices=["tpe", "random", "cmaes", "gp"])
    parser.add_argument("--seeds", type=int, default=1, help="Optuna seeds per sampler")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_optuna"))
    parser.add_argument("--docs", type=Path, default=None,
                        help="also write compare_optuna.{json,md} and the figures here")
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw the figures of --cases from the runs under --out")
    args = parser.parse_args(argv)
    if args.redraw:
        redraw(args.out, args.docs, args.cases)
        return
    results = [run_case(name, args.samplers, args.seeds, args.out) for name in args.cases]
    if args.docs is not None:
        write_docs(args.docs, args.out, results)
    print(json.dumps(results, indent=2))


def write_docs(directory: Path, out: Path, results: list) -> None:
    """directory/compare_optuna.json (every case, those just run replacing earlier ones),
    compare_optuna.md (its tables) and compare_<case>.png."""
    path = directory / "compare_optuna.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    fresh = {r["case"] for r in results}
    cases = sorted([r for r in kept if r["case"] not in fresh] + results,
                   key=lambda r: list(CASES).index(r["case"]))
    path.write_text(json.dumps(cases, indent=2) + "\n")
    for result in results:
        shutil.copyfile(out / result["case"] / "compare.png",
                        directory / f"compare_{result['case'].replace('-', '_')}.png")
    (directory / "compare_optuna.md").write_text(docs_markdown(cases))


def docs_markdown(cases: list) -> str:
    lines = ["# FO-B-MAML against Optuna on the same budget", "",
             "Generated by `benchmarks/compare_optuna.py --docs docs/results` from "
             "`compare_optuna.json`; do not edit by hand. Settings and protocol: "
             "[docs/compare.md](../compare.md#results). \"cost to 1%\": inner gradient "
             "evaluations until the side's best validation loss so far is within 1% of the "
             "best of all the rows of its table (\"-\": never); test numbers are at the "
             "side's final h (Optuna: its best trial). Sides `optuna-<sampler>-<seed>`; "
             "`bilevel` is the config as written, `bilevel-<variant>` the same with the "
             "config keys below.", ""]
    for case in cases:
        lines += [f"## {case['case']}", "",
                  f"Budget: {case['budget_inner_grad_evals']:,} inner gradient evaluations."]
        if "samplers" in case:
            seeds = "seed 0" if case["seeds"] == 1 else f"seeds 0-{case['seeds'] - 1}"
            lines[-1] += f" Samplers {', '.join(case['samplers'])}, {seeds}."
        for side, changes in case.get("variants", {}).items():
            lines[-1] += f" `{side}`: `{json.dumps(changes)}`."
        lines += ["", markdown(case["table"]),
                  f"![{case['case']}](compare_{case['case'].replace('-', '_')}.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
