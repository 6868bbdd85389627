"""Per-example weights of the training loss (data hyper-cleaning, Franceschi et al. 2017,
sec. 5.1), a learned logit w_i per training example:

    train_loss(phi, h) = 1/n sum_i s(w_i) loss(f(x_i), y_i),    s(w) = 1 / (1 + e^{-w})

A sigmoid, not a softmax over the examples: each weight lies in (0, 1) on its own, so one
example can be dropped without raising the others, a weight's gradient does not shrink
with n (a softmax's weights are about 1/n each), and with every w_i large the loss is the
plain mean, the problem without weights.
"""

import torch

WEIGHT_SHAPES = ("none", "per-example")
KEY = "example_logit"


def per_example(loss, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(rows,): `loss` (a mean over rows, `bilevel.blocks.losses`) of each row on its own."""
    return torch.vmap(lambda p, t: loss(p[None], t[None]))(prediction, target)


def weighted_loss(loss, prediction: torch.Tensor, target: torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor:
    """1/n sum_i sigmoid(logits_i) loss_i, the rows' losses weighted by their sigmoids."""
    return (torch.sigmoid(logits) * per_example(loss, prediction, target)).mean()


def detection(logits: torch.Tensor, corrupted: torch.Tensor, threshold: float = 0.1) -> dict:
    """How well weights below `threshold` pick out the `corrupted` rows, as numbers:
    flagged: rows weighted below it; flagged_precision: the fraction of those that are
    corrupted (0 when none is flagged); flagged_recall: the fraction of corrupted rows
    flagged (0 when none is corrupted)."""
    flagged = torch.sigmoid(logits) < threshold
    hits = (flagged & corrupted).sum().item()
    count, bad = flagged.sum().item(), corrupted.sum().item()
    return {"flagged": count, "flagged_precision": hits / count if count else 0.0,
            "flagged_recall": hits / bad if bad else 0.0}
