"""The penalty on the hyperparameters (`meta_train(..., hyper_penalty=...)`): its value and
gradient against autograd, the leaves it names, its effect on a per-feature run."""

import json

import pytest
import torch
from torch.utils._pytree import tree_flatten

import bilevel
from bilevel.errors import InvalidInputError
from bilevel.training.hyper_penalty import HyperPenalty
from problems.logreg import LogReg


def test_value_and_gradient_are_autograds():
    h = {"log_lam": {"W": torch.randn(5, dtype=torch.float64), "b": torch.tensor(0.3)},
         "other": torch.randn(2, 3, dtype=torch.float64)}
    penalty = HyperPenalty(weight=0.7, leaves=["log_lam.W", "other"])
    mask = penalty.mask(h)
    assert mask == [True, False, True]
    leaves = [leaf.clone().requires_grad_(True) for leaf in tree_flatten(h)[0]]
    value, grads = penalty.value_and_grad(leaves, mask)
    reference = sum(0.35 * (leaf - leaf.mean()).square().sum()
                    for leaf, chosen in zip(leaves, mask, strict=True) if chosen)
    expected = torch.autograd.grad(reference, leaves, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(value, reference.detach().double())
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert HyperPenalty(weight=1.0).mask(h) == [True, True, True]


@pytest.mark.parametrize("value, message", [
    ({"weight": 0}, "hyper_penalty.weight"),
    ({"weight": 1, "leaves": "log_lam"}, "hyper_penalty.leaves must be a list"),
    ({"weight": 1, "leaves": ["log_lam.V"]}, "'log_lam.V' names no leaf of h"),
    ({"leaves": ["log_lam"]}, "weight required"),
])
def test_arguments_are_checked(value, message):
    problem = LogReg(n_train=50, n_val=50, per_feature=True, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match=message):
        bilevel.meta_train(problem, solver={"name": "gd", "lr": 0.1, "steps": 2}, steps=1,
                           tasks_per_step=1, progress=False, hyper_penalty=value)


def test_a_heavy_penalty_keeps_per_feature_weights_together(tmp_path):
    problem = LogReg(n_train=100, n_val=100, per_feature=True, dtype=torch.float64)
    settings = dict(solver=bilevel.solvers.Nesterov(lr=0.3, steps=20, momentum=0.8),
                    outer={"name": "adam", "lr": 0.3}, steps=6, tasks_per_step=1,
                    progress=False)
    free = bilevel.meta_train(problem, **settings).h["log_lam"]["W"]
    penalty = {"weight": 10.0, "leaves": ["log_lam.W"]}
    held = bilevel.meta_train(problem, **settings, hyper_penalty=penalty, out=tmp_path)
    assert held.h["log_lam"]["W"].std() < 0.2 * free.std()
    assert all(r["hyper_penalty"] >= 0 for r in held.history)
    recorded = json.loads((tmp_path / "settings.json").read_text())["hyper_penalty"]
    assert recorded == {"weight": 10.0, "leaves": ["log_lam.W"]}
