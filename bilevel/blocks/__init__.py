"""Building blocks of problems composed without Python (`ComposedProblem`): task sources,
models and losses, each in an open registry, so that a config names them."""

from bilevel.blocks import (
    mnist,  # noqa: F401  registers the `mnist` source
    mnist1d,  # noqa: F401  registers the `mnist1d` source
)
from bilevel.blocks.composed import ComposedProblem
from bilevel.blocks.losses import losses
from bilevel.blocks.models import models
from bilevel.blocks.sources import sources

__all__ = ["ComposedProblem", "losses", "models", "sources"]
