"""What a comparison leaves in its run directory: compare.json (curves and table),
compare.md (the table), compare.png (the curves)."""

import math
from pathlib import Path

from bilevel import strict_json
from bilevel.training.rundir import write_atomically

COLUMNS = [("side", "side", "{}"), ("best_val_loss", "best val loss", "{:.4g}"),
           ("test_loss", "test loss", "{:.4g}"), ("test_accuracy", "test acc", "{:.4f}"),
           ("cost_to_1pct", "cost to 1%", "{:,.0f}"), ("seconds_to_1pct", "s to 1%", "{:.3g}"),
           ("cost", "cost", "{:,.0f}"), ("seconds", "wall s", "{:.3g}")]


def rows(curves: dict, tests: dict) -> list[dict]:
    """One row per side: best validation loss, test metrics (where the problem has a test
    set), cost and seconds to come within 1% of the best of both sides, and spent."""
    finite = [c.best[-1] for c in curves.values() if c.best and math.isfinite(c.best[-1])]
    best = min(finite, default=math.nan)
    target = best + 0.01 * abs(best)
    table = []
    for name, curve in curves.items():
        cost, seconds = curve.to_reach(target)
        table.append({"side": name, "best_val_loss": curve.best[-1] if curve.best else None,
                      **(tests.get(name) or {}), "cost_to_1pct": cost,
                      "seconds_to_1pct": seconds,
                      "cost": curve.cost[-1] if curve.cost else 0.0,
                      "seconds": curve.seconds[-1] if curve.seconds else 0.0})
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = [("-" if row.get(key) is None else form.format(row[key]))
                 for key, _, form in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(directory: Path, curves: dict, table: list[dict], meta: dict) -> None:
    record = meta | {"table": table, "curves": {k: c.as_dict() for k, c in curves.items()}}
    write_atomically(directory / "compare.json", strict_json.dumps(record, indent=2) + "\n")
    write_atomically(directory / "compare.md", markdown(table))
    plot(directory / "compare.png", curves, meta.get("title", ""))


# The plot's y axis ends this many times above the worst final value of the sides (a log
# axis) so that a diverged first trial (2.75e251) does not flatten every curve.
CLIP = 1e3


def y_range(curves: dict) -> tuple[str, float, float]:
    """(scale, bottom, top) of compare.png's y axis: log where every finite best value is
    > 0, else linear; from the smallest best value to CLIP times the largest final one (a
    linear axis: that plus CLIP times their spread), never beyond the largest value."""
    finite = [b for c in curves.values() for b in c.best if math.isfinite(b)]
    if not finite:
        return "linear", 0.0, 1.0
    finals = [c.best[-1] for c in curves.values() if c.best and math.isfinite(c.best[-1])]
    low, high = min(finite), max(finite)
    if low > 0:
        return "log", low / 1.5, min(high, CLIP * max(finals)) * 1.5
    spread = max(max(finals) - low, abs(low), 1e-12)
    return "linear", low - 0.05 * spread, min(high, max(finals) + CLIP * spread) + 0.05 * spread


def plot(path: Path, curves: dict, title: str) -> None:
    """Best validation loss so far against cost (left) and wall seconds (right), the y axis
    of `y_range` (values above it drawn at its top); points whose own value is not finite or
    above the top (diverged trials) are marked with an x at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, bottom, top = y_range(curves)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, curve in curves.items():
        best = [min(b, top) for b in curve.best]
        diverged = [i for i, v in enumerate(curve.values) if not math.isfinite(v) or v > top]
        for axis, x in ((axes[0], curve.cost), (axes[1], curve.seconds)):
            line, = axis.step(x, best, where="post", label=name)
            if diverged:
                axis.plot([x[i] for i in diverged], [top] * len(diverged), "x",
                          color=line.get_color(), label=f"{name}: diverged or clipped")
    axes[0].set_xlabel("inner gradient evaluations (+ HVPs)")
    axes[1].set_xlabel("wall seconds")
    for axis in axes:  # a margin above the clip, so that its marks show whole
        axis.set_yscale(scale)
        axis.set_ylim(bottom, top * 2 if scale == "log" else top + 0.05 * (top - bottom))
        axis.set_ylabel("best validation loss so far")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
