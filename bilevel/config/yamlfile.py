"""Reading a YAML config: PyYAML's safe loader only, with the line and column of every key.

YAML 1.1 reads `1e-3` as a string (its floats need a dot); configs mean a number, so the
loader also resolves exponent-only floats. A key given twice is an error (PyYAML keeps the
last one silently). Aliases are expanded nowhere but counted: a document whose aliases
expand to more than MAX_NODES values (a "billion laughs" file: nine lines, 10^9 values) is
refused before anything walks or validates it. The file must be a regular UTF-8 file (a
FIFO or a device would block the read).
"""

import re
from pathlib import Path

import yaml

from bilevel.checks import not_regular
from bilevel.config.errors import ConfigError

# A config has tens of values; sweeps and searched spaces hundreds. Far more is an error.
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse(text: str, source: str) -> tuple[object, dict]:
    """(data, marks): the document's value and {key path (tuple): (line, column)}, 1-based."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        marks: dict = {}
        if node is not None:
            _walk(node, (), marks, source, [MAX_NODES])
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = (mark.line + 1, mark.column + 1) if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"not valid YAML: {problem}", file=source, where=where) from None
    return data, marks


def _walk(node, path: tuple, marks: dict, source: str, budget: list) -> None:
    """Record the line of every key path; `budget`: [values left], MAX_NODES at the top."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"the document expands to more than {MAX_NODES:,} values (through "
                          "aliases, *name); a config needs far fewer", file=source,
                          where=(node.start_mark.line + 1, node.start_mark.column + 1))
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice", file=source, path=path + (key,),
                                  where=(key_node.start_mark.line + 1,
                                         key_node.start_mark.column + 1))
            seen.add(key)
            _walk(value_node, path + (key,), marks, source, budget)
            marks[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), marks, source, budget)


def read(path) -> tuple[object, dict]:
    """Parse the YAML file at `path`; a missing, unreadable or not regular file (a FIFO, a
    device) or one not in UTF-8 is a ConfigError."""
    path = Path(path)
    try:
        kind = not_regular(path)
        if kind is not None:
            raise ConfigError(f"cannot read the config: it is {kind}, not a regular file",
                              file=str(path))
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the config: {error.strerror}", file=str(path)) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read the config: not UTF-8 text (byte {error.start}: "
                          f"{error.reason})", file=str(path)) from None
    return parse(text, str(path))


def scalar(text: str):
    """A `--set key=value` value, read as YAML (so 3, 1e-3, true, [1, 2] and {a: 1} work),
    its aliases limited as a file's."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            _walk(node, (), {}, f"--set value {text[:40]!r}", [MAX_NODES])
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
