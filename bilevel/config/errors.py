"""`ConfigError`: a mistake in a config, placed by file, key path and line."""

from bilevel.errors import InvalidInputError


def dotted(path) -> str:
    """("solver", "lr") -> "solver.lr"; list indices as [i]."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class ConfigError(InvalidInputError):
    """`file:line:column: key.path: message` (each part where known)."""

    def __init__(self, message: str, *, file: str | None = None, path=(), where=None):
        self.file, self.path, self.where, self.message = file, tuple(path), where, message
        place = file or ""
        if file and where:
            place += f":{where[0]}:{where[1]}"
        key = dotted(self.path)
        parts = [p for p in (place, key) if p]
        super().__init__(": ".join([*parts, message]))
