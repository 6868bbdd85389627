"""examples/outer_optimizers.py (--quick): every outer optimizer lowers F towards min F."""

import json
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "outer_optimizers.py"


def test_every_outer_optimizer_closes_the_gap_to_min_f(tmp_path):
    runpy.run_path(str(EXAMPLE))["main"](["--quick", "--out", str(tmp_path)])
    gaps = json.loads((tmp_path / "outer_optimizers.json").read_text())["gap"]
    assert set(gaps) == {"clipped-gd", "normalized-gd", "adam", "sgd"}
    for gap in gaps.values():
        assert gap[0] > 0.1 and 0 <= gap[-1] < 0.5 * gap[0]
    assert (tmp_path / "outer_optimizers.png").stat().st_size > 10_000
