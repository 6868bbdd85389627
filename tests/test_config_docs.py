"""docs/config.md is the schema's own reference (it cannot drift), and the layers stay
one-way: nothing in bilevel/ imports a layer above it, or problems/."""

import ast
from pathlib import Path

from bilevel.config.reference import markdown
from bilevel.config.schema import documented_args

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a module may import its own layer and those below it.
LAYERS = [
    {"errors", "checks", "registry", "tree", "devices", "info", "compiled", "strict_json"},
    {"problem", "problem_checks", "problem_view", "solvers", "regularizers", "inner", "blocks"},
    {"estimators", "hypergradient", "gradcheck"},
    {"training", "testing"},
    {"config"},
    {"compare"},
    {"cli"},
]


def test_config_reference_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == markdown(), (
        "docs/config.md is stale: run `bilevel schema --markdown > docs/config.md`")


def test_every_unit_option_is_typed_and_has_a_meaning():
    """In the sections of registered units (problems by name, sources, models, solvers,
    methods), no option row is typed `any` or has an empty meaning column."""
    text = markdown()
    units = text[text.index("## Problems by name"):]
    rows = [line for line in units.splitlines() if line.startswith("| `")]
    assert len(rows) > 50  # the sections are there
    bare = [row for row in rows if row.endswith("|  |") or "| any |" in row]
    assert not bare, "\n".join(bare)


def test_documented_args_reads_an_args_section():
    doc = "Title.\n\nArgs:\n    a: the first\n        continued\n    b: the second\n\nMore."
    assert documented_args(doc) == {"a": "the first continued", "b": "the second"}
    assert documented_args("No section.") == {}


def layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("bilevel.") else module
    return next(rank for rank, names in enumerate(LAYERS) if top in names)


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bilevel":  # from bilevel import checks: the submodule
                yield from (f"bilevel.{alias.name}" for alias in node.names
                            if (ROOT / "bilevel" / f"{alias.name}.py").exists()
                            or (ROOT / "bilevel" / alias.name).is_dir())
            else:
                yield node.module


def test_layers_are_one_way():
    wrong = []
    for path in sorted((ROOT / "bilevel").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2:
            continue  # the package's facade re-exports every layer
        here = layer(".".join(parts))
        for name in imports(path):
            if name == "problems" or name.startswith("problems."):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.startswith("bilevel.") and layer(name) > here:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}, a higher layer")
    assert not wrong, "\n".join(wrong)
