"""The run directory: what a run leaves on disk besides its checkpoint.

    settings.json   the resolved settings (seed included)
    hyper.json      the learned hyperparameters, readable (`write_hyper`)
    metrics.jsonl   one JSON record per outer step
    summary.json    status and final numbers, written when the run stops
    loss.png        loss and hypergradient norm against the step
    eval.png        the held-out metrics against the step (runs that evaluate)
    checkpoint.pt   see `bilevel.training.checkpoint`

A fresh run starts only in an empty directory, or one that holds nothing but files of the
library (`OWN_FILES`, e.g. the config.yaml that `bilevel run` writes first), and never
over another run; temporary files that a killed run left behind are removed at the next
start.
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TextIO

from bilevel import strict_json
from bilevel.errors import RunDirectoryError, RunWriteError
from bilevel.training import checkpoint, hyperfile
from bilevel.training.spec import RESUMABLE

# Settings that may change when a run is resumed: the run options that may (RunSpec's), how
# many processes run it and the torch version.
RESUMABLE_CHANGES = RESUMABLE | {"world_size", "torch"}
# What the library writes in a run directory: this module, the checkpoint, and `bilevel run`
# (config.yaml, the record of the run, and test.json); temporary files start with ".".
OWN_FILES = {"settings.json", "metrics.jsonl", "summary.json", "loss.png", "eval.png",
             "checkpoint.pt", "config.yaml", "test.json", "hyper.json"}
LOCK_FILE = ".lock"  # hidden: not a file of the run's results


def settings_digest(settings: dict) -> str:
    """A fingerprint of the settings that identify a run (all but RESUMABLE_CHANGES), kept
    in its checkpoints so that a checkpoint of another run is refused."""
    kept = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path` (atomic); on an OS
    error (a full disk, a read-only directory) the temporary file is removed, `path` left as
    it was, and a RunWriteError names both."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise RunWriteError(f"cannot write {path} ({error.strerror}); it was left as it "
                            "was") from None


def write_hyper(directory: Path, h: dict, step: int) -> Path:
    """directory/hyper.json: `h` at `step`, readable (`bilevel.training.hyperfile`)."""
    path = Path(directory) / hyperfile.FILENAME
    write_atomically(path, hyperfile.hyper_text(h, step))
    return path


class RunDirectory:
    """Files of one run under `path`; only the main process creates one. It holds the
    directory's lock (an OS lock on `LOCK_FILE`, released by `close` or when the process
    dies, so a killed run never leaves a stale one) from creation to `close`: a second run
    in the same directory at the same time is refused before it reads or writes anything."""

    def __init__(self, path, *, resume: bool):
        self.path = Path(path)
        settings = self.path / "settings.json"
        if not resume and settings.exists():
            raise RunDirectoryError(
                f"out={str(self.path)!r} already holds a run ({settings.name}); pass "
                "resume=True to continue it, or choose another directory"
            )
        if not resume:
            check_usable(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(f"out={str(self.path)!r}: cannot create the run directory "
                                    f"({error.strerror})") from None
        self._lock = _locked(self.path)
        probe = self.path / f".write-test.{os.getpid()}.tmp"  # a stray one is cleaned below
        try:  # fail now, not at the first checkpoint: a directory it may not write in
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise RunDirectoryError(f"out={str(self.path)!r}: cannot write in the run "
                                    f"directory ({error.strerror})") from None
        for stray in self.path.glob(".*.tmp"):  # left by a run killed while writing
            stray.unlink(missing_ok=True)
        self._metrics: TextIO | None = None  # metrics.jsonl, open from restart_metrics on

    def close(self) -> None:
        """Close metrics.jsonl and release the directory's lock."""
        if self._metrics is not None:
            with contextlib.suppress(OSError):  # a full disk: what it held is in the history
                self._metrics.close()
            self._metrics = None
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None

    def write_settings(self, settings: dict, *, resume: bool) -> None:
        """Record the settings; on resume, check that they match the recorded ones."""
        if resume:
            check_settings(self.path, settings)
        write_atomically(self.path / "settings.json", strict_json.dumps(settings, indent=2) + "\n")

    def restart_metrics(self, history: list) -> None:
        """metrics.jsonl holds exactly `history`: records written after the checkpoint that
        a resumed run starts from are dropped, since the run writes them again."""
        path = self.path / "metrics.jsonl"
        write_atomically(path, "".join(strict_json.dumps(record) + "\n" for record in history))
        self._metrics = path.open("a")

    def log(self, record: dict) -> None:
        assert self._metrics is not None, "log() before restart_metrics()"
        try:
            self._metrics.write(strict_json.dumps(record) + "\n")
            self._metrics.flush()
        except OSError as error:  # finish() writes it whole again from the history
            raise RunWriteError(f"cannot write {self.path / 'metrics.jsonl'} "
                                f"({error.strerror})") from None

    def finish(self, summary: dict, history: list) -> None:
        """Write summary.json, hyper.json (from the checkpoint on disk) and the plots; close
        metrics.jsonl and write it again from the history (whole even if the file was
        deleted or cut during the run)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        write_atomically(self.path / "metrics.jsonl",
                         "".join(strict_json.dumps(record) + "\n" for record in history))
        write_atomically(self.path / "summary.json", strict_json.dumps(summary, indent=2) + "\n")
        if (self.path / checkpoint.FILENAME).is_file():
            saved = checkpoint.load(self.path)
            write_hyper(self.path, saved["h"], saved["step"])
        plot(self.path, history)


def check_settings(directory: Path, settings: dict) -> None:
    """The settings recorded in directory/settings.json (if any) are `settings`, but for
    RESUMABLE_CHANGES; else a RunDirectoryError naming each difference."""
    path = Path(directory) / "settings.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    current = json.loads(strict_json.dumps(settings))  # as recorded: tuples become lists
    changed = differences(recorded, current, RESUMABLE_CHANGES)
    if changed:
        raise RunDirectoryError(f"resume: settings differ from those recorded in {path}: "
                                f"{'; '.join(changed)}")


def differences(recorded, current, resumable=frozenset(), path="") -> list[str]:
    """'key.path: recorded -> current' for every leaf that differs, but the top-level keys
    in `resumable`."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current), key=str):
            if not path and key in resumable:
                continue
            found += differences(recorded.get(key), current.get(key), resumable,
                                 f"{path}.{key}" if path else str(key))
        return found
    if recorded != current:
        return [f"{path}: {recorded!r} -> {current!r}"]
    return []


