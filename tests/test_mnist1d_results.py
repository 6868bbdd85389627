"""examples/mnist1d_results.py runs end to end (--quick) and writes its page, numbers and plot:
every method at both budgets, the equal-time step counts from the measured step times, the
goal lines and the memory section."""

import json
import math
import runpy
from pathlib import Path

import pytest

pytest.importorskip("mnist1d")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist1d_results.py"


def test_quick_run_writes_page_json_and_plot(tmp_path):
    script = runpy.run_path(str(EXAMPLE))
    script["main"](["--quick", "--device", "cpu", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "mnist1d.json").read_text())
    settings, results = record["settings"], record["results"]
    labels = [label for label, _, _ in script["METHODS"]]
    assert [r["label"] for r in results["methods"]] == labels
    times, budget = results["step_times_s"], results["budget_s"]
    assert set(times) == set(labels) and all(t > 0 for t in times.values())
    assert budget == pytest.approx(settings["steps"] * max(times.values()))
    for r in results["methods"]:
        assert r["steps_equal_time"] == max(settings["steps"],
                                            math.floor(budget / times[r["label"]]))
        assert r["equal_steps"]["step"] == settings["steps"]
        assert r["equal_time"]["step"] == r["steps_equal_time"]
        for row in r["curve"]:
            assert 0 <= row["accuracy"] <= 1 and math.isfinite(row["ci95"]) and row["ci95"] > 0
    slowest = max(labels, key=times.get)
    assert results["methods"][labels.index(slowest)]["steps_equal_time"] == settings["steps"]
    page = (tmp_path / "mnist1d.md").read_text()
    assert page.startswith("# ") and "mnist1d_results.py --quick" in page.splitlines()[2]
    assert "do not edit by hand" in page.splitlines()[2]
    table = [line for line in page.splitlines() if line.startswith("| ")]
    assert all(any(line.startswith(f"| {label} |") for line in table) for label in labels)
    assert page.count("- FO-B-MAML - MAML:") == 2
    assert "## Memory per meta-step" in page
    assert (tmp_path / "mnist1d.png").stat().st_size > 10_000
    (tmp_path / "mnist1d.png").unlink()
    script["main"](["--render", "--out", str(tmp_path)])  # from the JSON, no training
    again = (tmp_path / "mnist1d.md").read_text()
    assert "Rendered again" in again.splitlines()[2]
    assert again.splitlines()[3:] == page.splitlines()[3:]
    assert (tmp_path / "mnist1d.png").stat().st_size > 10_000


def test_memory_section_renders_the_benchmark_rows_and_the_16_gib_fits(tmp_path, monkeypatch):
    script = runpy.run_path(str(EXAMPLE))
    rows = [{"method": m, "steps": s, "channels": c, "parameters": 1,
             "peak_memory_mib": 500.0 + s * c, "peak_memory_added_mib": float(s * c),
             "time_s": 0.1, "repeats": 2}
            for m in ("maml", "fomaml") for s, c in ((5, 16), (100, 16), (25, 16), (25, 256))]
    fits = [{"method": "maml", "steps": 100, "channels": 64, "peak_memory_mib": 9000.0,
             "extrapolated": True},
            {"method": "fomaml", "steps": 100, "channels": 1024, "peak_memory_mib": 700.0,
             "extrapolated": True}]
    most_steps = [{"method": "maml", "steps": 353, "channels": 256, "peak_memory_mib": 16300.0,
                   "extrapolated": True}]
    checks = [{"method": "maml", "steps": 100, "channels": 352,
               "measured_peak_memory_mib": 8967.0, "predicted_peak_memory_mib": 9011.0}]
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"command": "python benchmarks/mnist1d_memory.py", "rows": rows,
                                "fit_16gib": fits, "fit_16gib_steps": most_steps,
                                "fit_check": checks}))
    section = script["memory_section"]
    monkeypatch.setitem(section.__globals__, "MEMORY", path)
    monkeypatch.setitem(section.__globals__, "MEMORY_PLOT", tmp_path / "none.png")
    lines = section()
    text = "\n".join(lines)
    assert "| method | steps 5 | steps 25 | steps 100 |" in text  # at 16 channels
    assert "| maml | 80.0 (580) | 400.0 (900) | 1600.0 (2100) |" in text
    assert "| method | channels 16 | channels 256 |" in text  # at 25 steps
    assert "| fomaml | 400.0 (900) | 6400.0 (6900) |" in text
    assert "| maml | 64 | 9000 | 353 | 16300 |" in text
    assert "| fomaml | >= 1024 | 700 | - | - |" in text  # the search's end; no step limit
    assert "predicted 9011 MiB, measured 8967 MiB" in text
    assert "![" not in text  # no plot file
