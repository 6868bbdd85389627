"""Open registries that map a name (as written in Python or YAML) to a unit.

A unit is usually a frozen dataclass whose fields are its options; `build`
turns a name and options into an instance and rejects unknown names or options
with a message that lists the valid ones.
"""

import dataclasses

from bilevel.errors import BilevelError


class Registry:
    """A name -> object table for one kind of unit ("estimator", "solver", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict = {}

    def register(self, name: str):
        """Decorator: `@estimators.register("fo-bmaml")`."""

        def add(obj):
            if name in self._entries:
                raise BilevelError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str):
        if name not in self._entries:
            raise BilevelError(
                f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def build(self, name: str, options: dict, *, argument: str = "options"):
        """Instantiate the dataclass registered as `name` with `options`."""
        cls = self.get(name)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise BilevelError(
                f"{argument}: unknown option(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"valid options are {', '.join(sorted(valid)) or '(none)'}"
            )
        return cls(**options)
