"""Multinomial logistic regression on the scikit-learn digits, L2 weight tuned on validation.

The 1797 digits are split at random (seeded) into n_train training, n_val validation
and the rest test images; features are standardised with the training statistics.
phi = {"W": (64, 10), "b": (10,)}, logits x W + b, CE the cross-entropy:

    train_loss(phi) = 1/n sum_{train} CE(x W + b, y)
    g(phi, h)       = train_loss(phi) + 1/2 sum lam (.) phi^2        (regularization "l2")
    F(h)            = val_loss(phi*(h)) = 1/n_v sum_{val} CE(xv W* + b*, yv)

lam = exp(h["log_lam"]): a scalar (per_feature=False), or with per_feature=True
h["log_lam"] = {"W": (64,), "b": ()}: one weight per input feature, shared by the
ten classes, and one for the biases. The inner solver starts from phi = 0; g is
convex, and strongly convex for lam > 0.

A single-task problem: `sample_tasks(n)` returns the training and validation sets
repeated n times (leading dim n, a view). The test set never enters a task: `report`
measures it.
"""

import math

import torch

from bilevel import checks
from problems.classification import cross_entropy, linear_logits
from problems.digits_data import CLASSES, FEATURES
from problems.linear_digits import LinearDigits


class LogReg(LinearDigits):
    """Softmax regression on the digits with a scalar or per-feature L2 weight.

    Args:
        n_train: training images
        n_val: validation images (the rest are the test set)
        per_feature: one L2 weight per input feature (and one for the biases), not one
        lam: the L2 weight's start, > 0
        seed: seeds the split
    """

    def __init__(self, n_train: int = 500, n_val: int = 500, per_feature: bool = False,
                 lam: float = 1e-2, seed: int = 0, dtype=torch.float32, device="cpu"):
        self.per_feature = bool(per_feature)
        self.lam_init = checks.positive("lam", lam)
        self.split(n_train, n_val, seed, dtype, device)

    def init_hyper(self, generator=None):
        """log_lam = log(lam), scalar or per feature (`generator` is not used)."""
        def full(*shape):
            return torch.full(shape, math.log(self.lam_init), dtype=self.dtype,
                              device=self.device)

        return {"log_lam": {"W": full(FEATURES), "b": full()} if self.per_feature else full()}

    def lam(self, h):
        """exp(h["log_lam"]); per feature, each feature's weight covers its ten classes."""
        lam = super().lam(h)
        if not self.per_feature:
            return lam
        return {"W": lam["W"][:, None].expand(FEATURES, CLASSES), "b": lam["b"]}

    def train_loss(self, phi, h, task):
        return cross_entropy(linear_logits(phi, task["x"]), task["y"]).mean()
