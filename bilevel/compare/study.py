"""The Optuna side: a study (in any Optuna storage, shared by any number of workers) whose
trials each fix the searched hyperparameters, solve and validate as the bilevel side
does, and record what they cost; workers start trials until the study has spent the
budget."""

import math
import os
import sys
import time
import warnings
from pathlib import Path

import optuna

from bilevel.compare.curves import Curve
from bilevel.compare.trial import Trial
from bilevel.errors import InvalidInputError

# A worker that dies leaves its trial RUNNING; with a heartbeat, the next worker marks it
# failed once it has been silent for GRACE seconds (RDB storages).
HEARTBEAT, GRACE = 5, 30
# NumPy's (so Optuna's) sampler seeds are below 2^32; a study's trials add up to this many.
SAMPLER_SEEDS, TRIALS_SEEDS = 2**32, 2**20
OPEN_ATTEMPTS = 5
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


def storage(url: str | None, directory: Path):
    """An Optuna storage: the URL's (SQLAlchemy: sqlite:///, postgresql://, mysql://; or
    journal:PATH, a journal file), by default sqlite:///<directory>/study.db."""
    if url is None:
        directory.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{directory.resolve() / 'study.db'}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise InvalidInputError(f"storage {url!r}: the folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise InvalidInputError(f"storage {url!r}: cannot write in the folder {path.parent}")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as error:
            raise InvalidInputError(f"storage {url!r}: cannot write the journal file "
                                    f"({error.strerror})") from None
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 4, 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT,
                                                  grace_period=GRACE)
        except Exception as error:  # SQLAlchemy's and drivers' errors have no common base
            # Workers that open a new database at once race to create its tables (on
            # PostgreSQL: "duplicate key value ... studydirection"); the loser retries.
            racing = any(w in str(error).lower() for w in ("duplicate", "already exists"))
            if attempt == OPEN_ATTEMPTS - 1 or not racing:
                raise InvalidInputError(f"storage {url!r}: cannot open it as an Optuna storage "
                                        f"({type(error).__name__}: "
                                        f"{str(error).splitlines()[0]})") from None
            time.sleep(0.2 * (attempt + 1))


def sampler_seed(seed: int, worker: int) -> int:
    """The sampler's seed of `worker` in a study seeded with `seed` (before adding the trials
    already run): seed + 1000 worker, which must stay below 2^32 - TRIALS_SEEDS (NumPy's seeds
    are 32-bit); an InvalidInputError naming the worker or the seed otherwise."""
    if not isinstance(worker, int) or isinstance(worker, bool) or worker < 0:
        raise InvalidInputError(f"worker must be an integer >= 0, got {worker!r}")
    limit = SAMPLER_SEEDS - TRIALS_SEEDS
    if seed >= limit:
        raise InvalidInputError(f"seed must be below {limit:,} for `bilevel compare` "
                                f"(Optuna's samplers take 32-bit seeds), got {seed!r}")
    if seed + 1000 * worker >= limit:
        raise InvalidInputError(f"worker must be at most {(limit - 1 - seed) // 1000:,} with "
                                f"seed {seed} (the sampler's seed, seed + 1000 worker, must "
                                f"stay below {limit:,}), got {worker!r}")
    return seed + 1000 * worker


def sampler(name: str, seed: int):
    """Optuna's sampler by name: tpe, random, cmaes, sep-cmaes (separable CMA-ES: a diagonal
    covariance, O(d) a sample instead of O(d^2)), gp."""
    if name in ("cmaes", "sep-cmaes"):
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler needs it at its first trial)
        except ImportError:
            raise InvalidInputError("search.sampler: cmaes needs the cmaes package "
                                    "(pip install cmaes)") from None
    if name == "sep-cmaes":
        with warnings.catch_warnings():  # use_separable_cma is experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(seed=seed, use_separable_cma=True)
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler}
    return samplers[name](seed=seed)


def pruner(name: str):
    """none, median (MedianPruner) or hyperband (HyperbandPruner)."""
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def spent(study, unit: str) -> float:
    """The budget that the study's finished trials have spent."""
    key = "seconds" if unit == "seconds" else "cost"
    return sum(t.user_attrs.get(key, 0.0) for t in study.get_trials(deepcopy=False,
                                                                      states=FINISHED))


