"""The `search` block of a run config: what `bilevel compare` searches with Optuna, beside
the bilevel method, and on what budget. Models only (the config layer imports no Optuna).

    search:
      budget: {inner_grad_evals: 200000}    # or {seconds: 60}; each side gets the same
      sampler: tpe                          # tpe | random | cmaes | sep-cmaes | gp
      pruner: none                          # none | median | hyperband (hybrid trials)
      space:                                # leaves of h fixed by Optuna in each trial
        log_lam: {low: -8, high: 2}
      config:                               # config keys searched by Optuna (the hybrid)
        solver.steps: {low: 50, high: 400, type: int}
        method.name: {choices: [fo-bmaml, fomaml]}
      storage: null                         # default sqlite:///<run dir>/study.db

A leaf of h (or a subtree: every leaf under it) in `space` is fixed by each trial: one
value broadcast over its coordinates, or one per coordinate (`per_coordinate: true`).
The leaves of h that `space` leaves out are meta-trained in every trial (the hybrid).
`run` ignores this block.
"""

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from bilevel.config.strict import Strict

Sampler = Literal["tpe", "random", "cmaes", "sep-cmaes", "gp"]
Pruner = Literal["none", "median", "hyperband"]


class Budget(Strict):
    """The cost each side may spend: inner gradient evaluations (Hessian-vector products
    and the inner solves of validation included) or wall seconds; exactly one."""

    inner_grad_evals: int | None = Field(None, ge=1, description="inner gradient "
                                         "evaluations (+ Hessian-vector products)")
    seconds: float | None = Field(None, gt=0, description="wall-clock seconds")

    @model_validator(mode="after")
    def _one_unit(self):
        if (self.inner_grad_evals is None) == (self.seconds is None):
            raise ValueError("give exactly one of inner_grad_evals and seconds, got "
                             f"inner_grad_evals={self.inner_grad_evals!r}, "
                             f"seconds={self.seconds!r}")
        return self


class Range(Strict):
    """A searched number: `low <= x <= high` on a linear or log scale."""

    low: float = Field(description="smallest value")
    high: float = Field(description="largest value")
    scale: Literal["linear", "log"] = Field("linear", description="sampled uniformly in x "
                                            "(linear) or in log x (log)")
    type: Literal["float", "int"] = Field("float", description="float or int")
    per_coordinate: bool = Field(False, description="for a leaf of h: one value per "
                                 "coordinate instead of one broadcast over them")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low < high must hold, but got (low={self.low}, "
                             f"high={self.high})")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got low={self.low}")
        if self.type == "int" and math.ceil(self.low) > math.floor(self.high):
            raise ValueError(f"type int needs an integer in [low, high], but there is none "
                             f"in [{self.low}, {self.high}]")
        return self


class Choices(Strict):
    """A searched categorical value: one of `choices` (any YAML values)."""

    choices: list[Any] = Field(min_length=1, description="the values to choose from")


class Search(Strict):
    """What `bilevel compare` searches with Optuna beside the bilevel method, on one budget."""

    budget: Budget = Field(description="what each side may spend")
    sampler: Sampler = Field("tpe", description="Optuna's sampler: TPE, random, CMA-ES, "
                                       "separable CMA-ES (a diagonal covariance; both need "
                                       "the cmaes package) or Gaussian process")
    pruner: Pruner = Field("none", description="stops bad hybrid trials early "
                                     "(their intermediate validation losses)")
    space: dict[str, Range] = Field({}, description="leaves of h (by dotted path) that each "
                                    "trial fixes; the others are meta-trained in each trial")
    config: dict[str, Range | Choices] = Field({}, description="config keys (by dotted path) "
                                               "that each trial sets")
    storage: str | None = Field(None, description="an Optuna storage URL (default "
                                "sqlite:///<run dir>/study.db)")

    @model_validator(mode="after")
    def _something(self):
        if not self.space and not self.config:
            raise ValueError("search needs at least one key in space or config")
        for key, value in self.config.items():
            if isinstance(value, Range) and value.per_coordinate:
                raise ValueError(f"config.{key}: per_coordinate is for leaves of h only")
        return self
