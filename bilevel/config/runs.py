"""What the commands do with a config: run it, validate it, check its hypergradients.

A run directory keeps config.yaml, the resolved config: running it again (elsewhere)
reproduces the run bit for bit on a CPU, and `resume` refuses a config that differs from
it in anything but the keys of `RESUMABLE`.
"""

import dataclasses
import sys
import time
from pathlib import Path

import torch

from bilevel import strict_json
from bilevel.config import yamlfile
from bilevel.config.build import Built, build
from bilevel.config.load import Config
from bilevel.errors import BilevelError, RunDirectoryError
from bilevel.gradcheck import gradcheck
from bilevel.hypergradient import hypergradient
from bilevel.inner import at_inner_solutions
from bilevel.training import Callback, meta_train, spec
from bilevel.training.rundir import check_usable, differences, write_atomically
from bilevel.tree import keystr, ravel, tree_leaves_with_path

CONFIG_FILE = "config.yaml"
# Keys that may change when a run is resumed: the run options that may (RunSpec's), and
# where the run directory is.
RESUMABLE = spec.RESUMABLE | {"out"}


# What a run directory holds beside its config.yaml: a run's settings, a comparison's.
RUN_MARKS = ("settings.json", "compare.json", "bilevel/settings.json")


def run_directory(config: Config, out=None) -> Path:
    """--out, else the folder of a run's own record (its config.yaml, wherever the run
    directory was moved), else the config's `out`, else runs/<the config file's stem>."""
    if out is not None:
        return Path(out)
    if config.file is not None and config.file.name == CONFIG_FILE and any(
            (config.file.parent / mark).is_file() for mark in RUN_MARKS):
        return config.file.parent
    if config.resolved["out"] is not None:
        return Path(config.resolved["out"])
    stem = "run" if config.file is None else config.file.stem
    return Path("runs") / stem


def run(config: Config, *, out=None, resume: bool = False):
    """Meta-train as the config says, in its run directory; returns `MetaTrainResult`."""
    directory = run_directory(config, out)
    built = build(config)
    # The run keys recorded are the spec's own record, as in settings.json.
    resolved = config.recorded_in(directory) | built.spec.record() | {"out": str(directory)}
    check_record(directory, resolved, resume)
    result = meta_train(built.problem, built.spec, out=directory, resume=resume,
                        callbacks=[_ConfigRecord(resolved)])
    test = test_metrics(built, result.h)
    if test is not None:
        write_atomically(directory / "test.json", strict_json.dumps(test, indent=2) + "\n")
        result.summary["test"] = test
    return result


def check_record(directory: Path, resolved: dict, resume: bool) -> None:
    """A run of `resolved` may start in `directory` (resume: it holds a run of the same
    config, but for RESUMABLE keys); nothing is written."""
    path = directory / CONFIG_FILE
    if resume:
        if not path.is_file():
            raise RunDirectoryError(f"--resume: {directory} holds no {CONFIG_FILE}; nothing to "
                                    "resume")
        recorded, _ = yamlfile.read(path)
        changed = differences(recorded, resolved, RESUMABLE)
        if changed:
            raise RunDirectoryError(f"--resume: the config differs from the one recorded in {path} "
                                    f"at {'; '.join(changed)}; resume with the recorded config, or "
                                    "start a new run with another --out")
    elif path.exists() or (directory / "settings.json").exists():
        raise RunDirectoryError(f"{directory} already holds a run; pass --resume to continue it, "
                                "or choose another --out")
    else:
        check_usable(directory)


class _ConfigRecord(Callback):
    """Writes config.yaml once meta_train has the run directory (locked, its resume
    checked), so that the record always says what the checkpoint holds."""

    def __init__(self, resolved: dict):
        self.resolved = resolved

    def on_start(self, out, step: int) -> None:
        write_atomically(out / CONFIG_FILE, yamlfile.dump(self.resolved))


def test_metrics(built: Built, h: dict) -> dict[str, float] | None:
    """The problem's metrics on its held-out test set at h (`BilevelProblem.test_tasks`), with
    its own `report(h, solver)` where it has one, solved compiled as the run says; None for a
    problem without a test set."""
    tasks = built.problem.test_tasks()
    if tasks is None:
        return None
    spec = built.spec
    metrics = at_inner_solutions(built.problem.eval_metrics, built.problem, h, tasks,
                                 spec.solver, compilation=spec.compile)
    own = built.problem.report(h, spec.solver, compile=spec.compile) or {}
    return {f"test_{k.removeprefix('val_')}": v.mean().item() for k, v in metrics.items()} | own


def validate(config: Config) -> dict:
    """Everything short of training: build the problem, draw tasks, and evaluate one
    hypergradient with the configured solver and estimator (which must be finite)."""
    resolved = config.resolved
    with progress_bar(config, total=2, desc="validate", unit="stage") as bar:
        built = build(config)
        bar.update()
        generator = torch.Generator().manual_seed(resolved["seed"])
        try:
            h = built.problem.init_hyper(generator)
            tasks = built.problem.sample_tasks(min(resolved["tasks_per_step"], 4), generator)
            start = time.perf_counter()
            grad, info = hypergradient(built.problem, h, tasks, solver=built.spec.solver,
                                       method=built.spec.method)
        except BilevelError as error:
            raise config.error(f"the problem built, but one hypergradient failed: {error}",
                               ("problem",)) from None
        bar.update()
    # hypergradient raises on a non-finite result (NonFiniteTasksError, a BilevelError)
    seconds = time.perf_counter() - start
    norm = ravel(grad)[0].double().norm().item()
    return {"problem": type(built.problem).__name__,
            "hyperparameters": {f"h{keystr(path)}": list(leaf.shape)
                                for path, leaf in tree_leaves_with_path(h)},
            "val_loss": float(info["val_loss"].mean()), "hypergradient_norm": norm,
            "seconds": seconds}


def check_gradients(config: Config, *, methods: list[str] | None = None,
                    reference: str = "exact", repeats: int = 1) -> list[dict]:
    """`bilevel.gradcheck` on the config's problem at init_hyper, on one batch of its tasks;
    reference "closed-form" uses the problem's own `meta_gradient(h, tasks)`."""
    built = build(config)
    generator = torch.Generator().manual_seed(config.resolved["seed"])
    h = built.problem.init_hyper(generator)
    tasks = built.problem.sample_tasks(config.resolved["tasks_per_step"], generator)
    target: str | dict = reference
    if reference == "closed-form":
        closed_form = built.problem.meta_gradient(h, tasks)
        if closed_form is None:
            raise config.error(f"{type(built.problem).__name__} has no closed-form "
                               "meta_gradient; use --reference exact", ("problem",))
        target = closed_form
    estimator = built.spec.method
    name = estimator.name
    method: dict = dataclasses.asdict(estimator) if dataclasses.is_dataclass(estimator) else {}
    options = {name: method} if method and (methods is None or name in methods) else {}

    def each(names: list[str]):
        return progress_bar(config, iterable=names, desc="gradcheck", unit="method")

    return gradcheck(built.problem, h, tasks, solver=built.spec.solver, methods=methods,
                     reference=target, options=options, repeats=repeats, progress=each)


# Seconds of work before `validate` and `gradcheck` show a progress bar.
PROGRESS_DELAY = 2.0


def progress_bar(config: Config, **arguments):
    """A tqdm bar on stderr, shown once the work has lasted PROGRESS_DELAY seconds (never
    with `progress: false`), and cleared when it ends; `arguments` are tqdm's."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, delay=PROGRESS_DELAY, leave=False,
                disable=not config.resolved["progress"], **arguments)

