"""The `bilevel` command line. It parses arguments and dispatches to `bilevel.config`;
every mistake in a config or an argument is one message on stderr and exit status 2.

    bilevel run CONFIG [--set key.path=value ...] [--out DIR] [--resume]
    bilevel compare CONFIG [--set ...] [--out DIR] [--storage URL] [--only optuna|bilevel]
    bilevel validate CONFIG [--set ...]
    bilevel gradcheck CONFIG [--set ...] [--methods a,b] [--reference exact|closed-form]
    bilevel show RUN_DIR
    bilevel schema [--markdown]
    bilevel list
    bilevel --version
"""

import argparse
import json
import sys

from bilevel import __version__, config
from bilevel.blocks import losses, models, sources
from bilevel.errors import BilevelError, DivergenceError, RunWriteError
from bilevel.estimators import estimators
from bilevel.gradcheck import gradcheck_table
from bilevel.problem import problems
from bilevel.regularizers import regularizers
from bilevel.solvers import solvers
from bilevel.training.hyperfile import describe
from bilevel.training.optimizers import optimizers, schedules

REGISTRIES = (problems, sources, models, losses, estimators, solvers, regularizers, optimizers,
              schedules)


def list_units(args) -> int:
    for registry in REGISTRIES:
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    return 0


def print_schema(args) -> int:
    if args.markdown:
        from bilevel.config.reference import markdown

        print(markdown(), end="")
    else:
        print(json.dumps(config.json_schema(), indent=2))
    return 0


def run(args) -> int:
    result = config.run(config.load_config(args.config, args.set), out=args.out,
                        resume=args.resume)
    summary = result.summary
    print(f"{summary['status']}: {summary['steps_completed']} steps in {result.run_dir}")
    last = summary["last"] or {}
    numbers = {k: v for k, v in last.items() if k in ("loss", "eval_val_loss", "eval_accuracy")}
    numbers |= summary.get("test", {})
    if numbers:
        print("  ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
    return 0


def compare(args) -> int:
    from bilevel.compare import compare as run_comparison  # Optuna loads only when used
    from bilevel.compare.report import markdown

    record = run_comparison(config.load_config(args.config, args.set), out=args.out,
                            storage=args.storage, only=args.only, worker=args.worker)
    print(f"{record['title']}, in {record['directory']}")
    print(markdown(record["table"]), end="")
    return 0


def validate(args) -> int:
    report = config.validate(config.load_config(args.config, args.set))
    print(f"{args.config}: valid. {report['problem']} with "
          f"{len(report['hyperparameters'])} hyperparameter tensor(s); one hypergradient took "
          f"{report['seconds']:.2f} s (val_loss {report['val_loss']:.4g}, norm "
          f"{report['hypergradient_norm']:.3g})")
    return 0


def gradcheck(args) -> int:
    loaded = config.load_config(args.config, args.set)
    methods = None if args.methods is None else [m for m in args.methods.split(",") if m]
    rows = config.check_gradients(loaded, methods=methods, reference=args.reference,
                                  repeats=args.repeats)
    resolved = loaded.resolved
    print(f"{args.config}: {resolved['tasks_per_step']} tasks, solver {resolved['solver']}, "
          f"{resolved['dtype']}; reference: {args.reference}")
    print(gradcheck_table(rows))
    return 0


def show(args) -> int:
    print(describe(args.run_dir))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bilevel", description=__doc__.split("\n\n")[0])
    top.add_argument("--version", action="version", version=f"bilevel {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    def with_config(name, help):
        command = commands.add_parser(name, help=help)
        command.add_argument("config", help="the run's YAML file")
        command.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                             help="override a key (value read as YAML); repeatable")
        return command

    command = with_config("run", "meta-train as a config says")
    command.add_argument("--out", help="run directory (default: the config's out, else "
                         "runs/<config name>)")
    command.add_argument("--resume", action="store_true",
                         help="continue the run in the run directory from its checkpoint")
    command = with_config("compare", "the bilevel method against Optuna on the config's "
                                     "search block: same problem, same budget")
    command.add_argument("--out", help="run directory (default: the config's out, else "
                         "runs/<config name>)")
    command.add_argument("--storage", help="an Optuna storage URL shared by workers (default: "
                         "search.storage, else sqlite:///<run dir>/study.db)")
    command.add_argument("--only", choices=["both", "bilevel", "optuna"], default="both",
                         help="run one side (workers sharing a study: optuna)")
    command.add_argument("--worker", type=int, default=0,
                         help="this worker's index: offsets its sampler's seed")
    with_config("validate", "check a config without training: keys, types, files, and one "
                            "hypergradient")
    command = with_config("gradcheck", "every estimator against a reference on a config's "
                                       "problem")
    command.add_argument("--methods", help="comma-separated estimator names (default: all)")
    command.add_argument("--reference", choices=["exact", "closed-form"], default="exact")
    command.add_argument("--repeats", type=int, default=3, help="timed runs per estimator")
    command = commands.add_parser("show", help="a run's status, final metrics and learned "
                                               "hyperparameters")
    command.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    command = commands.add_parser("schema", help="the JSON Schema of run configs, for editors")
    command.add_argument("--markdown", action="store_true",
                         help="the reference of every key instead (docs/config.md)")
    commands.add_parser("list", help="registered problems, blocks, estimators, solvers, "
                                     "regularisers, outer optimizers and schedules")
    return top


COMMANDS = {"run": run, "compare": compare, "validate": validate, "gradcheck": gradcheck,
            "show": show, "schema": print_schema, "list": list_units}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DivergenceError, RunWriteError) as error:  # the run stopped: status 1
        print(f"bilevel {args.command}: stopped: {error}", file=sys.stderr)
        return 1
    except BilevelError as error:
        print(f"bilevel {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
