"""Models as pure functions of a dict of tensors (the `torch.func.functional_call`
convention), layer by layer, so that a problem can share some layers across tasks.

    linear:  f(x) = x W + b                                  keys "W", "b"
    mlp:     f(x) = W_L a(... a(x W_0 + b_0) ...) + b_L      keys "w0", "b0", ..., "wL", "bL"
    cnn:     f(x) = flatten(B_{L-1}(... B_0(x))) W_L + b_L   keys "w0", "b0", ..., "wL", "bL"
             B_l(x) = pool(a(norm(conv(x, w_l) + b_l)))      (1-D signals or 2-D images)

Weights of linear maps are stored (fan_in, fan_out); those of convolutions
(out channels, in channels, *kernel), as torch.nn.functional.conv1d / conv2d take them.
"""

import dataclasses
import math
import numbers

import torch
import torch.nn.functional as F

from bilevel import checks
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry

models = Registry("model")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "gelu": torch.nn.functional.gelu}
ACTIVATION = f"the activation between layers: {', '.join(ACTIVATIONS)}"


def init_mlp(sizes, generator=None, dtype=torch.float32, device="cpu") -> dict:
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for layer widths `sizes`:
    the default of `torch.nn.Linear`, used by PyTorch ports of MAML."""
    params: dict[str, torch.Tensor] = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params |= init_layer(layer, (fan_in, fan_out), fan_in, generator, dtype, device)
    return params


def init_layer(layer: int, shape: tuple, fan_in: int, generator, dtype, device) -> dict:
    """{"w<layer>": shape, "b<layer>": (shape[-1] for a matrix, shape[0] for a convolution's
    (out, in, *kernel) weights)}, each ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bias = shape[-1] if len(shape) == 2 else shape[0]
    params = {}
    for name, size in ((f"w{layer}", shape), (f"b{layer}", (bias,))):
        uniform = torch.rand(size, generator=generator, dtype=dtype)
        params[name] = ((2 * uniform - 1) * fan_in**-0.5).to(device)
    return params


def mlp(params: dict, x: torch.Tensor, activation=torch.relu) -> torch.Tensor:
    """The network's output (batch, sizes[-1]); `activation` between layers, none after the last."""
    depth = len(params) // 2
    for layer in range(depth):
        x = x @ params[f"w{layer}"] + params[f"b{layer}"]
        if layer < depth - 1:
            x = activation(x)
    return x


def flat_inputs(model: str, inputs) -> int:
    """The features of a source whose examples are vectors (`Tasks.inputs` an int); a
    source of images (a shape) is an error for a model of vectors."""
    if isinstance(inputs, numbers.Integral):
        return int(inputs)
    raise InvalidInputError(f"model {model}: takes examples that are vectors, but the source "
                            f"gives examples of shape {tuple(inputs)}; use model cnn")


@models.register("linear")
@dataclasses.dataclass(frozen=True)
class Linear:
    """f(x) = x W + b, one layer; starts at zero (a convex inner problem needs no random start)."""

    def layers(self, inputs: int, outputs: int) -> list[list[str]]:
        return [["W", "b"]]

    def init(self, inputs, outputs, generator=None, dtype=torch.float32, device="cpu") -> dict:
        inputs = flat_inputs("linear", inputs)
        return {"W": torch.zeros(inputs, outputs, dtype=dtype, device=device),
                "b": torch.zeros(outputs, dtype=dtype, device=device)}

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return x @ params["W"] + params["b"]


@models.register("mlp")
@dataclasses.dataclass(frozen=True)
class MLP:
    """A multilayer perceptron with hidden layer `widths` and `activation` between layers."""

    widths: tuple[int, ...] = checks.option("the hidden layers' widths, each >= 1 (empty: "
                                            "a linear model)", (40, 40))
    activation: str = checks.option(ACTIVATION, "relu")

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(
            checks.integer("widths", w, minimum=1) for w in self.widths))
        checks.one_of("activation", self.activation, tuple(ACTIVATIONS))

    def layers(self, inputs: int, outputs: int) -> list[list[str]]:
        return [[f"w{i}", f"b{i}"] for i in range(len(self.widths) + 1)]

    def init(self, inputs, outputs, generator=None, dtype=torch.float32, device="cpu") -> dict:
        sizes = (flat_inputs("mlp", inputs), *self.widths, outputs)
        return init_mlp(sizes, generator, dtype, device)

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return mlp(params, x, ACTIVATIONS[self.activation])


NORMS = ("none", "layer")
POOLS = {"none": None, "max": torch.amax, "avg": torch.mean}
CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d}


def halve(x: torch.Tensor, spatial: int, reduce) -> torch.Tensor:
    """Pooling by 2 over the last `spatial` dimensions (an odd last row or column dropped),
    `reduce` (amax or mean) over each window: reshapes, which vmap, jvp and double backward
    all take."""
    if spatial == 1:
        n = x.shape[-1] // 2
        return reduce(x[..., :2 * n].unflatten(-1, (n, 2)), (-1,))
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    windows = x[..., :2 * h, :2 * w].unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
    return reduce(windows, (-3, -1))


