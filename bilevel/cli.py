"""The `bilevel` command line: `bilevel list` and `bilevel gradcheck --problem quadratic`.
`run`, `compare`, `validate` and a YAML-driven `gradcheck` (DESIGN section 4) arrive with
configs."""

import argparse
import sys

import torch

from bilevel.errors import BilevelError
from bilevel.estimators import estimators
from bilevel.regularizers import regularizers
from bilevel.solvers import GD, solvers
from bilevel.training.optimizers import optimizers, schedules


def list_units(args) -> int:
    for registry in (estimators, solvers, regularizers, optimizers, schedules):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    return 0


def run_gradcheck(args) -> int:
    """Every estimator on the paper's quadratic (float64), against its closed-form
    hypergradient, with GD at lr = 1 / (kappa + lam), a safe step for every task."""
    from bilevel.gradcheck import gradcheck, gradcheck_table
    from problems.quadratic import Quadratic  # the library does not import problems/

    problem = Quadratic(dim=args.dim, kappa=args.kappa, lam=args.lam, n_tasks=args.tasks,
                        distinct_val=True, seed=args.seed)
    h = problem.init_hyper(torch.Generator().manual_seed(args.seed))
    tasks = problem.all_tasks()
    solver = GD(lr=1 / (problem.kappa + problem.lam_init), steps=args.steps)
    methods = None if args.methods is None else [m for m in args.methods.split(",") if m]
    reference = problem.meta_gradient(h, tasks) if args.reference == "closed-form" else "exact"
    rows = gradcheck(problem, h, tasks, solver=solver, methods=methods, reference=reference,
                     repeats=args.repeats)
    print(f"quadratic: dim={args.dim} kappa={args.kappa:g} lam={args.lam:g} tasks={args.tasks} "
          f"GD steps={args.steps} lr={solver.lr:.3g}; reference: {args.reference}")
    print(gradcheck_table(rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bilevel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered estimators, solvers, regularisers, outer "
                                     "optimizers and schedules")
    check = commands.add_parser("gradcheck", help="every estimator against a reference")
    check.add_argument("--problem", choices=["quadratic"], default="quadratic")
    check.add_argument("--dim", type=int, default=10)
    check.add_argument("--kappa", type=float, default=10.0, help="condition number of A_i")
    check.add_argument("--lam", type=float, default=1.0)
    check.add_argument("--tasks", type=int, default=8)
    check.add_argument("--steps", type=int, default=100, help="inner GD steps")
    check.add_argument("--methods", help="comma-separated estimator names (default: all)")
    check.add_argument("--reference", choices=["closed-form", "exact"], default="closed-form")
    check.add_argument("--repeats", type=int, default=3, help="timed runs per estimator")
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return {"list": list_units, "gradcheck": run_gradcheck}[args.command](args)
    except BilevelError as error:
        print(f"bilevel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
