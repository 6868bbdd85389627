"""A B-MAML prior over a multilayer perceptron; the network itself (`init_mlp`, `mlp`:
keys "w0", "b0", ..., "wL", "bL", weights stored (fan_in, fan_out)) is the library's model
block `bilevel.blocks.models`, shared with problems composed in YAML.
"""

import math

import torch

from bilevel import BilevelProblem, InvalidInputError, checks
from bilevel.blocks.models import init_mlp, mlp

__all__ = ["MLPPrior", "init_mlp", "mlp"]


class MLPPrior(BilevelProblem):
    """A B-MAML prior over an MLP: h = {"theta": the MLP's tensors, "log_lam"}, or
    h = {"theta"} with lam fixed. Subclasses call `set_prior` in their __init__."""

    def set_prior(self, sizes, lam, learn_lam, dtype, device):
        self.sizes = tuple(sizes)
        self.lam_init = checks.positive("lam", lam)
        if not isinstance(learn_lam, bool):
            raise InvalidInputError(f"learn_lam must be True or False, got {learn_lam!r}")
        self.learn_lam = learn_lam
        self.dtype, self.device = dtype, torch.device(device)

    def init_hyper(self, generator=None):
        theta = init_mlp(self.sizes, generator, self.dtype, self.device)
        if not self.learn_lam:
            return {"theta": theta}
        log_lam = torch.tensor(math.log(self.lam_init), dtype=self.dtype, device=self.device)
        return {"theta": theta, "log_lam": log_lam}

    def lam(self, h):
        """exp(h["log_lam"]) when lam is learned, the constructor's `lam` otherwise."""
        if self.learn_lam:
            return super().lam(h)
        return torch.tensor(self.lam_init, dtype=self.dtype, device=self.device)
