"""Softmax classification helpers shared by the digits problems (one example per row)."""

import torch
import torch.nn.functional as F

from bilevel.info import LOSS_KEY


def init_linear(features: int, classes: int, dtype, device) -> dict:
    """A zero linear classifier {"W": (features, classes), "b": (classes,)}."""
    return {"W": torch.zeros(features, classes, dtype=dtype, device=device),
            "b": torch.zeros(classes, dtype=dtype, device=device)}


def linear_logits(phi: dict, x: torch.Tensor) -> torch.Tensor:
    """x W + b."""
    return x @ phi["W"] + phi["b"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example -log softmax(logits)[label], shape (batch,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is the label, in the logits' dtype."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"val_loss": mean cross-entropy, "accuracy": ...} of one task's held-out examples."""
    return {LOSS_KEY: cross_entropy(logits, labels).mean(), "accuracy": accuracy(logits, labels)}
