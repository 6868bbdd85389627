"""nu="auto" against the best nu of a half-decade grid, with val_loss multiplied by a scale.

The quadratic (problems/quadratic.py, distinct_val=True, dim 6, kappa 10, lam 1, 3 tasks,
GD lr 1/11, 300 steps), val_loss times s for s in 1e-4 ... 1e4, float32 and float64, every
scheme. Relative error of the hypergradient against the closed form (float64, times s).
A nu whose perturbed solves diverge counts as error inf. The grid: half decades from
1000x below to 1000x above eps^(1/(p+1)) / s, the best step if S were exactly 1 / s
(centred on the truth, not on what auto measured). Prints markdown tables: auto's nu over
the best grid nu; auto's error and the best grid error; the old eps-only rule
(nu="eps") for comparison.

    python benchmarks/auto_nu_scale.py
"""

import argparse
import math

import torch

import bilevel
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


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    results = cells()
    print("auto nu / best grid nu (* best at the grid's edge):\n")
    print(table(results, nu_ratio))
    print("\nrelative error: auto (best over the grid):\n")
    print(table(results, lambda auto, _, best, *rest: f"{auto:.1e} ({best:.1e})"))
    print("\nold rule (nu=\"eps\", eps^(1/(p+1)) alone), relative error (inf: diverged):\n")
    print(table(results, lambda *cell: f"{cell[4]:.1e}"))
    worst = max(max(r[1] / abs(r[3]), abs(r[3]) / r[1]) if r[1] else math.inf
                for r in results.values())
    print(f"\nworst factor between auto nu and best nu: {worst:.2g}")


if __name__ == "__main__":
    main()
