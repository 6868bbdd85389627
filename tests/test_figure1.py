"""examples/figure1.py runs end to end (--quick) and writes its figure, numbers and table."""

import json
import math
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "figure1.py"


def test_figure1_quick_run_writes_png_json_and_table(tmp_path):
    main = runpy.run_path(str(EXAMPLE))["main"]
    main(["--quick", "--out", str(tmp_path)])
    numbers = json.loads((tmp_path / "figure1.json").read_text())
    assert (tmp_path / "figure1.png").stat().st_size > 10_000
    assert set(numbers["relative_error"]) == {label for label, _, _ in
                                              runpy.run_path(str(EXAMPLE))["METHODS"]}
    assert all(math.isfinite(e) for errors in numbers["relative_error"].values() for e in errors)
    table = (tmp_path / "figure1.md").read_text()
    assert table.count("\n") == 2 + len(numbers["relative_error"])
