"""End-to-end: every example runs a few steps (`--quick`) and writes finite results."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# example script -> the result files it writes (name.md and name.json)
OUTPUTS = {
    "sinusoid": "sinusoid",
    "shared_decoder": "shared_decoder",
    "digits_fewshot": "digits_fewshot",
    "logreg_digits": "logreg",
    "hypercleaning_digits": "hypercleaning",
    "mnist_cleaning_results": "cleaning",
    "ridge_tuning": "ridge",
    "bb_quadratic": "bb_quadratic",
}


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(tree):
    """Every float in a JSON tree."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        return [x for item in tree for x in numbers(item)]
    return [tree] if isinstance(tree, float) else []


@pytest.mark.parametrize("name", OUTPUTS)
def test_example_runs_quick_and_writes_finite_results(name, tmp_path):
    load(name).main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    results = json.loads((tmp_path / f"{OUTPUTS[name]}.json").read_text())["results"]
    values = numbers(results)
    assert values and all(math.isfinite(x) for x in values)
    assert (tmp_path / f"{OUTPUTS[name]}.md").read_text().startswith("# ")


def test_sinusoid_adds_rows_to_an_earlier_run_of_the_same_settings(tmp_path):
    sinusoid = load("sinusoid")
    quick = ["--quick", "--device", "cpu", "--out", str(tmp_path)]
    sinusoid.main([*quick, "--methods", "MAML", "Reptile"])
    before = json.loads((tmp_path / "sinusoid.json").read_text())["results"]
    sinusoid.main([*quick, "--methods", "FO-MAML", "--add"])
    after = json.loads((tmp_path / "sinusoid.json").read_text())
    assert after["results"]["MAML"] == before["MAML"]  # kept, not run again
    assert after["settings"]["methods"] == ["MAML", "FO-MAML", "Reptile"]  # METHODS' order
    assert after["settings"]["added"] == ["FO-MAML"]
    page = (tmp_path / "sinusoid.md").read_text()
    assert all(f"| {name} |" in page for name in ("MAML", "FO-MAML", "Reptile"))
    assert "Rows FO-MAML: added by" in page
    with pytest.raises(SystemExit, match="other seed"):
        sinusoid.main([*quick, "--seed", "1", "--methods", "FO-MAML", "--add"])