def run_optuna(config, built, search: dict, directory: Path, *, url=None, worker=0,
               name="compare"):
    """Run trials until the study has spent the budget; returns the study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage(url, directory),
                                direction="minimize", load_if_exists=True,
                                pruner=pruner(search["pruner"]))
    fail_own_stale_trials(study, worker)
    describe_budget(study, *budget_of(search))
    seed = sampler_seed(config.resolved["seed"], worker) + len(study.trials)
    study.sampler = sampler(search["sampler"], seed)
    objective = Trial(config, built, search, directory / "trials", worker)
    unit, budget = budget_of(search)
    bar = _progress_bar(config.resolved["progress"], budget, unit)
    done = spent(study, unit)
    while done < budget:
        study.optimize(objective, n_trials=1, gc_after_trial=False)
        done, before = spent(study, unit), done
        if bar is not None:
            bar.update(min(done, budget) - min(before, budget))
    if bar is not None:
        bar.close()
    return study


def _progress_bar(show: bool, budget: float, unit: str):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=budget, desc="optuna", unit=" " + unit.replace("_", " "),
                file=sys.stderr, unit_scale=True)


def budget_of(search: dict) -> tuple[str, float]:
    """(unit, amount) of search.budget: ("inner_grad_evals" or "seconds", a number)."""
    unit, amount = next((k, v) for k, v in search["budget"].items() if v is not None)
    return unit, float(amount)


def _finished(study):
    """(trial, cumulative cost, cumulative seconds) of the finished trials in the order they
    finished: what the Optuna side had spent when each one ended."""
    cost = seconds = 0.0
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    for trial in sorted(trials, key=lambda t: t.datetime_complete):
        cost += trial.user_attrs.get("cost", 0.0)
        seconds += trial.user_attrs.get("seconds", 0.0)
        yield trial, cost, seconds


def study_curve(study, unit: str, budget: float) -> Curve:
    """Trials in the order they finished: cumulative cost and seconds, best value so far;
    a pruned or failed trial adds its cost and no value."""
    curve = Curve("optuna")
    for trial, cost, seconds in _finished(study):
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        curve.add(cost, seconds, trial.value if complete else math.inf)
    return curve.within(unit, budget)


def best_within(study, unit: str, budget: float):
    """The best complete trial among those that finished within the budget (the Optuna
    side's result, as its curve is cut), or None."""
    within = [trial for trial, cost, seconds in _finished(study)
              if (seconds if unit == "seconds" else cost) <= budget
              and trial.state == optuna.trial.TrialState.COMPLETE
              and math.isfinite(trial.value)]
    return min(within, key=lambda trial: trial.value, default=None)


def fail_own_stale_trials(study, worker: int) -> None:
    """Trials of `worker` still RUNNING when it starts (this worker runs none yet: a killed
    run of it left them) are failed now, counted with the cost they recorded."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


BILEVEL_STUDY = "compare-bilevel"


def record_bilevel_side(study_storage, curve: Curve, test: dict | None, unit: str,
                        budget: float) -> None:
    """The bilevel side as a study of its own beside the Optuna side's, so that
    optuna-dashboard shows both: one trial whose intermediate values are the side's
    validation losses at the cost (inner gradient evaluations) of each validation, its
    test numbers and seconds as user attributes, the best validation loss as its value;
    the budget and the cost model as the study's attributes. Written anew at each run."""
    if any(summary.study_name == BILEVEL_STUDY
           for summary in optuna.get_all_study_summaries(study_storage)):
        optuna.delete_study(study_name=BILEVEL_STUDY, storage=study_storage)
    study = optuna.create_study(study_name=BILEVEL_STUDY, storage=study_storage,
                                direction="minimize")
    describe_budget(study, unit, budget)
    with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": not here
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    for cost, value in zip(curve.cost, curve.values, strict=True):
        if math.isfinite(value):
            trial.report(value, step=round(cost))
    trial.set_user_attr("seconds", curve.seconds[-1] if curve.seconds else 0.0)
    for key, number in (test or {}).items():
        trial.set_user_attr(key, number)
    best = curve.best[-1] if curve.best else math.inf
    study.tell(trial, best if math.isfinite(best) else None,
               state=None if math.isfinite(best) else optuna.trial.TrialState.FAIL)


def describe_budget(study, unit: str, budget: float) -> None:
    """The budget and the cost model as the study's user attributes."""
    study.set_user_attr("budget", budget)
    study.set_user_attr("budget_unit", unit)
    study.set_user_attr("cost_model", "inner gradient evaluations + Hessian-vector products "
                                      "over every inner solve (bilevel/compare/cost.py)")

