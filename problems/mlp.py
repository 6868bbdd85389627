"""A multilayer perceptron as a dict of tensors (the `torch.func.functional_call` convention).

    f(x) = W_L a(... a(x W_0 + b_0) ...) + b_L,   keys "w0", "b0", ..., "wL", "bL"

`x` is (batch, sizes[0]); weights are stored (fan_in, fan_out).
"""

import math

import torch

from bilevel import BilevelProblem, InvalidInputError, checks


def init_mlp(sizes, generator=None, dtype=torch.float32, device="cpu") -> dict:
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for layer widths `sizes`:
    the default of `torch.nn.Linear`, used by PyTorch ports of MAML. (He's larger scale
    makes 0.01-step inner GD diverge on the sinusoid tasks, inputs in [-5, 5].)"""
    params = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = fan_in**-0.5
        for name, shape in ((f"w{layer}", (fan_in, fan_out)), (f"b{layer}", (fan_out,))):
            uniform = torch.rand(shape, generator=generator, dtype=dtype)
            params[name] = ((2 * uniform - 1) * bound).to(device)
    return params


def mlp(params: dict, x: torch.Tensor, activation=torch.relu) -> torch.Tensor:
    """The network's output (batch, sizes[-1]); `activation` between layers, none after the last."""
    depth = len(params) // 2
    for layer in range(depth):
        x = x @ params[f"w{layer}"] + params[f"b{layer}"]
        if layer < depth - 1:
            x = activation(x)
    return x


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
