"""The run directory: what a run leaves on disk besides its checkpoint.

    settings.json   the resolved settings (seed included)
    metrics.jsonl   one JSON record per outer step
    summary.json    status and final numbers, written when the run stops
    loss.png        loss and hypergradient norm against the step
    eval.png        the held-out metrics against the step (runs that evaluate)
    checkpoint.pt   see `bilevel.training.checkpoint`
"""

import json
import os
from pathlib import Path

from bilevel.errors import RunDirectoryError

# Settings that may change when a run is resumed: its length, how often it checkpoints, how
# many processes run it and the torch version.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "world_size", "torch"}


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path` (atomic)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class RunDirectory:
    """Files of one run under `path`; only the main process creates one."""

    def __init__(self, path, *, resume: bool):
        self.path = Path(path)
        settings = self.path / "settings.json"
        if not resume and settings.exists():
            raise RunDirectoryError(
                f"out={str(self.path)!r} already holds a run ({settings.name}); pass "
                "resume=True to continue it, or choose another directory"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics = None

    def write_settings(self, settings: dict, *, resume: bool) -> None:
        """Record the settings; on resume, check that they match the recorded ones."""
        path = self.path / "settings.json"
        if resume and path.exists():
            recorded = json.loads(path.read_text())
            current = json.loads(json.dumps(settings))  # tuples become lists, as recorded
            keys = (set(recorded) | set(current)) - RESUMABLE_CHANGES
            changed = sorted(k for k in keys if recorded.get(k) != current.get(k))
            if changed:
                listed = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
                                   for k in changed)
                raise RunDirectoryError(f"resume: settings differ from those recorded in {path}: "
                                   f"{listed}")
        write_atomically(path, json.dumps(settings, indent=2) + "\n")

    def restart_metrics(self, history: list) -> None:
        """metrics.jsonl holds exactly `history`: records written after the checkpoint that
        a resumed run starts from are dropped, since the run writes them again."""
        path = self.path / "metrics.jsonl"
        write_atomically(path, "".join(json.dumps(record) + "\n" for record in history))
        self._metrics = path.open("a")

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def finish(self, summary: dict, history: list) -> None:
        """Write summary.json and the plots; close metrics.jsonl."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        write_atomically(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot(self.path, history)


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
            points = [(r["step"], r[name]) for r in history if name in r]
            axis.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
            if all(value > 0 for _, value in points):
                axis.set_yscale("log")
            axis.set(xlabel="outer step", title=name)
            axis.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(directory / filename, dpi=100)
        pyplot.close(fig)

    figure(["loss", "grad_norm"], "loss.png", "training")
    eval_names = sorted({k for record in history for k in record if k.startswith("eval_")})
    figure(eval_names, "eval.png", "held-out tasks")
