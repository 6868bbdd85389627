"""Sinusoid few-shot regression (MLP 1-40-40-1, K = 10 shots): MAML's protocol for five estimators.

Each estimator meta-trains theta (Adam 1e-3, 25 tasks per step); then, on 500 fresh tasks
(fixed seed), theta is adapted to each task's support set and the query MSE is measured:

- MAML, FO-MAML, Reptile (form "maml"): inner = 5 GD steps at lr 0.01 from theta;
- iMAML, Neumann, DARTS, FO-B-MAML (form "bmaml"; FO-B-MAML with lam fixed and learned):
  inner = the proximal problem argmin_phi train_loss(phi) + lam/2 ||phi - theta||^2, by
  Nesterov;
  FO-B-MAML and FO-B-MAML-JVP with lam learned also compiled (compile=True), the latter
  also with a third of the proximal steps.

Test-time rules: "10 GD steps" (lr 0.01 from theta, the protocol's, for every method) and
"proximal solve" (the training inner solver, for the B-MAML-form methods). Full mode writes
docs/results/sinusoid.md and .json (about 35 minutes on one CPU thread); `--methods NAME ... --add`
runs only those rows and adds them to the page and JSON already there.
Run: .venv/bin/python examples/sinusoid.py [--quick] [--steps N] [--methods MAML FO-B-MAML]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.func import grad, jvp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel  # noqa: E402
from bilevel.tree import ravel  # noqa: E402
from examples.common import example_parser, save  # noqa: E402
from examples.common import parse as parse_args  # noqa: E402
from problems.sinusoid import Sinusoid  # noqa: E402

# The reference run of the classic protocol (issue 5): query MSE after 10 GD steps.
REFERENCE = {"MAML": 0.33, "FO-MAML": 0.44, "untrained": 4.15}
SHARPNESS_TASKS = 100
LAM = 10.0  # ~ 1 / (10 steps x lr 0.01): the proximal analogue of the test-time rule
TRAIN_GD = bilevel.solvers.GD(lr=0.01, steps=5)
TEST_GD = bilevel.solvers.GD(lr=0.01, steps=10)
# The proximal problem's Hessian is ~30 + lam at init; its minimiser sits on ReLU kinks,
# where the gradient norm stalls (~0.3, the table's inner grad norm column) while the loss
# has converged, so the solve runs a fixed number of steps, no tolerance.
PROXIMAL = bilevel.solvers.Nesterov(lr=0.002, steps=60, momentum=0.8)
# A third of the steps, a step twice as long: MAML's wall time (with 15 steps and lr 0.005,
# query MSE 0.36 +- 0.03 under the proximal solve).
SHORT_PROXIMAL = bilevel.solvers.Nesterov(lr=0.004, steps=20, momentum=0.8)
FOBMAML = {"name": "fo-bmaml", "scheme": "symmetric", "nu": "eps"}

# name -> (form, method, training inner solver, learn lam, compile)
METHODS = {
    "MAML": ("maml", "maml", TRAIN_GD, False, False),
    "FO-MAML": ("maml", "fomaml", TRAIN_GD, False, False),
    "Reptile": ("maml", "reptile", TRAIN_GD, False, False),
    "iMAML": ("bmaml", {"name": "imaml", "cg_steps": 5}, PROXIMAL, False, False),
    # nu "eps" = eps^(1/3) = 4.9e-3 in float32. nu "auto" (per task, from curvatures read
    # at the inner init along one direction) reached 0.084 as theta sharpened: with lam
    # fixed a -nu stencil solve (which maximises nu * val_loss) diverged at that step; with
    # lam learned it ended at query MSE 0.309 +- 0.028 (proximal solve; 0.242 with "eps").
    # With nu = 0.05 the -nu stencil point ran off to infinity after ~200 meta-steps.
    "FO-B-MAML": ("bmaml", FOBMAML, PROXIMAL, False, False),
    "FO-B-MAML, lam learned": ("bmaml", FOBMAML, PROXIMAL, True, False),
    # compile=True (bilevel.compiled), compile time included in the meta-train time.
    # With 20 proximal steps instead of 60: query MSE 0.34 +- 0.03 (proximal solve), worse.
    "FO-B-MAML, lam learned, compiled": ("bmaml", FOBMAML, PROXIMAL, True, True),
    # The forward-mode variant: exact in nu where the finite difference crosses ReLU kinks.
    "FO-B-MAML-JVP, lam learned, compiled": ("bmaml", "fo-bmaml-jvp", PROXIMAL, True, True),
    # The truncated implicit gradient (20 terms, alpha = the solver's lr) and DARTS's one
    # unrolled step (xi = the solver's lr), at the proximal solution, lam fixed.
    "Neumann": ("bmaml", "neumann", PROXIMAL, False, False),
    "DARTS": ("bmaml", "darts", PROXIMAL, False, False),
    # Trained and evaluated (proximal solve) with SHORT_PROXIMAL.
    "FO-B-MAML-JVP, lam learned, compiled, 20 proximal steps (lr 0.004)": (
        "bmaml", "fo-bmaml-jvp", SHORT_PROXIMAL, True, True),
}


def query_mse(problem, h, tasks, solver) -> torch.Tensor:
    """Per-task query MSE after adapting h with `solver` on each support set, shape (n,)."""
    return bilevel.at_inner_solutions(problem.val_loss, problem, h, tasks, solver)


def sharpness(problem, theta, tasks, iterations=30) -> torch.Tensor:
    """Largest Hessian eigenvalue (in magnitude) of train_loss at theta, per task, by power
    iteration. GD with step lr is stable on a quadratic only below 2 / lr."""
    flat, unravel = ravel(theta)
    start = torch.randn(flat.shape, generator=torch.Generator().manual_seed(0),
                        dtype=flat.dtype).to(flat.device)

    def one_task(task):
        def hessian_vector_product(v):
            return jvp(grad(lambda x: problem.train_loss(unravel(x), None, task)), (flat,),
                       (v,))[1]

        v = start / start.norm()
        for _ in range(iterations):
            hv = hessian_vector_product(v)
            v = hv / hv.norm()
        return v @ hessian_vector_product(v)

    return vmap(one_task)(tasks)


def summary(losses: torch.Tensor) -> dict:
    """Mean and standard error over the tasks whose adaptation stayed finite, and how many
    did not (a GD step too long for theta's curvature diverges)."""
    finite = losses[losses.isfinite()]
    return {"mse": finite.mean().item(), "sem": (finite.std() / len(finite) ** 0.5).item(),
            "diverged": len(losses) - len(finite)}


def evaluate(maml_form, problem, h, tasks, proximal=PROXIMAL) -> dict:
    """Query MSE under each test-time rule that applies to `problem`'s form (the proximal
    solve by `proximal`, the method's training solver), and the sharpness of train_loss at
    theta on the first SHARPNESS_TASKS tasks."""
    rules = {"10 GD steps": summary(query_mse(maml_form, {"theta": h["theta"]}, tasks, TEST_GD))}
    if problem.form == "bmaml":
        rules["proximal solve"] = summary(query_mse(problem, h, tasks, proximal))
    few = {k: v[:SHARPNESS_TASKS] for k, v in tasks.items()}
    top = sharpness(maml_form, h["theta"], few)
    return {"rules": rules, "sharpness_mean": top.mean().item(), "sharpness_max": top.max().item()}


def run(args, save) -> dict:
    """Meta-train and evaluate each method; `save(results)` after each one."""
    device = bilevel.resolve_device(args.device)
    maml_form = Sinusoid(form="maml", device=device)
    tasks = maml_form.sample_tasks(args.test_tasks,
                                   torch.Generator().manual_seed(args.seed + 1000))
    untrained = maml_form.init_hyper(torch.Generator().manual_seed(args.seed))
    results = {"untrained": evaluate(maml_form, maml_form, untrained, tasks)}
    for name in args.methods:
        form, method, solver, learn_lam, compile = METHODS[name]
        problem = Sinusoid(form=form, lam=LAM, learn_lam=learn_lam, device=device)
        start = time.perf_counter()
        try:
            trained = bilevel.meta_train(problem, solver=solver, method=method,
                                         outer={"name": "adam", "lr": 1e-3}, steps=args.steps,
                                         tasks_per_step=args.tasks_per_step, seed=args.seed,
                                         compile=compile, progress=not args.quick)
        except bilevel.DivergenceError as error:
            results[name] = {"form": form, "diverged": str(error)}
            print(f"{name}: {error}", flush=True)
            save(results)
            continue
        seconds = time.perf_counter() - start
        last = trained.history[-100:]
        results[name] = evaluate(maml_form, problem, trained.h, tasks, solver) | {
            "form": form, "train_seconds": seconds,
            "inner_grad_norm_mean": sum(r["inner_grad_norm_mean"] for r in last) / len(last),
            "lam": problem.lam(trained.h).item() if form == "bmaml" else None,
        }
        print(f"{name}: {results[name]['rules']} ({seconds:.0f} s)", flush=True)
        save(results)
    return results


def markdown(args, results) -> str:
    lines = [
        "# Sinusoid few-shot regression: query MSE after adaptation",
        "",
        f"Generated by `python examples/sinusoid.py --seed {args.seed}"
        f" --steps {args.steps}` (device {args.device}); do not edit by hand.",
        "",
        *added_rows(args),
        f"Settings: MLP 1-40-40-1 ReLU (torch.nn.Linear init), K = 10 shots, 10 queries; "
        f"{args.steps} meta-steps of Adam (lr 1e-3), {args.tasks_per_step} tasks per step, "
        f"seed {args.seed}; evaluation on {args.test_tasks} fresh tasks (task seed "
        f"{args.seed + 1000}), mean +- standard error. MAML-form inner problem: "
        f"5 GD steps at lr 0.01 from theta. B-MAML form: argmin train_loss + lam/2 "
        f"||phi - theta||^2, lam = {LAM:g} (fixed, or learned from there), "
        f"solved by Nesterov (lr {PROXIMAL.lr}, momentum {PROXIMAL.momentum}, "
        f"{PROXIMAL.steps} steps); iMAML uses 5 CG steps, FO-B-MAML the symmetric difference "
        "with nu = eps^(1/3) = 4.9e-3 (nu=\"eps\"), FO-B-MAML-JVP the same derivative "
        "in nu by its tangent recursion, Neumann 20 terms of the series with alpha = the "
        "solver's lr, DARTS one unrolled step with xi = the solver's lr. *compiled*: "
        "compile=True, compile time (a fresh TorchInductor cache in the reference run) "
        "included in the meta-train time. The single-loop solvers (SOBA, AmIGO, BOME, F2SA) "
        "are not run: they carry each task slot's inner variables from one step to the next, "
        "and here every meta-step draws fresh tasks, so a slot's variables would belong to a "
        "task it never sees again.",
        "",
        "Test-time rules: *10 GD steps* = 10 steps of GD at lr 0.01 on the support loss from "
        "theta (the protocol's rule, for every method); *proximal solve* = the B-MAML inner "
        "solver above, with the trained lam. A task whose adaptation diverged (non-finite "
        "loss) is left out of the mean and counted.",
        "",
        "| method | form | query MSE, 10 GD steps | query MSE, proximal solve | lam | "
        "meta-train time (s) | mean inner grad norm (last 100 steps) | sharpness at theta, "
        "mean / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ["untrained", *args.methods]:
        r = results.get(name)
        if r is None:
            continue
        if "diverged" in r:
            lines.append(f"| {name} | {r['form']} | {r['diverged']} | - | - | - | - | - |")
            continue
        lam = "-" if r.get("lam") is None else f"{r['lam']:.3g}"
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-"
        inner = f"{r['inner_grad_norm_mean']:.3g}" if "inner_grad_norm_mean" in r else "-"
        lines.append(f"| {name} | {r.get('form', '-')} | {cell(r, '10 GD steps')} | "
                     f"{cell(r, 'proximal solve')} | {lam} | {seconds} | {inner} | "
                     f"{r['sharpness_mean']:.3g} / {r['sharpness_max']:.3g} |")
    lines += [
        "",
        f"Sharpness: the largest Hessian eigenvalue (in magnitude, power iteration) of the "
        f"support loss at theta, over the first {SHARPNESS_TASKS} test tasks. On a quadratic, "
        f"GD at lr {TEST_GD.lr} is stable only where it is below 2 / lr = "
        f"{2 / TEST_GD.lr:g}. The MAML-form methods train theta through such steps; the "
        "B-MAML form never does (its adaptation is the proximal solve), so nothing keeps its "
        "theta's curvature below that limit.",
        "",
        "Reference (issue 5, classic protocol with 2000 meta-steps): MAML "
        f"{REFERENCE['MAML']}, FO-MAML {REFERENCE['FO-MAML']}, untrained "
        f"{REFERENCE['untrained']}.",
        "",
    ]
    return "\n".join(lines + findings(results))


def cell(r, rule) -> str:
    if rule not in r["rules"]:
        return "-"
    m = r["rules"][rule]
    text = f"{m['mse']:.3g} +- {m['sem']:.2g}"
    return text + (f" ({m['diverged']} tasks diverged, left out)" if m["diverged"] else "")


def findings(results) -> list[str]:
    """What the table says about the goal (FO-B-MAML <= the reference MAML figure)."""
    goal, limit = REFERENCE["MAML"], 2 / TEST_GD.lr
    lines = ["## Findings", ""]
    for name in ("MAML", "FO-MAML"):
        if "rules" in results.get(name, {}):
            mse = results[name]["rules"]["10 GD steps"]["mse"]
            lines.append(f"- {name}: 10 GD steps {mse:.3g} (reference {REFERENCE[name]}).")
    for name, r in results.items():
        if "proximal solve" not in r.get("rules", {}):
            continue
        proximal, gd = r["rules"]["proximal solve"], r["rules"]["10 GD steps"]
        verdict = "meets" if proximal["mse"] <= goal else "misses"
        diverged = f", {gd['diverged']} tasks diverged" if gd["diverged"] else ""
        lines.append(
            f"- {name}: proximal solve {proximal['mse']:.3g}, which {verdict} the goal "
            f"(<= {goal}); 10 GD steps {gd['mse']:.3g}{diverged}. Sharpness at theta: mean "
            f"{r['sharpness_mean']:.3g}, max {r['sharpness_max']:.3g} (compare 2 / lr = "
            f"{limit:g} for the 10-GD rule).")
    return lines + [
        "", f"The proximal solve spends {PROXIMAL.steps} gradient evaluations per task at test "
        f"time, the protocol's rule {TEST_GD.steps}.", ""]


def added_rows(args) -> list[str]:
    """The page's note on rows run later by --add, if any."""
    if not getattr(args, "added", None):
        return []
    return [f"Rows {', '.join(args.added)}: added by `python examples/sinusoid.py --seed "
            f"{args.seed} --steps {args.steps} --methods {' '.join(args.added)} --add` (each "
            "method trains and is evaluated on its own, from the same seed); the other rows "
            "are the reference run's.", ""]


def with_earlier_rows(args):
    """For --add: (args naming every row, the earlier results) from <out>/sinusoid.json,
    whose settings must be this run's."""
    earlier = json.loads((args.out / "sinusoid.json").read_text())
    same = ("seed", "steps", "tasks_per_step", "test_tasks")
    differ = [k for k in same if earlier["settings"][k] != getattr(args, k)]
    if differ:
        raise SystemExit(f"--add: {args.out / 'sinusoid.json'} was made with other "
                         f"{', '.join(differ)}; rerun every row instead")
    rows = set(earlier["settings"]["methods"]) | set(args.methods)
    everything = argparse.Namespace(**vars(args) | {
        "methods": [m for m in METHODS if m in rows],
        "added": sorted(set(earlier["settings"].get("added", [])) | set(args.methods),
                        key=list(METHODS).index)})
    return everything, earlier["results"]


def parse(argv):
    parser = example_parser(__doc__, "sinusoid", "a few steps, a few tasks")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tasks-per-step", type=int, default=25)
    parser.add_argument("--test-tasks", type=int, default=500)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        help="default: all (with --quick, those not compiled)")
    parser.add_argument("--add", action="store_true",
                        help="run only --methods and add their rows to the page and JSON in "
                             "--out (made with the same seed, steps and tasks)")
    args = parse_args(parser, argv, steps=3, tasks_per_step=4, test_tasks=20)
    if args.methods is None:
        args.methods = [name for name, row in METHODS.items() if not (args.quick and row[4])]
    return args


def main(argv=None):
    args = parse(argv)
    if not args.add:
        return run(args, lambda results: save(args, "sinusoid", markdown(args, results),
                                              results))
    everything, earlier = with_earlier_rows(args)

    def save_all(results):
        merged = earlier | {k: v for k, v in results.items() if k != "untrained"}
        save(everything, "sinusoid", markdown(everything, merged), merged)

    return run(args, save_all)

if __name__ == "__main__":
    main()
