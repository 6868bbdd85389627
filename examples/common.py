"""What the example scripts share: their command line and where their results go."""

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def example_parser(doc: str, name: str, quick_help: str = "a few steps"):
    """--quick, --device, --seed and --out; each script adds its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"folder for {name}.md/.json "
                        "(default docs/results; none with --quick)")
    return parser


def parse(parser, argv, **quick):
    """Parse argv; with --quick apply the `quick` settings, else --out defaults to
    docs/results."""
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(quick)
    elif args.out is None:
        args.out = REPO / "docs" / "results"
    return args


def save(args, name: str, markdown: str, results) -> None:
    """<out>/<name>.md (the generated table) and <name>.json (settings and raw numbers)."""
    if args.out is None:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(markdown)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick")}
    (args.out / f"{name}.json").write_text(
        json.dumps({"settings": settings, "results": results}, indent=2))
