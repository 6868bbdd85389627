"""A config from YAML (or a dict) to a validated, fully resolved record.

`load_config(path, overrides)` reads the file, applies `--set key.path=value` overrides,
validates everything against `schema.run_config_model()` and returns a `Config`: the
validated model, and `resolved`, the plain dict with every default filled in, which a
run directory keeps as config.yaml (the one record of the run).
"""

import copy
import dataclasses
import difflib
import os
from collections.abc import Iterable
from pathlib import Path

import pydantic
from pydantic_core import ErrorDetails

from bilevel.config import yamlfile
from bilevel.config.errors import ConfigError, dotted
from bilevel.config.schema import run_config_model


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated run config. file: where it was read (None for a dict); resolved: every
    key with its value, defaults included; marks: {key path: (line, column)}."""

    file: Path | None
    resolved: dict
    marks: dict = dataclasses.field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Where relative paths in the config (data files, python: modules) are looked up."""
        return Path.cwd() if self.file is None else self.file.resolve().parent

    def recorded_in(self, directory: Path) -> dict:
        """`resolved` as the run directory `directory` records it (its config.yaml): a data
        path given relative (to the config's folder) rewritten relative to `directory`, so
        that the record finds the data from wherever the run directory and the data are
        moved together; an absolute path kept as it is."""
        resolved = copy.deepcopy(self.resolved)
        source = resolved["problem"].get("source") if isinstance(resolved["problem"],
                                                                  dict) else None
        if isinstance(source, dict) and "path" in source and not Path(
                source["path"]).is_absolute():
            source["path"] = os.path.relpath(self.folder / source["path"], directory.resolve())
        return resolved

    def error(self, message: str, path=()) -> ConfigError:
        """A ConfigError at `path`, placed at the closest line the file has for it."""
        return ConfigError(message, file=None if self.file is None else str(self.file),
                           path=path, where=_line(self.marks, path))


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Read, override (`"key.path=value"` strings) and validate the YAML config at `path`."""
    data, marks = yamlfile.read(path)
    return from_dict(data, file=Path(path), marks=marks, overrides=overrides)


def from_dict(data, *, file=None, marks=None, overrides=()) -> Config:
    """Validate a config given as a dict (as `yaml.safe_load` returns it)."""
    source = None if file is None else str(file)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"a config must be a mapping of keys, got {kind}", file=source)
    for override in overrides:
        data = apply_override(data, override, source)
    try:
        model = run_config_model().model_validate(data)
    except pydantic.ValidationError as error:
        raise ConfigError("\n".join(_describe(e, data, marks or {}, source)
                                    for e in error.errors()), file=None) from None
    return Config(None if file is None else Path(file), model.model_dump(mode="json"),
                  marks or {})


def apply_override(data: dict, override: str, source) -> dict:
    """data with `key.path=value` set (value read as YAML); a new dict, `data` untouched."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected key.path=value", file=source)
    path = key.split(".")
    data = copy.deepcopy(data)
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if isinstance(child, str) and depth == 0:  # `solver: gd` -> {name: gd}
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {dotted(path[:depth + 1])} is not a "
                              f"mapping, it is {child!r}", file=source)
        node[part] = child
        node = child
    node[path[-1]] = yamlfile.scalar(text)
    return data


def _line(marks: dict, path) -> tuple | None:
    path = tuple(path)
    while path not in marks and path:
        path = path[:-1]
    return marks.get(path)


def _data_path(loc, data) -> tuple:
    """pydantic's location without its union tags: the keys as written in the config."""
    path, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict | str):
            continue  # a union's tag, such as "gd" (also of `solver: gd`) or "registered-problem"
        else:
            path.append(part)
    return tuple(path)


def _describe(error: ErrorDetails, data, marks, source) -> str:
    """One line for one pydantic error: file:line:col: key.path: what was wrong."""
    path = _data_path(error["loc"], data)
    message = error["msg"].removeprefix("Value error, ")
    context = error.get("ctx") or {}
    if error["type"] == "unknown_key":
        path += (context["key"],)
    elif error["type"] == "union_tag_invalid":
        expected = context["expected_tags"].replace("'", "").split(", ")
        close = difflib.get_close_matches(str(context["tag"]), expected, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown name {context['tag']!r}; {hint}expected one of {', '.join(expected)}"
        path += ("name",) if isinstance(_at(data, path), dict) else ()
    elif error["type"] == "missing":
        path += () if path[-1:] == error["loc"][-1:] else (error["loc"][-1],)
        message = "a required key is missing"
    elif "input" in error and not isinstance(error["input"], dict | list):
        message += f", got {error['input']!r}"
    node = _at(data, path)
    first = message.split(" ", 1)[0].rstrip(":")
    if isinstance(node, dict) and first in node:  # "lr must be > 0" from the unit's own check
        path += (first,)
    return str(ConfigError(message, file=source, path=path, where=_line(marks, path)))


def _at(data, path):
    """The value at `path` in the config as written, or None where there is none."""
    for part in path:
        if not isinstance(data, dict | list) or part not in (data if isinstance(data, dict)
                                                            else range(len(data))):
            return None
        data = data[part]
    return data
