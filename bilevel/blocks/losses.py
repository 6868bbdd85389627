"""Losses of one batch of predictions, reduced to a scalar mean, by name.

    mse:            mean over rows and outputs of (f(x) - y)^2
    cross-entropy:  mean over rows of -log softmax(f(x))[y]        (y: integer labels)
"""

import torch
import torch.nn.functional as F

from bilevel.registry import Registry

losses = Registry("loss function")


@losses.register("mse")
def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction - target.reshape(prediction.shape)) ** 2).mean()


@losses.register("cross-entropy")
def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is the label, in the logits' dtype."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()
