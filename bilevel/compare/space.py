"""Leaves of h fixed by Optuna, the rest learned: paths into h, the values a trial
suggests, and `PartlyFixed`, the problem whose hyperparameters are only the learned ones.

A path is dotted ("log_lam", "log_lam.W"); it names one leaf or every leaf under a
subtree. A `Range` gives one value broadcast over every coordinate of those leaves, or
with `per_coordinate` one value per coordinate, named "<path>.<leaf>[i]".
"""

import torch
from torch.utils._pytree import tree_leaves_with_path

from bilevel.errors import InvalidInputError
from bilevel.problem import BilevelProblem


def leaves_under(h: dict, path: str) -> dict[tuple, torch.Tensor]:
    """{leaf path (tuple of keys): tensor} for every leaf of h at or under dotted `path`."""
    node = h
    keys = tuple(path.split("."))
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            have = sorted(node) if isinstance(node, dict) else []
            raise InvalidInputError(f"{path!r} is not a path in h: {'.'.join(keys[:depth + 1])!r} "
                                    f"does not exist (keys there: {', '.join(have) or 'none'})")
        node = node[key]
    return {keys + tuple(entry.key for entry in where): leaf
            for where, leaf in tree_leaves_with_path(node)}


def split(h: dict, fixed: set[tuple]) -> dict:
    """h without the leaves at the paths in `fixed` (and without subtrees left empty)."""
    kept = {}
    for key, child in h.items():
        if isinstance(child, dict):
            child = split(child, {p[1:] for p in fixed if p[:1] == (key,)})
            if child:
                kept[key] = child
        elif (key,) not in fixed:
            kept[key] = child
    return kept


def merge(learned: dict, fixed: dict[tuple, torch.Tensor]) -> dict:
    """`learned` with each fixed leaf put back at its path (new dicts; inputs untouched)."""
    h = dict(learned)
    for path, value in fixed.items():
        node = h
        for key in path[:-1]:
            node[key] = dict(node.get(key, {}))
            node = node[key]
        node[path[-1]] = value
    return h


def fixed_values(h: dict, space: dict, values: dict) -> dict[tuple, torch.Tensor]:
    """The fixed leaves {path: tensor} of h (init_hyper's, for shapes) for one trial's
    `values` {parameter name: number}, as named by `parameter_names`."""
    fixed = {}
    for key, spec in space.items():
        for path, leaf in leaves_under(h, key).items():
            if spec["per_coordinate"]:
                numbers = [values[name] for name in coordinate_names(key, path, leaf)]
                fixed[path] = torch.tensor(numbers, dtype=leaf.dtype,
                                           device=leaf.device).reshape(leaf.shape)
            else:
                fixed[path] = torch.full_like(leaf, values[key])
    return fixed


def parameter_names(h: dict, space: dict) -> dict[str, dict]:
    """{Optuna parameter name: its Range spec} for the leaves of h that `space` fixes."""
    names = {}
    for key, spec in space.items():
        for path, leaf in leaves_under(h, key).items():
            if spec["per_coordinate"]:
                names |= dict.fromkeys(coordinate_names(key, path, leaf), spec)
            else:
                names[key] = spec
    return names


def coordinate_names(key: str, path: tuple, leaf: torch.Tensor) -> list[str]:
    rest = ".".join(path[len(key.split(".")):])
    base = f"{key}.{rest}" if rest else key
    return [f"{base}[{i}]" for i in range(leaf.numel())]


class PartlyFixed(BilevelProblem):
    """`problem` with some leaves of h fixed: its hyperparameters are the others.

    Every method merges the fixed leaves into h and calls `problem`'s own, so
    hypergradients, training and evaluation see exactly the problem at h = learned +
    fixed. Other attributes (`test_tasks`, `report`, ...) are `problem`'s.
    """

    def __init__(self, problem: BilevelProblem, fixed: dict[tuple, torch.Tensor]):
        self.problem, self.fixed = problem, fixed
        self.regularization = problem.regularization

    def __getattr__(self, name):
        return getattr(self.__dict__["problem"], name)

    def full(self, h: dict) -> dict:
        return merge(h, self.fixed)

    def init_hyper(self, generator=None):
        return split(self.problem.init_hyper(generator), set(self.fixed))

    def sample_tasks(self, n, generator=None):
        return self.problem.sample_tasks(n, generator)

    def train_loss(self, phi, h, task):
        return self.problem.train_loss(phi, self.full(h), task)

    def val_loss(self, phi, h, task):
        return self.problem.val_loss(phi, self.full(h), task)

    def regularizer(self, phi, h):
        return self.problem.regularizer(phi, self.full(h))

    def lam(self, h):
        return self.problem.lam(self.full(h))

    def inner_init(self, h, task):
        return self.problem.inner_init(self.full(h), task)

    def penalty(self, phi, h):
        return self.problem.penalty(phi, self.full(h))

    def inner_objective(self, phi, h, task):
        return self.problem.inner_objective(phi, self.full(h), task)

    def eval_metrics(self, phi, h, task):
        return self.problem.eval_metrics(phi, self.full(h), task)
