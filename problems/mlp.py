"""A multilayer perceptron as a dict of tensors (the `torch.func.functional_call` convention).

    f(x) = W_L a(... a(x W_0 + b_0) ...) + b_L,   keys "w0", "b0", ..., "wL", "bL"

`x` is (batch, sizes[0]); weights are stored (fan_in, fan_out).
"""

import torch


def init_mlp(sizes, generator=None, dtype=torch.float32, device="cpu") -> dict:
    """He-initialised weights (std sqrt(2 / fan_in)) and zero biases for layer widths `sizes`."""
    params = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        weight = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype)
        params[f"w{layer}"] = (weight * (2 / fan_in) ** 0.5).to(device)
        params[f"b{layer}"] = torch.zeros(fan_out, dtype=dtype, device=device)
    return params


def mlp(params: dict, x: torch.Tensor, activation=torch.relu) -> torch.Tensor:
    """The network's output (batch, sizes[-1]); `activation` between layers, none after the last."""
    depth = len(params) // 2
    for layer in range(depth):
        x = x @ params[f"w{layer}"] + params[f"b{layer}"]
        if layer < depth - 1:
            x = activation(x)
    return x
