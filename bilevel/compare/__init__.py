"""`bilevel compare`: the bilevel method against Optuna on the same problem and budget, and
Optuna searching some of a config's keys while hypergradients learn the rest (the hybrid).
Sits above `bilevel.config`; only the CLI sits above it. The one layer that imports Optuna."""

from bilevel.compare.run import compare

__all__ = ["compare"]
