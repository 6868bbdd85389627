"""`RunSpec`: one run of `meta_train`, every choice resolved once into typed objects.

A run option is a field of `RunSpec`, with its type, default, bound and meaning, and is
defined nowhere else: `meta_train`'s keywords build a `RunSpec`; the run level of a YAML
config is derived from its fields (`bilevel.config.schema`); its serialised form,
`RunSpec.record()`, is what a run directory records (settings.json, and the run keys of
config.yaml). `RESUMABLE` names the options that a resumed run may change.

    YAML keys / meta_train keywords -> RunSpec (built solver, estimator, outer optimizer,
        warm start, penalty, evaluation, compilation) -> meta_train's run -> record()
"""

import dataclasses

from bilevel import checks
from bilevel.checks import option
from bilevel.compiled import Compilation
from bilevel.errors import InvalidInputError
from bilevel.estimators import Estimator, as_estimator
from bilevel.solvers import InnerSolver, as_solver, solver_name
from bilevel.training.hyper_penalty import HyperPenalty
from bilevel.training.optimizers import OuterOptimizer
from bilevel.training.warm_start import WarmStart


@dataclasses.dataclass(frozen=True)
class Evaluation(checks.Options):
    """Held-out evaluation: `tasks` tasks drawn once, every `every` steps and at the last."""

    key, required = "eval", "every"
    every: int = option("evaluate every this many steps", minimum=1, maximum=checks.MAX_STEPS)
    tasks: int = option("held-out tasks, drawn once", minimum=1, maximum=checks.MAX_TASKS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything `meta_train` does with a problem (paper Algorithm 1), resolved.

    Built from loose forms too: `solver` a registered name or {"name": ..., **options},
    `method` likewise, `outer` as `OuterOptimizer.parse` takes it, `eval`, `warm_start`
    and `hyper_penalty` as dicts of their fields; each is checked and built here, once.
    """

    solver: InnerSolver = option("the inner solver")
    method: Estimator = option("the hypergradient estimator", "fo-bmaml")
    outer: OuterOptimizer = option("the outer optimizer of h", "adam")
    steps: int = option("outer steps", minimum=1, maximum=checks.MAX_STEPS, resumable=True)
    tasks_per_step: int = option("tasks in each outer step's batch", minimum=1,
                                 maximum=checks.MAX_TASKS)
    eval: Evaluation | None = option("held-out evaluation (null: never)", None)
    warm_start: WarmStart | None = option(
        "start each outer step's inner solves from the previous step's (null: from "
        "inner_init)", None)
    hyper_penalty: HyperPenalty | None = option(
        "pull leaves of h toward their mean (null: no penalty)", None)
    seed: int = option("seeds init_hyper, the task streams and torch", 0, minimum=0,
                       maximum=checks.MAX_SEED)
    compile: Compilation = option(
        "compile every solve of the run (hypergradients, warm starts, validation, test "
        "metrics) with torch.compile (strict: no eager fallback for what cannot be compiled)",
        False)
    checkpoint_every: int | None = option("also checkpoint every this many steps (a run "
                                          "always checkpoints at its end)", None, minimum=1,
                                          resumable=True)
    divergence_factor: float = option(
        "stop when an inner solve's gradient norm, or the loss, grows this many times over "
        "its start (a finite blow-up)", 1e3, above=1)
    threads: int | None = option("torch's CPU threads (null: the environment variable "
                                 "BILEVEL_THREADS, else 1: small batched problems run "
                                 "fastest on one)", None, minimum=1, resumable=True)
    progress: bool = option("show a progress bar", True, resumable=True)

    def __post_init__(self):
        built = {"solver": as_solver(self.solver),
                 "method": as_estimator(self.method),
                 "outer": OuterOptimizer.parse(self.outer),
                 "eval": Evaluation.parse(self.eval),
                 "warm_start": WarmStart.parse(self.warm_start),
                 "hyper_penalty": HyperPenalty.parse(self.hyper_penalty),
                 "compile": Compilation.of(self.compile)}
        for name, value in built.items():
            object.__setattr__(self, name, value)
        checks.in_bounds(self)
        if not isinstance(self.progress, bool):
            raise InvalidInputError(f"progress must be true or false, got {self.progress!r}")

    @classmethod
    def from_keywords(cls, *, eval_every: int = 0, eval_tasks: int = 0,
                      **options) -> "RunSpec":
        """The keyword form of `meta_train`, where evaluation is `eval_every` and
        `eval_tasks` (both 0: never)."""
        if (eval_every == 0) != (eval_tasks == 0):
            raise InvalidInputError(f"eval_every and eval_tasks must be both 0 (no evaluation) "
                                    f"or both >= 1, got eval_every={eval_every!r}, "
                                    f"eval_tasks={eval_tasks!r}")
        evaluation = None
        if eval_every:
            checks.integer("eval_every", eval_every, minimum=1)
            checks.integer("eval_tasks", eval_tasks, minimum=1)
            evaluation = Evaluation(eval_every, eval_tasks)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InvalidInputError(f"unknown run option(s) {', '.join(unknown)}; valid: "
                                    f"{', '.join(OPTIONS)}, eval_every, eval_tasks")
        return cls(eval=options.pop("eval", evaluation), **options)

    def record(self) -> dict:
        """The options as plain values (JSON and YAML), each unit with its name and every
        option filled in: what a run directory records."""
        units = {"solver": _unit(solver_name(self.solver), self.solver),
                 "method": _unit(self.method.name, self.method),
                 "outer": self.outer.as_dict(), "eval": _as_dict(self.eval),
                 "warm_start": _as_dict(self.warm_start),
                 "hyper_penalty": _as_dict(self.hyper_penalty),
                 "compile": self.compile.mode}
        return {field.name: units.get(field.name, getattr(self, field.name))
                for field in dataclasses.fields(self)}

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)


OPTIONS = tuple(field.name for field in dataclasses.fields(RunSpec))
# What a resumed run may change: its length, checkpoints, threads and progress bar.
RESUMABLE = frozenset(field.name for field in dataclasses.fields(RunSpec)
                      if field.metadata["resumable"])


def _unit(name: str, unit) -> dict:
    is_instance = dataclasses.is_dataclass(unit) and not isinstance(unit, type)
    options = dataclasses.asdict(unit) if is_instance else {}
    return {"name": name, **options}


def _as_dict(value: Evaluation | WarmStart | HyperPenalty | None) -> dict | None:
    return None if value is None else value.as_dict()
