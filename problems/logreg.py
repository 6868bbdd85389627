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

from bilevel import BilevelProblem, checks, solve_inner
from problems.classification import accuracy, cross_entropy, init_linear, linear_logits
from problems.digits_data import CLASSES, FEATURES, digits, random_split, standardize


class LogReg(BilevelProblem):
    """Softmax regression on the digits with a scalar or per-feature L2 weight."""

    regularization = "l2"

    def __init__(self, n_train=500, n_val=500, per_feature=False, lam=1e-2, seed=0,
                 dtype=torch.float32, device="cpu"):
        self.n_train = checks.integer("n_train", n_train, minimum=1)
        self.n_val = checks.integer("n_val", n_val, minimum=1)
        self.per_feature = bool(per_feature)
        self.lam_init = checks.positive("lam", lam)
        self.dtype, self.device = dtype, torch.device(device)
        x, y = digits(dtype, self.device)
        n_test = checks.integer("1797 - n_train - n_val (test images)",
                                len(y) - n_train - n_val, minimum=1)
        generator = torch.Generator().manual_seed(checks.integer("seed", seed))
        train, val, test = random_split(len(y), (n_train, n_val, n_test), generator)
        x_train, x_val, x_test = standardize(x[train], x[val], x[test])
        self.data = {"x": x_train, "y": y[train], "xv": x_val, "yv": y[val]}
        self.test = {"x": x_test, "y": y[test]}

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

    def sample_tasks(self, n, generator=None):
        """{"x", "y", "xv", "yv"} (training and validation sets) repeated n times."""
        checks.integer("n", n, minimum=1)
        return {k: v.expand(n, *v.shape) for k, v in self.data.items()}

    def inner_init(self, h, task):
        return init_linear(FEATURES, CLASSES, self.dtype, self.device)

    def train_loss(self, phi, h, task):
        return cross_entropy(linear_logits(phi, task["x"]), task["y"]).mean()

    def val_loss(self, phi, h, task):
        return cross_entropy(linear_logits(phi, task["xv"]), task["yv"]).mean()

    def eval_metrics(self, phi, h, task) -> dict:
        """{"val_loss", "accuracy"} on the task's validation set."""
        logits = linear_logits(phi, task["xv"])
        return {"val_loss": cross_entropy(logits, task["yv"]).mean(),
                "accuracy": accuracy(logits, task["yv"])}

    def report(self, h, solver) -> dict:
        """Solve the inner problem for h with `solver`; validation and test loss, test
        accuracy, and the final inner gradient norm, as floats."""
        phi, stats = solve_inner(self, h, self.data, solver)
        logits = linear_logits(phi, self.test["x"])
        return {"val_loss": self.val_loss(phi, h, self.data).item(),
                "test_loss": cross_entropy(logits, self.test["y"]).mean().item(),
                "test_accuracy": accuracy(logits, self.test["y"]).item(),
                "inner_grad_norm": stats["grad_norm"].item()}
