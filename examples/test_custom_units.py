"""The shipped contract suites run, unchanged, on this directory's own solver and estimator
(docs/extending.md): `pytest examples/test_custom_units.py`."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import custom_estimator  # noqa: E402, F401  (registers "neumann-jvp")
import custom_solver  # noqa: E402  (registers "heavy-ball")

from bilevel.testing import EstimatorContract, SolverContract  # noqa: E402


class TestNeumannJvp(EstimatorContract):
    @pytest.fixture
    def method(self):
        return "neumann-jvp"


class TestHeavyBall(SolverContract):
    @pytest.fixture
    def solver(self):
        return custom_solver.HeavyBall(lr=1 / 13, steps=20, momentum=0.5)
