"""`compare(config)`: the bilevel method and an Optuna study on the same problem and the
same budget, side by side, in one run directory:

    <run dir>/config.yaml           the resolved config (a rerun with another is refused)
    <run dir>/bilevel/              meta_train's run directory (the bilevel side)
    <run dir>/study.db              the Optuna study (default storage; resumable)
    <run dir>/trials/<n>/           hybrid trials' meta_train run directories
    <run dir>/compare.{json,md,png} curves, table, figure
"""

from pathlib import Path

import optuna

from bilevel.compare.bilevel_side import run_bilevel
from bilevel.compare.report import rows, write
from bilevel.compare.space import fixed_values, leaves_under, parameter_names
from bilevel.compare.study import (
    best_within,
    budget_of,
    record_bilevel_side,
    run_optuna,
    sampler_seed,
    study_curve,
)
from bilevel.compare.study import storage as study_storage
from bilevel.compare.trial import Trial, suggest, with_values
from bilevel.config import yamlfile
from bilevel.config.build import Built, build
from bilevel.config.runs import CONFIG_FILE, RESUMABLE, run_directory, test_metrics
from bilevel.errors import BilevelError, InvalidInputError, RunDirectoryError
from bilevel.problem_view import ProblemView
from bilevel.training import checkpoint
from bilevel.training.rundir import differences, write_atomically
from bilevel.tree import tree_leaves, tree_map

SIDES = ("both", "bilevel", "optuna")


def compare(config, *, out=None, storage=None, only="both", worker=0) -> dict:
    """Run both sides of `config`'s `search` (or `only` one: workers sharing a study run
    `only="optuna"`), then write the report; returns compare.json's record.

    out: run directory (default as `bilevel run`'s); storage: an Optuna storage URL
    (default: search.storage, else sqlite:///<run dir>/study.db); worker: this worker's
    index, which offsets its sampler's seed.
    """
    search = config.resolved.get("search")
    if search is None:
        raise config.error("`bilevel compare` needs a `search` block (see docs/compare.md)",
                           ("search",))
    if only not in SIDES:
        raise InvalidInputError(f"only must be one of {', '.join(SIDES)}, got {only!r}")
    sampler_seed(config.resolved["seed"], worker)  # before any work
    directory = run_directory(config, out)
    _record(directory, config.recorded_in(directory) | {"out": str(directory)})
    built = build(config)
    _check_space(config, built, search)
    unit, budget = budget_of(search)
    url = storage or search["storage"]
    opened = study_storage(url, directory)  # a URL that does not open fails before any work
    curves, tests = {}, {}
    if only in ("both", "bilevel"):
        curves["bilevel"], h = run_bilevel(built, directory / "bilevel", unit, budget)
        tests["bilevel"] = test_numbers(built, h)
        record_bilevel_side(opened, curves["bilevel"], tests["bilevel"], unit, budget)
    if only in ("both", "optuna"):
        study = run_optuna(config, built, search, directory, worker=worker, url=url)
        curves[f"optuna-{search['sampler']}"] = curve = study_curve(study, unit, budget)
        if not curve.cost and unit != "seconds":
            raise InvalidInputError(
                f"search.budget: {budget:g} inner gradient evaluations do not buy one Optuna "
                "trial (the first cost more); give a larger budget")
        tests[f"optuna-{search['sampler']}"] = _best_trial_test(config, built, search,
                                                                study, directory)
    table = rows(curves, tests)
    record = {"title": f"{config.file.stem if config.file else 'config'}: "
                       f"{budget:g} {unit}", "unit": unit, "budget": budget}
    write(directory, curves, table, record)
    return record | {"table": table, "directory": str(directory)}


def _record(directory: Path, resolved: dict) -> None:
    path = directory / CONFIG_FILE
    if path.is_file():
        recorded, _ = yamlfile.read(path)
        changed = differences(recorded, resolved, RESUMABLE)
        if changed:
            raise RunDirectoryError(f"{directory} holds a comparison of another config "
                                    f"({'; '.join(changed)}); choose another --out")
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(path, yamlfile.dump(resolved))


def _check_space(config, built, search: dict) -> None:
    """Every path of search.space names leaves of h; every value of search.config is valid."""
    h = built.problem.init_hyper()
    for key in search["space"]:
        try:
            leaves_under(h, key)
        except BilevelError as error:
            raise config.error(str(error), ("search", "space", key)) from None
    for key, spec in search["config"].items():
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            try:
                with_values(config, {key: value})
            except BilevelError as error:
                raise config.error(f"the value {value!r} gives an invalid config: {error}",
                                   ("search", "config", key)) from None


def test_numbers(built: Built, h: dict) -> dict[str, float] | None:
    """Test loss and accuracy at h, where the problem has a test set: a composed holdout
    problem's `test_tasks`, or a problem's own `report(h, solver, compile=...)`; solved
    compiled as the run says."""
    numbers = test_metrics(built, h)
    if numbers is None:
        numbers = built.problem.report(h, built.spec.solver, compile=built.spec.compile)
    if numbers is None:
        return None
    return {k: numbers[k] for k in ("test_loss", "test_accuracy") if k in numbers}


def _best_trial_test(config, built, search, study, directory: Path) -> dict | None:
    """Test numbers of the study's best trial within the budget (its h rebuilt from its
    parameters, and for a hybrid trial its learned leaves from the trial's checkpoint,
    where present)."""
    best = best_within(study, *budget_of(search))
    if best is None:
        return None
    trial = optuna.trial.FixedTrial(best.params)
    _, built = Trial(config, built, search, directory).configured(
        {k: suggest(trial, k, spec) for k, spec in search["config"].items()})
    h0 = built.problem.init_hyper()
    view = ProblemView(built.problem, fixed=fixed_values(
        h0, search["space"], {n: best.params[n] for n in parameter_names(h0, search["space"])}))
    learned = view.learned(h0)
    if learned:  # a hybrid trial: its learned leaves are in its checkpoint, if run here
        saved = directory / "trials" / str(best.number)
        if not (saved / checkpoint.FILENAME).is_file():
            return None
        device = tree_leaves(h0)[0].device  # the checkpoint holds CPU tensors
        learned = tree_map(lambda leaf: leaf.to(device), checkpoint.load(saved)["h"])
    return test_numbers(built, view.full(learned))
