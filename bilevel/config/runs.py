"""What the commands do with a config: run it, validate it, check its hypergradients.

A run directory keeps config.yaml, the resolved config: running it again (elsewhere)
reproduces the run bit for bit on a CPU, and `resume` refuses a config that differs from
it in anything but the keys of `RESUMABLE`.
"""

import json
import time
from pathlib import Path

import torch

from bilevel.config import yamlfile
from bilevel.config.build import Built, build
from bilevel.config.load import Config
from bilevel.errors import BilevelError, RunDirectoryError
from bilevel.gradcheck import gradcheck
from bilevel.hypergradient import hypergradient
from bilevel.inner import at_inner_solutions
from bilevel.training import meta_train
from bilevel.training.rundir import check_usable, write_atomically
from bilevel.tree import keystr, ravel, tree_leaves_with_path

CONFIG_FILE = "config.yaml"
# Keys that may change when a run is resumed: its length, its checkpoints, where it is,
# how it shows progress, its threads.
RESUMABLE = {"steps", "checkpoint_every", "out", "progress", "threads"}


def run_directory(config: Config, out=None) -> Path:
    """--out, else the config's `out`, else runs/<the config file's stem>."""
    if out is not None:
        return Path(out)
    if config.resolved["out"] is not None:
        return Path(config.resolved["out"])
    stem = "run" if config.file is None else config.file.stem
    return Path("runs") / stem


def run(config: Config, *, out=None, resume: bool = False):
    """Meta-train as the config says, in its run directory; returns `MetaTrainResult`."""
    directory = run_directory(config, out)
    resolved = config.resolved | {"out": str(directory)}
    _record(directory, resolved, resume)
    built = build(config)
    evaluation = resolved["eval"] or {"every": 0, "tasks": 0}
    result = meta_train(
        built.problem, solver=built.solver, method=built.method, outer=built.outer,
        steps=resolved["steps"], tasks_per_step=resolved["tasks_per_step"],
        eval_every=evaluation["every"], eval_tasks=evaluation["tasks"], seed=resolved["seed"],
        out=directory, checkpoint_every=resolved["checkpoint_every"], resume=resume,
        progress=resolved["progress"], divergence_factor=resolved["divergence_factor"],
        compile=resolved["compile"], threads=resolved["threads"],
        warm_start=resolved["warm_start"], hyper_penalty=resolved["hyper_penalty"])
    test = test_metrics(built, result.h)
    if test is not None:
        write_atomically(directory / "test.json", json.dumps(test, indent=2) + "\n")
        result.summary["test"] = test
    return result


def _record(directory: Path, resolved: dict, resume: bool) -> None:
    path = directory / CONFIG_FILE
    if resume:
        if not path.is_file():
            raise RunDirectoryError(f"--resume: {directory} holds no {CONFIG_FILE}; nothing to "
                                    "resume")
        recorded, _ = yamlfile.read(path)
        changed = differences(recorded, resolved)
        if changed:
            raise RunDirectoryError(f"--resume: the config differs from the one recorded in {path} "
                                    f"at {'; '.join(changed)}; resume with the recorded config, or "
                                    "start a new run with another --out")
    elif path.exists() or (directory / "settings.json").exists():
        raise RunDirectoryError(f"{directory} already holds a run; pass --resume to continue it, "
                                "or choose another --out")
    else:
        check_usable(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"{directory}: cannot create the run directory "
                                f"({error.strerror})") from None
    write_atomically(path, yamlfile.dump(resolved))


def differences(recorded, current, path="") -> list[str]:
    """'key.path: recorded -> current' for every leaf that differs, but RESUMABLE keys."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current), key=str):
            if not path and key in RESUMABLE:
                continue
            found += differences(recorded.get(key), current.get(key),
                                 f"{path}.{key}" if path else str(key))
        return found
    if recorded != current:
        return [f"{path}: {recorded!r} -> {current!r}"]
    return []


def test_metrics(built: Built, h: dict) -> dict[str, float] | None:
    """The problem's metrics on its held-out test set at h (`BilevelProblem.test_tasks`), or
    None for a problem without one."""
    tasks = built.problem.test_tasks()
    if tasks is None:
        return None
    metrics = at_inner_solutions(built.problem.eval_metrics, built.problem, h, tasks,
                                 built.solver)
    return {f"test_{k.removeprefix('val_')}": v.mean().item() for k, v in metrics.items()}


def validate(config: Config) -> dict:
    """Everything short of training: build the problem, draw tasks, and evaluate one
    hypergradient with the configured solver and estimator (which must be finite)."""
    built = build(config)
    resolved = config.resolved
    generator = torch.Generator().manual_seed(resolved["seed"])
    try:
        h = built.problem.init_hyper(generator)
        tasks = built.problem.sample_tasks(min(resolved["tasks_per_step"], 4), generator)
        start = time.perf_counter()
        grad, info = hypergradient(built.problem, h, tasks, solver=built.solver,
                                   **_method_arguments(built.method))
    except BilevelError as error:
        raise config.error(f"the problem built, but one hypergradient failed: {error}",
                           ("problem",)) from None
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
    if reference == "closed-form":
        reference = built.problem.meta_gradient(h, tasks)
        if reference is None:
            raise config.error(f"{type(built.problem).__name__} has no closed-form "
                               "meta_gradient; use --reference exact", ("problem",))
    method = _method_arguments(built.method)
    name = method.pop("method")
    options = {name: method} if method and (methods is None or name in methods) else {}
    return gradcheck(built.problem, h, tasks, solver=built.solver, methods=methods,
                     reference=reference, options=options, repeats=repeats)


def _method_arguments(method: dict) -> dict:
    options = dict(method)
    return {"method": options.pop("name"), **options}

