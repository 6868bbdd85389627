"""examples/figure1.py runs end to end (--quick) and writes its figure, numbers and table."""

import json
import math
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "figure1.py"


def test_figure1_quick_run_writes_png_json_and_table(tmp_path):
    example = runpy.run_path(str(EXAMPLE))
    example["main"](["--quick", "--out", str(tmp_path)])
    numbers = json.loads((tmp_path / "figure1.json").read_text())
    assert (tmp_path / "figure1.png").stat().st_size > 10_000
    double = {label for label, _, _ in example["METHODS"]}
    single = {label for label, _, _ in example["SINGLE_LOOP"]}
    assert set(numbers["relative_error"]) == double
    assert all(math.isfinite(e) for errors in numbers["relative_error"].values() for e in errors)
    # the single-loop solvers are on the right panel only, each outer iteration cheaper
    assert set(numbers["outer_loss"]) == double | single
    fobmaml = numbers["outer_loss"]["FO-B-MAML symmetric"]["oracle_calls"]
    for label in single:
        run = numbers["outer_loss"][label]
        assert len(run["loss"]) == numbers["setting"]["outer_steps"] + 1
        assert 0 < run["oracle_calls"] < fobmaml
    rows = [line for line in (tmp_path / "figure1.md").read_text().splitlines()
            if line.startswith("|")]
    assert len(rows) == 2 + len(double) + len(single)
