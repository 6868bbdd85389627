"""Leaves of h fixed by Optuna, the rest learned: paths into h and the values a trial
suggests (`bilevel.problem_view.ProblemView(problem, fixed=...)` is the problem whose
hyperparameters are only the learned ones).

A path is dotted ("log_lam", "log_lam.W"); it names one leaf or every leaf under a
subtree. A `Range` gives one value broadcast over every coordinate of those leaves, or
with `per_coordinate` one value per coordinate, named "<path>.<leaf>[i]".
"""

from typing import cast

import torch

from bilevel.errors import InvalidInputError
from bilevel.tree import MappingKey, tree_leaves_with_path


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
    # h's containers are dicts: every entry of a path is a MappingKey.
    return {keys + tuple(cast(MappingKey, entry).key for entry in where): leaf
            for where, leaf in tree_leaves_with_path(node)}


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
    names: dict[str, dict] = {}
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
