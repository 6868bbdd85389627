"""nu="auto" against the best nu of a half-decade grid, with val_loss multiplied by a scale;
and (--calibrate) the constants k_p of nu="auto", from a family of quadratics.

The quadratic (problems/quadratic.py, distinct_val=True, dim 6, kappa 10, lam 1, 3 tasks,
GD lr 1/11, 300 steps), val_loss times s for s in 1e-4 ... 1e4, float32 and float64, every
scheme. Relative error of the hypergradient against the closed form (float64, times s).
A nu whose perturbed solves diverge counts as error inf. The grid: half decades from
1000x below to 1000x above eps^(1/(p+1)) / s, the best step if S were exactly 1 / s
(centred on the truth, not on what auto measured). Prints markdown tables: auto's nu over
the best grid nu; auto's error and the best grid error, and their ratio; the old eps-only
rule (nu="eps") for comparison.

--calibrate: for each member of FAMILY (float64, scale 1), the error of nu = c eps^(1/(p+1))
S^(1/(p+1)) T^(p/(p+1)) (nu="auto" with k_p replaced by c) on a quarter-decade grid of c;
the fit E(c) = a c^p + b / c gives the member's best c. Over the family the best c spans
[lo, hi]; the model's error ratio at c = x * best is (x^p + p / x) / (p + 1), and k_p is the
c whose worst ratio over [lo, hi] is smallest. The same without the curvature scale
(T = S, the rule before it) shows what T buys: a narrower [lo, hi]. Prints JSON.

--sinusoid: beyond quadratics, the sinusoid problem (MLP 1-40-40-1, 10 tasks, GD lr 0.01, 50
steps) with tanh (smooth) and ReLU: auto's error and the best of half decades from 1e-12 to 1,
against fo-bmaml-jvp in float64 (the limit nu -> 0 of the same lock-stepped iterates).

    python benchmarks/auto_nu_scale.py              # about 2 min on one thread
    python benchmarks/auto_nu_scale.py --calibrate  # about 8 min (both rules)
    python benchmarks/auto_nu_scale.py --sinusoid   # about 4 min
"""

import argparse
import json
import math
from unittest import mock

import torch

import bilevel
from bilevel.estimators import fobmaml
from bilevel.estimators.fobmaml import eps_nu
from bilevel.tree import relative_error, tree_map
from problems.quadratic import Quadratic

SCALES = (1e-4, 1e-2, 1.0, 1e2, 1e4)
SCHEMES = ("forward", "symmetric", "five-point")
DTYPES = (torch.float32, torch.float64)


class ScaledQuadratic(Quadratic):
    """The quadratic with val_loss multiplied by `scale` (so grad F is too)."""

    def __init__(self, scale, **options):
        super().__init__(**options)
        self.scale = scale

    def val_loss(self, phi, h, task):
        return self.scale * super().val_loss(phi, h, task)


def setting(scale, dtype):
    options = {"dim": 6, "kappa": 10.0, "lam": 1.0, "n_tasks": 3, "distinct_val": True}
    problem = ScaledQuadratic(scale, dtype=dtype, **options)
    h, tasks = problem.init_hyper(torch.Generator().manual_seed(1)), problem.all_tasks()
    exact = Quadratic(dtype=torch.float64, **options)
    reference = tree_map(lambda g: scale * g, exact.meta_gradient(
        tree_map(torch.Tensor.double, h), tree_map(torch.Tensor.double, tasks)))
    return problem, h, tasks, reference


def error(problem, h, tasks, reference, nu, scheme, steps=300):
    """(relative error, info["nu"]) with `steps` GD steps; inf when a perturbed solve
    diverges."""
    solver = bilevel.solvers.GD(lr=1 / 11, steps=steps)
    try:
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=nu,
                                           scheme=scheme)
    except bilevel.DivergenceError:
        return math.inf, None
    value = float(relative_error(tree_map(torch.Tensor.double, grad), reference))
    return (value if math.isfinite(value) else math.inf), info["nu"]


