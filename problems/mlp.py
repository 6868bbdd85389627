"""A multilayer perceptron as a dict of tensors (the `torch.func.functional_call` convention).

    f(x) = W_L a(... a(x W_0 + b_0) ...) + b_L,   keys "w0", "b0", ..., "wL", "bL"

`x` is (batch, sizes[0]); weights are stored (fan_in, fan_out).
"""

import torch


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
