"""The paper's Figure 1 on the quadratic (Appendix B), reproduced with every estimator.

Left: relative error of the meta-gradient for theta against the number of inner GD
steps. Right: outer loss F(theta) against outer GD iterations at 20 inner steps, each
method with the outer learning rate that works best for it on a small grid, and the
single-loop solvers (SOBA, AmIGO, BOME, F2SA) beside them: their inner variables carried
from one outer iteration to the next (info.state), the 20 steps only their starting solve.

Writes docs/results/figure1.{png,json,md} (or --out DIR). `--quick` runs a tiny
version (used by the tests).
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import bilevel  # noqa: E402
from bilevel.tree import relative_error  # noqa: E402
from problems.quadratic import Quadratic  # noqa: E402

METHODS = [  # label, method, options
    ("FO-MAML", "fomaml", {}),
    ("Reptile", "reptile", {}),
    ("MAML", "maml", {}),
    ("iMAML cg=2", "imaml", {"cg_steps": 2}),
    ("iMAML cg=5", "imaml", {"cg_steps": 5}),
    ("iMAML cg=10", "imaml", {"cg_steps": 10}),
    ("FO-B-MAML forward", "fo-bmaml", {"scheme": "forward"}),
    ("FO-B-MAML symmetric", "fo-bmaml", {"scheme": "symmetric"}),
    ("FO-B-MAML forward mode (jvp)", "fo-bmaml-jvp", {}),
    ("Neumann 20 terms", "neumann", {"terms": 20}),
    ("Neumann 200 terms", "neumann", {"terms": 200}),
    ("DARTS", "darts", {}),
]
# Right panel only: one call is one iteration on variables carried across outer iterations,
# so "the hypergradient after K inner steps" (the left panel) is not defined for them.
SINGLE_LOOP = [  # label, method, options (inner steps: the solver's lr)
    ("SOBA", "soba", {"decay": 0.0}),
    ("AmIGO", "amigo", {"inner_steps": 10}),
    ("BOME", "bome", {"inner_steps": 10}),
    ("F2SA", "f2sa", {"inner_steps": 10}),
]
# An oracle call: one derivative of g (a gradient, a Hessian- or mixed vector product).
ORACLE_KEYS = ("grad_evals", "hvps", "mixed_products")
FULL = {"dim": 20, "kappa": 1e3, "lam": 10.0, "n_tasks": 10,
        "steps": [5, 10, 20, 50, 100, 200, 500, 1000], "outer_steps": 50,
        "outer_lrs": [0.01, 0.03, 0.1, 0.3], "loss_inner_steps": 20}
QUICK = FULL | {"dim": 4, "n_tasks": 2, "steps": [5, 20], "outer_steps": 3, "outer_lrs": [1.0]}


def error_curves(problem, h, tasks, setting):
    """Relative error of each method's theta-gradient against the closed form."""
    reference = problem.meta_gradient(h, tasks)["theta"]["w"]
    curves = {}
    for label, method, options in METHODS:
        curves[label] = []
        for steps in setting["steps"]:
            solver = bilevel.solvers.GD(lr=1 / (problem.kappa + setting["lam"]), steps=steps)
            grad, _ = bilevel.hypergradient(problem, h, tasks, solver=solver, method=method,
                                            **options)
            curves[label].append(relative_error(grad["theta"]["w"], reference))
    return curves


def loss_curve(problem, h, tasks, method, options, lr, setting):
    """(F(theta_t) along outer GD with this method's hypergradient (inf on divergence), the
    oracle calls spent). A single-loop method's state goes from each call to the next."""
    solver = bilevel.solvers.GD(lr=1 / (problem.kappa + setting["lam"]),
                                steps=setting["loss_inner_steps"])
    theta, losses, oracles, state = h["theta"]["w"], [], 0, None
    for _ in range(setting["outer_steps"] + 1):
        current = {"theta": {"w": theta}, "log_lam": h["log_lam"]}
        loss = problem.outer_loss(current, tasks).item()
        losses.append(loss if math.isfinite(loss) else math.inf)
        if not math.isfinite(loss) or len(losses) > setting["outer_steps"]:
            break
        grad, info = bilevel.hypergradient(problem, current, tasks, solver=solver,
                                           method=method, state=state, **options)
        state = info.state  # None for a double-loop method
        oracles += sum(getattr(info.cost, key) for key in ORACLE_KEYS)
        theta = theta - lr * grad["theta"]["w"]
    return losses, oracles


def best_loss_curves(problem, h, tasks, setting):
    """Per method, the run whose final loss is lowest over the grid of outer learning rates
    (a run that diverged, or rose above its start, counts as infinite)."""
    curves = {}
    for label, method, options in METHODS + SINGLE_LOOP:
        runs = {lr: loss_curve(problem, h, tasks, method, options, lr, setting)
                for lr in setting["outer_lrs"]}

        def final(lr, runs=runs):
            loss = runs[lr][0]
            finished = len(loss) > setting["outer_steps"] and loss[-1] <= loss[0]
            return loss[-1] if finished else math.inf

        lr = min(runs, key=final)
        curves[label] = {"lr": lr, "loss": runs[lr][0], "oracle_calls": runs[lr][1],
                         "diverged": final(lr) == math.inf}
    return curves


