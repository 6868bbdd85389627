"""A validated config to the objects a run needs: the problem, the solver, the estimator
and outer-optimizer specs. Mistakes found only now (a data file that is missing, a
problem argument its class rejects) are ConfigErrors at the key that caused them."""

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

import torch

from bilevel.blocks import ComposedProblem, models, sources
from bilevel.config.load import Config
from bilevel.devices import resolve_device, resolve_dtype, threads
from bilevel.errors import BilevelError
from bilevel.problem import BilevelProblem, problems
from bilevel.training.spec import OPTIONS, RunSpec


@dataclasses.dataclass(frozen=True)
class Built:
    """What `meta_train` and the other commands take, built from one config: the problem
    and the run's options, resolved (`bilevel.training.spec.RunSpec`)."""

    problem: BilevelProblem
    spec: RunSpec
    device: torch.device
    dtype: torch.dtype


def build(config: Config) -> Built:
    """The objects of `config`; also sets torch's thread count to its `threads`."""
    resolved = config.resolved
    try:
        torch.set_num_threads(threads(resolved["threads"]))
    except BilevelError as error:
        raise config.error(str(error), ("threads",)) from None
    try:
        device = resolve_device(resolved["device"])
    except BilevelError as error:
        raise config.error(str(error), ("device",)) from None
    dtype = resolve_dtype(resolved["dtype"])
    problem = build_problem(config, dtype, device)
    spec = RunSpec(**{key: resolved[key] for key in OPTIONS})
    try:  # the optimizer's own checks (torch's "Invalid momentum value", ...) on a stand-in
        spec.outer.check()
    except BilevelError as error:
        raise config.error(str(error), ("outer",)) from None
    return Built(problem, spec, device, dtype)


def build_problem(config: Config, dtype, device) -> BilevelProblem:
    """The config's problem; one that cannot be allocated (a size of 1e12 somewhere in its
    block) is a ConfigError at `problem` saying how much it asked for."""
    try:
        return _problem(config, dtype, device)
    except RuntimeError as error:  # torch.OutOfMemoryError too
        asked = re.search(r"tried to allocate ([\d.]+ ?\w*)", str(error))
        if asked is None and not isinstance(error, torch.OutOfMemoryError):
            raise
        amount = f" ({asked.group(1)})" if asked else ""
        raise config.error(f"building the problem needs more memory than {device} has"
                           f"{amount}: one of its sizes is too large", ("problem",)) from None


def _problem(config: Config, dtype, device) -> BilevelProblem:
    spec = config.resolved["problem"]
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "python" in spec:
        return _python_problem(config, spec, dtype, device)
    if "source" in spec:
        return _composed_problem(config, spec, dtype, device)
    options = {k: v for k, v in spec.items() if k != "name"}
    return _construct(config, problems.get(spec["name"]), options, dtype, device, ("problem",))


def _construct(config, cls, options, dtype, device, path):
    """cls(**options), with dtype and device where its constructor takes them; its own
    BilevelError names the argument, which becomes the key path."""
    accepted = inspect.signature(cls).parameters
    extra = {k: v for k, v in (("dtype", dtype), ("device", device)) if k in accepted}
    try:
        return cls(**options, **extra)
    except BilevelError as error:
        raise config.error(str(error), path + _named_option(str(error), options)) from None
    except TypeError as error:
        raise config.error(f"{cls.__name__}: {error}", path) from None


def _named_option(message: str, options: dict) -> tuple:
    first = message.split(" ", 1)[0].rstrip(":")
    return (first,) if first in options else ()


@contextlib.contextmanager
def _importable(folder: Path):
    sys.path[:0] = [str(folder), str(Path.cwd())]
    try:
        yield
    finally:
        del sys.path[:2]


def _python_problem(config, spec, dtype, device):
    module_name, _, attribute = spec["python"].partition(":")
    path = ("problem", "python")
    with _importable(config.folder):
        try:
            target = importlib.import_module(module_name)
        except ImportError as error:
            raise config.error(f"cannot import module {module_name!r}: {error}", path) from None
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise config.error(f"module {module_name!r} has no {attribute!r}", path)
            target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, BilevelProblem)):
        raise config.error(f"{spec['python']!r} is not a bilevel.BilevelProblem subclass", path)
    return _construct(config, target, spec["args"], dtype, device, ("problem", "args"))


def _composed_problem(config, spec, dtype, device):
    source_spec = dict(spec["source"])
    if "path" in source_spec:  # data files are relative to the config's folder
        source_spec["path"] = str(config.folder / source_spec["path"])
    source = sources.from_spec(source_spec, argument="problem.source")
    model = models.from_spec(spec["model"], argument="problem.model")
    options = {k: v for k, v in spec.items() if k not in ("source", "model")}
    try:
        return ComposedProblem(source, model, **options, dtype=dtype, device=device)
    except BilevelError as error:
        message = str(error)
        model_spec = spec["model"] if isinstance(spec["model"], dict) else {}
        if where := _named_option(message, source_spec):
            path = ("problem", "source", *where)
        elif where := _named_option(message, model_spec):
            path = ("problem", "model", *where)  # an option checked against the data
        else:
            path = ("problem", *_named_option(message, options))
        raise config.error(message, path) from None
