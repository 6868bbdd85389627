"""The run config's schema, as pydantic v2 models built from the registries.

Every unit that a config names (problem, task source, model, solver, estimator) is a
registered class; its options become the fields of one model per name, and the models of
one kind form a union told apart by `name`. So validation and the JSON Schema
(`bilevel schema`) come from the same definitions, and a unit registered by a user
(before the config is read) is as checked as a shipped one. A unit may be written as its
bare name where it needs no options (`method: fo-bmaml`).
"""

import dataclasses
import functools
import inspect
import math
import operator
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    model_validator,
)

from bilevel import checks
from bilevel.blocks import models as model_blocks
from bilevel.blocks import sources
from bilevel.blocks.composed import LAM_SHAPES
from bilevel.blocks.losses import losses
from bilevel.blocks.weighting import WEIGHT_SHAPES
from bilevel.config.search import Search
from bilevel.config.strict import Strict
from bilevel.devices import DTYPES
from bilevel.errors import BilevelError
from bilevel.estimators import estimators
from bilevel.problem import problems
from bilevel.regularizers import regularizers
from bilevel.solvers import solvers
from bilevel.training.hyper_penalty import HyperPenalty
from bilevel.training.optimizers import OuterOptimizer
from bilevel.training.spec import Evaluation, RunSpec
from bilevel.training.warm_start import WarmStart

# Constructor arguments that the run config sets for every problem, not the problem's block.
RUN_LEVEL = ("dtype", "device")


def _name_or_mapping(value):
    """`name` -> {"name": name}: the short form of a unit without options."""
    return {"name": value} if isinstance(value, str) else value


# `bilevel.checks.option` bounds: pydantic's constraint and JSON Schema's keyword.
BOUNDS = (("minimum", "ge", "minimum"), ("maximum", "le", "maximum"),
          ("above", "gt", "exclusiveMinimum"))


def dataclass_fields(cls, types: dict | None = None, *,
                     validate_bounds: bool = True) -> dict[str, Any]:
    """pydantic fields of a dataclass's fields: typed from its hints (or `types`, by name),
    with its defaults, and the meaning and bounds of `bilevel.checks.option` metadata.
    Without `validate_bounds` the bounds are only stated in the JSON Schema, and the
    dataclass's own check (`checks.in_bounds`, when it is built) reports a value out of
    them, in the words the Python API uses."""
    hints, types = typing.get_type_hints(cls), types or {}
    fields = {}
    for field in dataclasses.fields(cls):
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        meta = field.metadata
        annotation = types.get(field.name, hints.get(field.name, Any))
        bounds = {(constraint if validate_bounds else keyword): meta[name]
                  for name, constraint, keyword in BOUNDS if meta.get(name) is not None}
        if bounds and not validate_bounds:
            annotation, bounds = _stated(annotation, bounds), {}
        fields[field.name] = (annotation, Field(
            ... if default is dataclasses.MISSING else default, description=meta.get("doc"),
            **bounds))
    return fields


def _stated(annotation, bounds: dict):
    """`annotation` with JSON Schema's `bounds` on its value's type (not on None's): shown
    in the schema, not validated."""
    stated = Field(json_schema_extra=bounds)
    arguments = typing.get_args(annotation)
    if type(None) in arguments:
        values = tuple(a for a in arguments if a is not type(None))
        return Annotated[functools.reduce(operator.or_, values), stated] | None
    return Annotated[annotation, stated]


def options_model(title: str, cls) -> type[BaseModel]:
    """A model of the dataclass `cls`'s options, whose own checks (in __post_init__) run
    when it is validated, reported at its key path."""
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
    model = create_model(title, __base__=Strict, __doc__=doc, **dataclass_fields(cls))

    def builds(self):
        try:
            cls(**self.model_dump())
        except BilevelError as error:
            raise ValueError(str(error)) from None
        return self

    # pydantic's stub types __validators__ as plain callables; it takes decorated ones.
    validators = {"builds": model_validator(mode="after")(builds)}
    return create_model(title, __base__=model, __doc__=doc,
                        __validators__=validators)  # type: ignore[arg-type]


