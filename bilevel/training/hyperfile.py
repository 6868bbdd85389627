"""hyper.json: the learned hyperparameters of a run, readable without torch, and the text
of `bilevel show RUN_DIR`.

    {"step": 100,                                   the checkpoint's step
     "h": {"theta": {"w": {"shape": [3], "dtype": "float32", "value": [0.1, ...]}},
           "log_lam": {"shape": [], "dtype": "float32", "value": -2.3}},
     "lam": {"shape": [], "dtype": "float32", "value": 0.1}}    exp(log_lam), where h has one

Every leaf of h as nested lists (`Tensor.tolist()`) with its shape and dtype; "lam" has the
structure of h["log_lam"]. `bilevel.training.rundir` writes it from the checkpoint when
the run stops, so it never disagrees with checkpoint.pt; numbers follow `bilevel.strict_json`.
"""

import json
import math
from pathlib import Path

import torch

from bilevel import strict_json
from bilevel.errors import RunDirectoryError
from bilevel.training import checkpoint
from bilevel.tree import tree_map

FILENAME = "hyper.json"
SHOWN = 6  # a leaf with more values is summarised by `describe`


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        tensor = tree.detach().cpu()
        return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
                "value": tensor.tolist()}
    return {key: _leaves(value) for key, value in tree.items()}


def hyper_record(h: dict, step: int) -> dict:
    """The content of hyper.json for hyperparameters `h` at `step`."""
    record = {"step": step, "h": _leaves(h)}
    if "log_lam" in h:
        record["lam"] = _leaves(tree_map(torch.exp, h["log_lam"]))
    return record


def hyper_text(h: dict, step: int) -> str:
    """hyper.json's text (strict JSON) for `h` at `step`: indented, each leaf's shape and
    values on one line each."""
    record, values = hyper_record(h, step), []

    def hold(node):
        if _is_leaf(node):
            values.extend(strict_json.dumps(node[key]) for key in ("shape", "value"))
            return node | {"shape": f"@{len(values) - 2}@", "value": f"@{len(values) - 1}@"}
        return {key: hold(value) for key, value in node.items()} if isinstance(node, dict) else node

    text = strict_json.dumps(hold(record), indent=2)
    for index, value in enumerate(values):
        text = text.replace(f'"@{index}@"', value, 1)
    return text + "\n"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunDirectoryError(f"{path} is not readable JSON: {error}") from None


def _is_leaf(node) -> bool:
    return isinstance(node, dict) and set(node) == {"shape", "dtype", "value"}


def _walk(node, prefix=""):
    if _is_leaf(node):
        yield prefix, node
        return
    for key, value in node.items():
        yield from _walk(value, f"{prefix}.{key}" if prefix else key)


def _flat(value) -> list:
    return [x for item in value for x in _flat(item)] if isinstance(value, list) else [value]


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _leaf_text(leaf: dict) -> str:
    values = [float(v) for v in _flat(leaf["value"])]  # "NaN" / "Infinity" read back too
    shape = "x".join(map(str, leaf["shape"])) or "scalar"
    if len(values) <= SHOWN:
        return f"{shape:<10} " + ", ".join(f"{v:.6g}" for v in values)
    finite = [v for v in values if math.isfinite(v)]
    text = f"{shape:<10} {len(values)} values"
    if finite:
        mean = sum(finite) / len(finite)
        norm = math.sqrt(sum(v * v for v in finite))
        text += (f": min {min(finite):.4g}, mean {mean:.4g}, max {max(finite):.4g}, "
                 f"norm {norm:.4g}")
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} not finite)"
    return text


def describe(directory) -> str:
    """What `bilevel show` prints: the run's status and final metrics (summary.json, test.json)
    and its learned hyperparameters (hyper.json, else the checkpoint), big leaves summarised.
    A file that is not as a run writes it (edited, truncated) is a RunDirectoryError naming
    it, never a traceback."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file" if directory.exists() else "no such directory"
        raise RunDirectoryError(f"{directory} is not a run directory ({what})")
    lines = []
    summary_path = directory / "summary.json"
    if summary_path.is_file():
        lines += _shown(summary_path, lambda summary: _summary_lines(directory, summary))
    else:
        lines.append(f"{directory}: no summary.json (running, or killed before it stopped)")
    if (directory / "test.json").is_file():
        lines += _shown(directory / "test.json", lambda test: ["test:", *(
            f"  {k:<28} {_number(v)}" for k, v in test.items())])
    path = directory / FILENAME
    if path.is_file():
        lines += _shown(path, _hyper_lines)
    elif (directory / checkpoint.FILENAME).is_file():
        saved = checkpoint.load(directory)
        lines += _hyper_lines(hyper_record(saved["h"], saved["step"]))
    else:
        raise RunDirectoryError(f"{directory} holds neither {FILENAME} nor "
                                f"{checkpoint.FILENAME}: no hyperparameters to show")
    return "\n".join(lines)


def _shown(path: Path, lines) -> list[str]:
    """lines(the JSON in `path`); a RunDirectoryError naming the file where its content is
    not what a run writes (a key missing, a list for an object, a word for a number)."""
    try:
        return list(lines(_read_json(path)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunDirectoryError(f"{path} is not as a run writes it ({type(error).__name__}: "
                                f"{error}); it was edited or damaged") from None


def _summary_lines(directory: Path, summary: dict) -> list[str]:
    lines = [f"{directory}: {summary['status']} after {summary['steps_completed']} steps"
             + (f" ({summary['message']})" if summary.get("message") else "")]
    last = {k: v for k, v in (summary.get("last") or {}).items() if k != "step"}
    return lines + [f"  {k:<28} {_number(v)}" for k, v in last.items()]


def _hyper_lines(record: dict) -> list[str]:
    lines = [f"hyperparameters (step {record['step']}):"]
    lines += [f"  {name:<28} {_leaf_text(leaf)}" for name, leaf in _walk(record["h"])]
    if "lam" in record:
        lines += [f"  {name:<28} {_leaf_text(leaf)}" for name, leaf in _walk(record["lam"], "lam")]
    return lines
