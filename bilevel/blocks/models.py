"""Models as pure functions of a dict of tensors (the `torch.func.functional_call`
convention), layer by layer, so that a problem can share some layers across tasks.

    linear:  f(x) = x W + b                                  keys "W", "b"
    mlp:     f(x) = W_L a(... a(x W_0 + b_0) ...) + b_L      keys "w0", "b0", ..., "wL", "bL"

Weights are stored (fan_in, fan_out).
"""

import dataclasses

import torch

from bilevel import checks
from bilevel.registry import Registry

models = Registry("model")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "gelu": torch.nn.functional.gelu}


def init_mlp(sizes, generator=None, dtype=torch.float32, device="cpu") -> dict:
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for layer widths `sizes`:
    the default of `torch.nn.Linear`, used by PyTorch ports of MAML."""
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


@models.register("linear")
@dataclasses.dataclass(frozen=True)
class Linear:
    """f(x) = x W + b, one layer; starts at zero (a convex inner problem needs no random start)."""

    def layers(self, inputs: int, outputs: int) -> list[list[str]]:
        return [["W", "b"]]

    def init(self, inputs, outputs, generator=None, dtype=torch.float32, device="cpu") -> dict:
        return {"W": torch.zeros(inputs, outputs, dtype=dtype, device=device),
                "b": torch.zeros(outputs, dtype=dtype, device=device)}

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return x @ params["W"] + params["b"]


@models.register("mlp")
@dataclasses.dataclass(frozen=True)
class MLP:
    """A multilayer perceptron with hidden layer `widths` and `activation` between layers."""

    widths: tuple[int, ...] = (40, 40)
    activation: str = "relu"

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(
            checks.integer("widths", w, minimum=1) for w in self.widths))
        checks.one_of("activation", self.activation, tuple(ACTIVATIONS))

    def layers(self, inputs: int, outputs: int) -> list[list[str]]:
        return [[f"w{i}", f"b{i}"] for i in range(len(self.widths) + 1)]

    def init(self, inputs, outputs, generator=None, dtype=torch.float32, device="cpu") -> dict:
        return init_mlp((inputs, *self.widths, outputs), generator, dtype, device)

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return mlp(params, x, ACTIVATIONS[self.activation])
