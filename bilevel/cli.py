"""The `bilevel` command line. Today: `bilevel list`; `run`, `compare`, `gradcheck`
and `validate` (DESIGN section 4) arrive with configs."""

import argparse
import sys

from bilevel.estimators import estimators
from bilevel.regularizers import regularizers
from bilevel.solvers import solvers


def list_units(args) -> int:
    for registry in (estimators, solvers, regularizers):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bilevel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered estimators, solvers and regularisers")
    args = parser.parse_args(argv)
    return {"list": list_units}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
