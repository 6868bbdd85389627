"""Open registries that map a name (as written in Python or YAML) to a unit.

A unit is usually a frozen dataclass whose fields are its options; `build`
turns a name and options into an instance and rejects unknown names or options
with a message that lists the valid ones.
"""

import inspect
from importlib.metadata import EntryPoint, entry_points

from bilevel.errors import InvalidInputError


def name_and_options(spec, argument: str) -> tuple[str, dict]:
    """A unit given as its registered name or as {"name": ..., **options} (the one spec
    form of Python arguments and YAML keys)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        options = dict(spec)
        return options.pop("name"), options
    raise InvalidInputError(f"{argument} must be a name or a dict with a 'name' key, got {spec!r}")


class Registry:
    """A name -> object table for one kind of unit ("estimator", "solver", ...).

    entry_points: an entry-point group (`[project.entry-points."<group>"]` in a package's
    pyproject.toml) whose entries are added, loaded on first use, beside the registered
    ones: how packages above the library (this repository's problems/, a user's own
    package) contribute units without the library importing them.
    """

    def __init__(self, kind: str, entry_points: str | None = None):
        self.kind = kind
        self._entries: dict = {}
        self._group = entry_points
        self._declared: dict[str, EntryPoint] | None = None  # read once

    def register(self, name: str):
        """Decorator: `@estimators.register("fo-bmaml")`."""

        def add(obj):
            if name in self._entries:
                raise InvalidInputError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def _entry_points(self) -> dict:
        if self._declared is None:
            group = entry_points(group=self._group) if self._group else ()
            self._declared = {point.name: point for point in group}
        return self._declared

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._entry_points()))

    def get(self, name: str):
        if name not in self._entries and name in self._entry_points():
            self._entries[name] = self._entry_points()[name].load()
        if name not in self._entries:
            raise InvalidInputError(
                f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def check_options(self, name: str, options: dict, *, argument: str = "options",
                      supplied: int = 0) -> None:
        """`options` must be keyword parameters of the unit registered as `name`, and every
        required one must be given; `supplied`: how many leading parameters the caller
        passes itself (1 for an optimizer's params, a schedule's optimizer)."""
        parameters = list(inspect.signature(self.get(name)).parameters.values())[supplied:]
        valid = {p.name for p in parameters
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise InvalidInputError(
                f"{argument}: unknown option(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"valid options are {', '.join(sorted(valid)) or '(none)'}"
            )
        missing = [p.name for p in parameters
                   if p.name in valid and p.default is p.empty and p.name not in options]
        if missing:
            raise InvalidInputError(
                f"{argument}: {self.kind} {name!r} needs option(s) {', '.join(missing)}")

    def build(self, name: str, options: dict, *, argument: str = "options"):
        """Instantiate the unit registered as `name` with `options` (`check_options`)."""
        self.check_options(name, options, argument=argument)
        return self.get(name)(**options)

    def name_of(self, unit) -> str | None:
        """The name under which `unit` (a registered class or an instance of one) is
        registered, or None: how a record names the unit an object came from."""
        cls = unit if isinstance(unit, type) else type(unit)
        return next((name for name in self.names() if self.get(name) is cls), None)

    def from_spec(self, spec, *, argument: str):
        """Build a unit given as `name` or {"name": ..., **options} (`name_and_options`)."""
        name, options = name_and_options(spec, argument)
        return self.build(name, options, argument=argument)