def cells(scales=SCALES, schemes=SCHEMES, dtypes=DTYPES):
    """{(dtype, scheme, scale): (auto error, auto nu, best error, best nu, eps-rule error)}."""
    out = {}
    for dtype in dtypes:
        for scheme in schemes:
            for scale in scales:
                problem, h, tasks, reference = setting(scale, dtype)
                auto, auto_nu = error(problem, h, tasks, reference, "auto", scheme)
                grid = [eps_nu(scheme, dtype) / scale * 10 ** (k / 2) for k in range(-6, 7)]
                best, best_nu = min((error(problem, h, tasks, reference, nu, scheme)[0], nu)
                                    for nu in grid)
                best_nu = best_nu if grid[0] < best_nu < grid[-1] else -best_nu  # at an edge
                old, _ = error(problem, h, tasks, reference, "eps", scheme)
                out[dtype, scheme, scale] = auto, auto_nu, best, best_nu, old
    return out


def table(results, cell):
    lines = ["| dtype | scheme | " + " | ".join(f"s = {s:g}" for s in SCALES) + " |",
             "|---|---|" + "---|" * len(SCALES)]
    for dtype in DTYPES:
        for scheme in SCHEMES:
            row = [cell(*results[dtype, scheme, scale]) for scale in SCALES]
            lines.append(f"| {str(dtype)[6:]} | {scheme} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def nu_ratio(auto, auto_nu, best, best_nu, old):
    edge = "*" if best_nu < 0 else ""
    return f"{auto_nu / abs(best_nu):.2g}{edge}" if auto_nu else "diverged"


def ratio(auto, auto_nu, best, best_nu, old):
    return f"{auto / best:.2g}" if math.isfinite(auto) else "inf"


# Quadratics that differ in what sets the error constants relative to S and T: how val_loss
# curves where g is flat (lam, kappa, a validation quadratic of its own or none), size, draw.
FAMILY = {
    "val = train": {"distinct_val": False},
    "distinct val": {},
    "distinct val, lam 0.1": {"lam": 0.1},
    "distinct val, lam 10": {"lam": 10.0},
    "distinct val, kappa 30": {"kappa": 30.0},
    "distinct val, dim 20": {"dim": 20},
    "distinct val, seed 2": {"seed": 2},
}


def member(options):
    options = {"dim": 6, "kappa": 10.0, "lam": 1.0, "n_tasks": 3, "distinct_val": True,
               "dtype": torch.float64} | options
    problem = Quadratic(**options)
    h, tasks = problem.init_hyper(torch.Generator().manual_seed(1)), problem.all_tasks()
    smoothness = options["kappa"] + options["lam"]  # a safe GD step is its inverse
    steps = min(100 + int(40 * smoothness / min(1 + options["lam"], 2)), 1500)  # converged
    solver = bilevel.solvers.GD(lr=1 / smoothness, steps=steps)
    return problem, h, tasks, problem.meta_gradient(h, tasks), solver


def best_factor(setting, scheme):
    """The member's best c (see the module's docstring) and the fit's curve."""
    problem, h, tasks, reference, solver = setting
    order = fobmaml.SCHEMES[scheme][2]
    points = []
    for k in range(-8, 5):
        c = 10 ** (k / 4)
        with mock.patch.dict(fobmaml.AUTO_FACTORS, {scheme: c}):
            try:
                grad, _ = bilevel.hypergradient(problem, h, tasks, solver=solver,
                                                scheme=scheme)
            except bilevel.DivergenceError:
                continue
        value = relative_error(grad, reference)
        if value < 0.1:
            points.append((c, value))
    # E(c) = a c^p + b / c, linear in (a, b): least squares on the relative residual.
    c, value = torch.tensor(points, dtype=torch.float64).T
    design = torch.stack([c ** order / value, 1 / (c * value)], 1)
    a, b = torch.linalg.lstsq(design, torch.ones_like(c)[:, None]).solution[:, 0].tolist()
    return (b / (order * a)) ** (1 / (order + 1)), points


def minimax(order, low, high):
    """The c in [low / 10, 10 high] whose worst model error ratio over best c in [low,
    high] is smallest, and that ratio."""
    def worst(c):
        return max((x ** order + order / x) / (order + 1) for x in (c / low, c / high))

    grid = [low / 10 * (100 * high / low) ** (i / 4000) for i in range(4001)]
    best = min(grid, key=worst)
    return best, worst(best)


def calibrate(curvature_range=None):
    """k_p per scheme over FAMILY; curvature_range=1 calibrates the rule without T (T = S)."""
    settings = {name: member(options) for name, options in FAMILY.items()}
    out = {}
    for scheme in SCHEMES:
        order = fobmaml.SCHEMES[scheme][2]
        with mock.patch.object(fobmaml, "CURVATURE_RANGE",
                               curvature_range or fobmaml.CURVATURE_RANGE):
            best = {name: best_factor(setting, scheme)[0] for name, setting in settings.items()}
        low, high = min(best.values()), max(best.values())
        factor, worst = minimax(order, low, high)
        out[scheme] = {"best_c": {k: round(v, 3) for k, v in best.items()},
                       "range": [round(low, 3), round(high, 3)],
                       "spread": round(high / low, 1), "k_p": round(factor, 3),
                       "worst_model_ratio": round(worst, 2),
                       "k_p_in_use": fobmaml.AUTO_FACTORS[scheme]}
    return out


def _error_against(setting, nu, scheme):
    """(relative error against the reference, the nu used); inf when a solve diverged."""
    problem, h, tasks, reference, solver = setting
    try:
        grad, info = bilevel.hypergradient(problem, h, tasks, solver=solver, nu=nu,
                                           scheme=scheme)
    except bilevel.DivergenceError:
        return math.inf, nu
    return relative_error(tree_map(torch.Tensor.double, grad), reference), info["nu"]


def sinusoid():
    """{activation: {dtype: {scheme: [auto error, auto nu, best grid error, best nu]}}}."""
    from problems.sinusoid import Sinusoid

    solver = bilevel.solvers.GD(lr=0.01, steps=50)
    out = {}
    for activation in ("tanh", "relu"):
        problem = Sinusoid(activation=activation)
        h = tree_map(torch.Tensor.double, problem.init_hyper(torch.Generator().manual_seed(0)))
        tasks = tree_map(lambda t: t.double() if t.is_floating_point() else t,
                         problem.sample_tasks(10, torch.Generator().manual_seed(1)))
        reference, _ = bilevel.hypergradient(problem, h, tasks, solver=solver,
                                             method="fo-bmaml-jvp")
        for dtype in DTYPES:
            cast = tree_map(lambda t, d=dtype: t.to(d) if t.is_floating_point() else t,
                            (h, tasks))
            setting = (problem, *cast, reference, solver)
            for scheme in SCHEMES:
                auto, auto_nu = _error_against(setting, "auto", scheme)
                best, best_nu = min(_error_against(setting, 10 ** (k / 2), scheme)
                                    for k in range(-24, 1))
                out.setdefault(activation, {}).setdefault(str(dtype)[6:], {})[scheme] = [
                    float(f"{auto:.2g}"), float(f"{auto_nu:.2g}"), float(f"{best:.2g}"),
                    float(f"{best_nu:.2g}")]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the constants k_p over FAMILY instead (JSON)")
    parser.add_argument("--sinusoid", action="store_true",
                        help="auto against the best nu on the sinusoid MLP instead (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sinusoid:
        print(json.dumps({"cells": "[auto error, auto nu, best grid error, best grid nu]"}
                         | sinusoid(), indent=1))
        return
    if args.calibrate:
        print(json.dumps({"with T": calibrate(), "without T (T = S)": calibrate(1.0)},
                         indent=1))
        return
    results = cells()
    print("auto nu / best grid nu (* best at the grid's edge):\n")
    print(table(results, nu_ratio))
    print("\nrelative error: auto (best over the grid):\n")
    print(table(results, lambda auto, _, best, *rest: f"{auto:.1e} ({best:.1e})"))
    print("\nauto's error over the best grid error:\n")
    print(table(results, ratio))
    print("\nold rule (nu=\"eps\", eps^(1/(p+1)) alone), relative error (inf: diverged):\n")
    print(table(results, lambda *cell: f"{cell[4]:.1e}"))
    worst = max(max(r[1] / abs(r[3]), abs(r[3]) / r[1]) if r[1] else math.inf
                for r in results.values())
    print(f"\nworst factor between auto nu and best nu: {worst:.2g}")
    for dtype in DTYPES:
        for scheme in SCHEMES:
            cells_ = [results[dtype, scheme, scale] for scale in SCALES]
            print(f"worst error ratio, {str(dtype)[6:]} {scheme}: "
                  f"{max(c[0] / c[2] for c in cells_):.2g}")


if __name__ == "__main__":
    main()