def documented_args(doc: str) -> dict[str, str]:
    """{argument: meaning} from the `Args:` section of a docstring: one `name: meaning` line
    per argument, indented under it, a meaning continued on more deeply indented lines."""
    lines = doc.split("Args:\n", 1)[1].split("\n\n", 1)[0].splitlines() if "Args:\n" in doc \
        else []
    meanings: dict[str, str] = {}
    indent = None
    for line in lines:
        depth = len(line) - len(line.lstrip())
        name, colon, meaning = line.strip().partition(": ")
        if indent is None or depth <= indent:
            indent = depth
            if colon and name.isidentifier():
                meanings[name] = meaning
        elif meanings:
            last = next(reversed(meanings))
            meanings[last] += " " + line.strip()
    return meanings


def _unit_model(kind: str, name: str, cls, skip=()) -> type[BaseModel]:
    """One model for the unit registered as `name`: a Literal name and its options, typed
    from the dataclass fields or the constructor's signature (Any where unannotated)."""
    fields: dict[str, Any] = {"name": (Literal[name], ...)}
    if dataclasses.is_dataclass(cls):
        fields |= dataclass_fields(cls, validate_bounds=False)
    else:
        meanings = documented_args(inspect.getdoc(cls) or "")
        for parameter in list(inspect.signature(cls).parameters.values()):
            if parameter.name in skip or parameter.kind in (parameter.VAR_POSITIONAL,
                                                            parameter.VAR_KEYWORD):
                continue
            default = parameter.default
            if isinstance(default, range):
                default = list(default)
            elif isinstance(default, tuple):
                default = list(default)
            annotation = Any if parameter.annotation is parameter.empty else parameter.annotation
            fields[parameter.name] = (annotation, Field(
                ... if default is parameter.empty else default,
                description=meanings.get(parameter.name)))
    title = f"{kind} {name}"
    doc = inspect.getdoc(cls) or ""
    return create_model(title.replace(" ", "_").replace("-", "_"), __base__=Strict,
                        __doc__=doc.split("\n\n")[0], **fields)


class _Checked:
    """Mixin for a unit model whose class validates its options in __post_init__ (a
    dataclass): build it once, so those checks report at the unit's key path."""

    registry = None

    @model_validator(mode="after")
    def _builds(self):
        options = self.model_dump(exclude={"name"})
        try:
            self.registry.build(self.name, options, argument=self.registry.kind)
        except (BilevelError, TypeError) as error:
            raise ValueError(str(error)) from None
        return self


def _unit_union(kind: str, registry, checked: bool, skip=()):
    """`name` or {name: ..., options} for every unit in `registry`, told apart by name."""
    members = []
    for name in registry.names():
        model = _unit_model(kind, name, registry.get(name), skip)
        if checked:
            # _Checked is a mixin of models, not itself one as pydantic's stub wants of a base.
            model = create_model(model.__name__, __doc__=model.__doc__,
                                 __base__=(model, _Checked))  # type: ignore[arg-type]
            model.registry = registry  # type: ignore[attr-defined]  # _Checked's
        members.append(model)
    union = functools.reduce(operator.or_, members)
    return Annotated[union, Field(discriminator="name"),
                     BeforeValidator(_name_or_mapping)]


