"""docs/extending.md: a solver and an estimator written outside the package pass the
shipped contract suite unchanged. Run in a process of its own, as a user would, so that
their registrations do not leak into the other tests' registries."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_units_pass_the_contract_suite():
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(ROOT / "examples" / "test_custom_units.py")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
