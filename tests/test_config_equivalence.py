"""A problem composed in YAML gives the hypergradient of the same problem written in Python,
on the same tasks and h (float64, fo-bmaml and exact)."""

import pytest
import torch

import bilevel
from bilevel.config import build, from_dict
from bilevel.tree import relative_error
from problems.logreg import LogReg
from problems.sinusoid import Sinusoid
from tests.conftest import seeded

SOLVER = bilevel.solvers.GD(lr=0.02, steps=400)


def composed(problem: dict):
    config = from_dict({"problem": problem, "solver": {"name": "gd", "lr": 0.1, "steps": 1},
                        "steps": 1, "tasks_per_step": 1, "dtype": "float64", "device": "cpu"})
    return build(config).problem


def sinusoid_pair():
    python = Sinusoid(hidden=(8, 8), lam=10.0, activation="tanh", dtype=torch.float64)
    yaml = composed({"source": {"name": "sinusoid", "shots": 10, "queries": 10},
                     "model": {"name": "mlp", "widths": [8, 8], "activation": "tanh"},
                     "loss": "mse", "regularizer": "proximal", "lam": 10.0,
                     "learn_lam": "scalar"})
    tasks = python.sample_tasks(4, seeded(1))
    as_columns = {k: tasks[k][..., None] for k in ("x", "y", "xq", "yq")}
    return python, yaml, python.init_hyper(seeded(0)), tasks, as_columns


def logreg_pair():
    python = LogReg(n_train=300, n_val=300, per_feature=True, lam=0.1, dtype=torch.float64)
    yaml = composed({"source": {"name": "sklearn", "dataset": "digits",
                                "split": {"train": 300, "val": 300}},
                     "model": "linear", "loss": "cross-entropy", "regularizer": "l2",
                     "theta": "fixed", "lam": 0.1, "learn_lam": "per-feature"})
    tasks = python.sample_tasks(1)
    renamed = {"x": tasks["x"], "y": tasks["y"], "xq": tasks["xv"], "yq": tasks["yv"]}
    h = python.init_hyper()
    h = {"log_lam": {"W": h["log_lam"]["W"] + 0.3 * torch.randn(64, generator=seeded(2),
                                                                 dtype=torch.float64),
                     "b": h["log_lam"]["b"]}}
    return python, yaml, h, tasks, renamed


@pytest.mark.parametrize("pair", [sinusoid_pair, logreg_pair])
@pytest.mark.parametrize("method", ["fo-bmaml", "exact"])
def test_composed_problem_matches_python_problem(pair, method):
    python, yaml, h, tasks, yaml_tasks = pair()
    assert yaml.init_hyper().keys() == h.keys()
    options = {"nu": 1e-5} if method == "fo-bmaml" else {}
    expected, info = bilevel.hypergradient(python, h, tasks, solver=SOLVER, method=method,
                                           **options)
    got, yaml_info = bilevel.hypergradient(yaml, h, yaml_tasks, solver=SOLVER, method=method,
                                           **options)
    assert relative_error(got, expected) < 1e-6
    assert torch.allclose(yaml_info["val_loss"], info["val_loss"], rtol=1e-9)
    # not vacuous: the hypergradient is far from zero and from another h's
    other, _ = bilevel.hypergradient(python, bilevel.tree.tree_map(lambda t: t * 0.9, h), tasks,
                                     solver=SOLVER, method=method, **options)
    assert relative_error(other, expected) > 1e-3