class OuterSpec(BaseModel):
    """The outer optimizer: a `torch.optim` optimizer by lower-case name (or clipped-gd,
    normalized-gd) with its constructor options, `clip` (global norm) and `schedule`."""

    model_config = ConfigDict(extra="allow", validate_default=True, allow_inf_nan=False)
    name: str = Field(description="an optimizer's name (`bilevel list`); its options beside")
    clip: float | None = Field(None, gt=0, description="clip h's gradient to this global norm")
    schedule: str | dict | None = Field(None, description="a learning-rate schedule: name or "
                                                          "{name: ..., options}")

    @model_validator(mode="after")
    def _parses(self):
        for key, value in (self.model_extra or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        try:
            OuterOptimizer.parse(self.model_dump(), "outer").check()
        except BilevelError as error:
            raise ValueError(str(error).removeprefix("outer: ")) from None
        return self


class PythonProblem(Strict):
    """A `BilevelProblem` subclass of the user's: "package.module:ClassName" (importable
    from the working directory or the config's folder) and its constructor arguments."""

    python: str = Field(description="package.module:ClassName")
    args: dict[str, Any] = Field({}, description="the constructor's keyword arguments")

    @model_validator(mode="after")
    def _module_path(self):
        if not re.fullmatch(r"\w+(\.\w+)*:\w+(\.\w+)*", self.python):
            relative = " (a relative module path, with a leading dot, cannot be imported " \
                       "here)" if self.python.startswith(".") else ""
            raise ValueError(f"python must be package.module:ClassName{relative}, got "
                             f"{self.python!r}")
        return self


def _composed_model():
    loss_names = Literal[tuple(losses.names())]

    def key(annotation, default, description):
        return annotation, Field(default, description=description)

    return create_model(
        "ComposedProblem", __base__=Strict,
        __doc__="A problem composed from blocks, with no Python (bilevel.blocks.ComposedProblem).",
        source=key(_unit_union("source", sources, checked=True), ...,
                   "where the tasks come from (`bilevel list`: task sources)"),
        model=key(_unit_union("model", model_blocks, checked=True), ..., "the model f"),
        loss=key(loss_names, "mse", "training loss of the inner problem"),
        val_loss=key(loss_names | None, None, "validation loss of the outer problem "
                                               "(default: loss)"),
        regularizer=key(Literal[tuple(regularizers.names())], "proximal",
                        "proximal: 1/2 (phi - theta)^2; l2: 1/2 phi^2; none"),
        lam=(float, Field(1.0, gt=0, description="the regularisation strength (initial "
                                                  "value when learned)")),
        learn_lam=key(Literal[LAM_SHAPES], "scalar", "how lam is learned, as h['log_lam']: "
                      "fixed (not learned), scalar, per-tensor, per-coordinate, per-feature"),
        theta=key(Literal["learned", "fixed"], "learned",
                  "learned: the adapted parameters' prior and start are h['theta'] "
                  "(meta-learning); fixed: the model's initialisation (hyperparameter tuning)"),
        shared_layers=key(list[int], [], "layer indices shared by every task, learned as "
                                         "h['decoder'] and not adapted (eq. 15)"),
        learn_weights=key(Literal[WEIGHT_SHAPES], "none",
                          "per-example: one learned weight sigmoid(h['example_logit'][i]) per "
                          "training example in the training loss (data hyper-cleaning; needs "
                          "a holdout split)"),
        seed=(int, Field(0, ge=0, le=checks.MAX_SEED,
                         description="seed of the model's initialisation")),
    )


def _problem_kind(value) -> str | None:
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, str):
        return "registered-problem"
    if isinstance(value, dict):
        if "python" in value:
            return "python-problem"
        return "composed-problem" if "source" in value else "registered-problem"
    return None


def run_options() -> dict[str, Any]:
    """The run level of a config: one key per `RunSpec` field, where it is defined (type,
    default, bound, meaning); the units are the registries' unions."""
    optional = {"eval": Evaluation, "warm_start": WarmStart, "hyper_penalty": HyperPenalty}
    types = {"solver": _unit_union("solver", solvers, checked=True),
             "method": _unit_union("method", estimators, checked=True),
             "outer": Annotated[OuterSpec, BeforeValidator(_name_or_mapping)],
             "compile": bool | Literal["strict"]}
    types |= {key: options_model(cls.__name__, cls) | None for key, cls in optional.items()}
    return dataclass_fields(RunSpec, types)


def run_config_model() -> type[BaseModel]:
    """The model of a whole run config, from the registries as they are now: the problem
    and what builds it (device, dtype), the run's options (`run_options`), and where
    (out) and what `compare` searches (search)."""
    # Any: built at run time from the registries, it is a value to a type checker.
    problem: Any = Annotated[
        Annotated[_unit_union("problem", problems, checked=False, skip=RUN_LEVEL),
                  Tag("registered-problem")]
        | Annotated[PythonProblem, Tag("python-problem")]
        | Annotated[_composed_model(), Tag("composed-problem")],
        Discriminator(_problem_kind)]
    dtype_names: Any = Literal[tuple(DTYPES)]
    return create_model(
        "RunConfig", __base__=Strict,
        __doc__="A bilevel run: the problem, how it is solved and meta-trained, where to.",
        problem=(problem, Field(description="a registered problem {name: ..., args}, "
                                            "{python: module:Class, args: {...}}, or one "
                                            "composed from blocks {source: ..., model: ...}")),
        **run_options(),
        device=(str, Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                           description="auto (CUDA where present), cpu, cuda or cuda:N")),
        dtype=(dtype_names, Field("float32", description="float32 or float64")),
        out=(str | None, Field(None, description="run directory (default: "
                                                 "runs/<config name>; --out overrides)")),
        search=(Search | None, Field(None, description="what `bilevel compare` searches with "
                                                      "Optuna, on what budget (`run` ignores "
                                                      "it)")),
    )


def json_schema() -> dict:
    """The JSON Schema of the run config, for editors."""
    schema = run_config_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bilevel run config"
    return schema