def plot(errors, losses, setting, optimum, path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10 colors
    for (label, _, _), color in zip(METHODS + SINGLE_LOOP, colors[::2] + colors[1::2],
                                    strict=False):
        single = label not in errors
        if not single:
            left.loglog(setting["steps"], errors[label], marker="o", label=label, color=color)
        gap = [max(loss - optimum, 1e-16) for loss in losses[label]["loss"]]
        note = ", diverged at every lr" if losses[label]["diverged"] else ""
        right.semilogy(gap, label=f"{label}{' (single-loop)' if single else ''} "
                       f"(lr={losses[label]['lr']:g}{note})", color=color,
                       linestyle="--" if single else "-")
    left.set(xlabel="inner steps", ylabel="relative error of the meta-gradient",
             title="meta-gradient quality")
    right.set(xlabel="outer iterations", ylabel="F(theta) - min F",
              title=f"outer loss, {setting['loss_inner_steps']} inner steps "
                    "(single-loop: their first call's)")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"quadratic: n={setting['dim']}, kappa={setting['kappa']:g}, "
                    f"lam={setting['lam']:g}, inner lr=1/(kappa+lam), {setting['n_tasks']} tasks,"
                    " float64, fo-bmaml nu=auto")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(errors, losses, setting):
    steps, outer = setting["steps"], setting["outer_steps"]
    lines = [
        "# Figure 1: the quadratic, every estimator",
        "",
        "Generated by `python examples/figure1.py`; do not edit by hand. Left columns: relative "
        "error of the meta-gradient for theta after K inner GD steps at the initial h. Right "
        f"columns: outer GD on theta for {outer} outer iterations with "
        f"{setting['loss_inner_steps']} inner steps, the best outer lr of "
        f"{setting['outer_lrs']}, the final gap F(theta) - min F, and the oracle calls the "
        "run spent (derivatives of g: gradients, Hessian- and mixed vector products, all "
        f"{setting['n_tasks']} tasks).",
        "",
        "The single-loop solvers (SOBA with constant steps, AmIGO, BOME and F2SA with 10 "
        "steps per call and benchmark_bilevel's other defaults; inner step size the solver's "
        "1/(kappa+lam)) are in the right columns only: they carry their inner variables "
        "(info.state) from one outer iteration to the next, and the inner steps are only "
        "their first call's solve, so the left panel's hypergradient after K inner steps at "
        "a fixed h has no counterpart for them. An outer iteration of theirs takes 1 (SOBA) "
        "or 10 (the others) steps on the carried variables where a double-loop method "
        f"re-solves each task from scratch with {setting['loss_inner_steps']} steps (and more "
        "work for its hypergradient): the x axis compares them per outer iteration, the "
        "oracle-call column per unit of work.",
        "",
        f"| method | {' | '.join(f'K={k}' for k in steps)} | outer lr | final F - min F "
        "| oracle calls |",
        "|---" * (len(steps) + 4) + "|",
    ]
    for label, _, _ in METHODS + SINGLE_LOOP:
        cells = " | ".join(f"{e:.1e}" for e in errors[label]) if label in errors else \
            " | ".join("-" for _ in steps)
        final = losses[label]["loss"][-1] - setting["optimum"]
        lines.append(f"| {label} | {cells} | {losses[label]['lr']:g} | {final:.2e} | "
                     f"{losses[label]['oracle_calls']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run, for tests")
    parser.add_argument("--out", default="docs/results", help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny operations: threads cost more than they give
    setting = dict(QUICK if args.quick else FULL)
    problem = Quadratic(dim=setting["dim"], kappa=setting["kappa"], lam=setting["lam"],
                        n_tasks=setting["n_tasks"])
    h, tasks = problem.init_hyper(torch.Generator().manual_seed(0)), problem.all_tasks()
    # min F over theta: F is a convex quadratic in theta; solve grad F = 0 from two points.
    setting["optimum"] = minimum_outer_loss(problem, h, tasks)
    errors = error_curves(problem, h, tasks, setting)
    losses = best_loss_curves(problem, h, tasks, setting)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(errors, losses, setting, setting["optimum"], out / "figure1.png")
    (out / "figure1.json").write_text(json.dumps(
        {"setting": setting, "relative_error": errors, "outer_loss": losses}, indent=1))
    (out / "figure1.md").write_text(markdown(errors, losses, setting))
    print(markdown(errors, losses, setting))


def minimum_outer_loss(problem, h, tasks) -> float:
    """min over theta of F: F is quadratic in theta, so one Newton step from any theta."""
    def loss(theta):
        return problem.outer_loss({"theta": {"w": theta}, "log_lam": h["log_lam"]}, tasks)

    theta = h["theta"]["w"]
    hessian = torch.func.hessian(loss)(theta)
    return loss(theta - torch.linalg.solve(hessian, torch.func.grad(loss)(theta))).item()


if __name__ == "__main__":
    main()