def _locked(path: Path):
    """The open lock file of the run directory `path`, locked; a RunDirectoryError when
    another process holds it."""
    try:
        handle = (path / LOCK_FILE).open("a")
    except OSError as error:  # a read-only directory (or file system): before any work
        raise RunDirectoryError(f"out={str(path)!r}: cannot write in the run directory "
                                f"({error.strerror}: {LOCK_FILE}); its files were left as "
                                "they are") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunDirectoryError(f"out={str(path)!r} is in use by another run (it holds "
                                f"{LOCK_FILE}); wait for it to end, or choose another "
                                "directory") from None
    return handle


def check_usable(path: Path) -> None:
    """A new run may use `path`: it does not exist yet, or is a directory without files
    (hidden ones aside: a lock, a stray temporary file). Files named as a run's but without
    its settings.json (another tool's metrics.jsonl or checkpoint.pt) are refused too."""
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"out={str(path)!r} is a file, not a directory")
    if not path.exists():
        return
    names = sorted(f.name for f in path.iterdir() if not f.name.startswith("."))
    foreign = [name for name in names if name not in OWN_FILES]
    if foreign:
        raise RunDirectoryError(f"out={str(path)!r} holds files that are not a run's "
                                f"({_listed(foreign)}); choose an empty or new directory")
    if names:
        raise RunDirectoryError(f"out={str(path)!r} holds {_listed(names)} but no settings.json: "
                                "not a run this library can resume (another tool's files, or a "
                                "run whose record was deleted); choose an empty or new directory")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def log_scale(name: str, values) -> bool:
    """Whether a metric's plot takes a log axis: its values are all > 0 and span more than a
    factor 10, and it is not a fraction such as an accuracy (in [0, 1])."""
    if "accuracy" in name or not values or min(values) <= 0:
        return False
    return max(values) > 10 * min(values)


def draw(axis, name: str, points: list) -> None:
    """One metric's (step, value) points on `axis`: integer step ticks, non-finite values
    left out, a log axis where `log_scale` says."""
    from matplotlib.ticker import MaxNLocator

    points = [(step, value) for step, value in points if math.isfinite(value)]
    if points:
        axis.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
    if log_scale(name, [value for _, value in points]):
        axis.set_yscale("log")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="outer step", title=name)
    axis.grid(alpha=0.3)


def plot(directory: Path, history: list) -> None:
    """loss.png (loss and hypergradient norm) and eval.png (every "eval_*" metric)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    def figure(names, filename, title):
        names = [n for n in names if any(n in record for record in history)]
        if not names:
            return
        fig, axes = pyplot.subplots(1, len(names), figsize=(4.5 * len(names), 3.5),
                                    squeeze=False)
        for axis, name in zip(axes[0], names, strict=True):
            draw(axis, name, [(r["step"], r[name]) for r in history if name in r])
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(directory / filename, dpi=100)
        pyplot.close(fig)

    figure(["loss", "grad_norm"], "loss.png", "training")
    eval_names = sorted({k for record in history for k in record if k.startswith("eval_")})
    figure(eval_names, "eval.png", "held-out tasks")