def cnn(params: dict, x: torch.Tensor, activation=torch.relu, pool=None,
        norm: bool = False) -> torch.Tensor:
    """The network's output (rows, outputs) for x (rows, length) or (rows, height, width),
    one input channel: convolutions "w0", ... ("same" padding, stride 1; conv1d or conv2d
    as the weights' shape says), each followed by an optional per-example layer norm (no
    learned scale), `activation` and, unless `pool` is None, a pooling by 2 (`pool`: amax
    or mean, `halve`), then the flattened features times the head "wL" plus "bL"."""
    depth = len(params) // 2 - 1
    spatial = params["w0"].ndim - 2
    x = x.unsqueeze(1)
    for layer in range(depth):
        x = CONVOLUTIONS[spatial](x, params[f"w{layer}"], params[f"b{layer}"], padding="same")
        if norm:
            x = F.layer_norm(x, x.shape[1:])
        x = activation(x)
        if pool is not None:
            x = halve(x, spatial, pool)
    return x.flatten(1) @ params[f"w{depth}"] + params[f"b{depth}"]


@models.register("cnn")
@dataclasses.dataclass(frozen=True)
class CNN:
    """Convolutions with `channels` output channels each and `kernel`-wide (kernel x kernel
    on images) filters, then a linear head on the flattened features; 1-D or 2-D as the
    source's examples are (signals: `inputs` an int; images: (height, width)). Each block
    is conv, `norm` (none, or layer: per example, no state), `activation`, `pool` (none,
    max or avg by 2). Layers 0.. are the convolutions, the last the head (`shared_layers`)."""

    channels: tuple[int, ...] = checks.option("output channels of each convolution, each "
                                              ">= 1", (32, 32, 32))
    kernel: int = checks.option("the filters' width (kernel x kernel on images)", 3,
                                minimum=1)
    activation: str = checks.option(ACTIVATION, "relu")
    pool: str = checks.option("pooling by 2 after each block: none, max or avg", "none")
    norm: str = checks.option("normalisation after each convolution: none, or layer (per "
                              "example, no state)", "none")

    def __post_init__(self):
        if isinstance(self.channels, (str, int)) or not self.channels:
            raise InvalidInputError(f"channels must be a non-empty list of integers >= 1, got "
                                    f"{self.channels!r}")
        object.__setattr__(self, "channels", tuple(
            checks.integer("channels", c, minimum=1) for c in self.channels))
        checks.in_bounds(self)
        checks.one_of("activation", self.activation, tuple(ACTIVATIONS))
        checks.one_of("pool", self.pool, tuple(POOLS))
        checks.one_of("norm", self.norm, NORMS)

    def layers(self, inputs, outputs: int) -> list[list[str]]:
        return [[f"w{i}", f"b{i}"] for i in range(len(self.channels) + 1)]

    def sizes(self, inputs) -> list[tuple[int, ...]]:
        """The spatial shape that each convolution sees, and last the head's (before
        flattening); a kernel longer than a convolution's input is an error."""
        shape = (int(inputs),) if isinstance(inputs, numbers.Integral) else tuple(inputs)
        if len(shape) not in CONVOLUTIONS:
            raise InvalidInputError(f"model cnn: takes signals (a length) or images (height, "
                                    f"width), but the source gives examples of shape {shape}")
        sizes = [shape]
        for layer in range(len(self.channels)):
            if min(shape) < self.kernel:
                what = "the input" if layer == 0 else f"convolution {layer}'s input"
                raise InvalidInputError(f"kernel: {self.kernel} is longer than {what}, of "
                                        f"shape {shape} (pool: {self.pool})")
            if self.pool != "none":
                shape = tuple(n // 2 for n in shape)
            sizes.append(shape)
        if min(shape) < 1:
            raise InvalidInputError(f"pool: {self.pool} halves the input {sizes[0]} to nothing "
                                    f"after {len(self.channels)} convolutions")
        return sizes

    def init(self, inputs, outputs, generator=None, dtype=torch.float32, device="cpu") -> dict:
        sizes = self.sizes(inputs)
        spatial = len(sizes[0])
        params: dict[str, torch.Tensor] = {}
        before = 1
        for layer, after in enumerate(self.channels):
            shape = (after, before, *(self.kernel,) * spatial)
            params |= init_layer(layer, shape, before * self.kernel**spatial, generator, dtype,
                                 device)
            before = after
        features = before * math.prod(sizes[-1])
        return params | init_layer(len(self.channels), (features, outputs), features,
                                   generator, dtype, device)

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return cnn(params, x, ACTIVATIONS[self.activation], POOLS[self.pool],
                   self.norm == "layer")
