"""What the two single-task digits problems share: a linear softmax classifier trained on
a seeded train / validation / test split of the scikit-learn digits.

phi = {"W": (64, 10), "b": (10,)}, logits x W + b, CE the cross-entropy; the inner
solver starts from phi = 0, and the outer loss is the validation cross-entropy

    val_loss(phi) = 1/n_v sum_{val} CE(xv W + b, yv).

The one task is {"x", "y", "xv", "yv"}; `sample_tasks(n)` repeats it n times (a view).
The test set never enters a task: `report` measures it.
"""

import torch

from bilevel import BilevelProblem, at_inner_solutions, checks
from bilevel.compiled import Compilation
from problems.classification import (
    accuracy,
    classification_metrics,
    cross_entropy,
    init_linear,
    linear_logits,
)
from problems.digits_data import CLASSES, FEATURES, digits, random_split, standardize


class LinearDigits(BilevelProblem):
    """Base of `LogReg` and `HyperCleaning`: the split, the classifier, the validation
    loss and the report. Subclasses define train_loss, init_hyper and lam."""

    regularization = "l2"

    def split(self, n_train, n_val, seed, dtype, device) -> torch.Generator:
        """Load and split the digits (features standardised with the training statistics)
        into self.data (training and validation) and self.test; returns the seeded
        generator, for draws that must follow the split (label corruption)."""
        self.n_train = checks.integer("n_train", n_train, minimum=1)
        self.n_val = checks.integer("n_val", n_val, minimum=1)
        self.dtype, self.device = dtype, torch.device(device)
        x, y = digits(dtype, self.device)
        n_test = checks.integer("1797 - n_train - n_val (test images)",
                                len(y) - n_train - n_val, minimum=1)
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        train, val, test = random_split(len(y), (n_train, n_val, n_test), generator)
        x_train, x_val, x_test = standardize(x[train], x[val], x[test])
        self.data = {"x": x_train, "y": y[train], "xv": x_val, "yv": y[val]}
        self.test = {"x": x_test, "y": y[test]}
        return generator

    def sample_tasks(self, n, generator=None):
        """{"x", "y", "xv", "yv"} repeated n times (`generator` is not used)."""
        checks.integer("n", n, minimum=1)
        return {k: v.expand(n, *v.shape) for k, v in self.data.items()}

    def inner_init(self, h, task):
        return init_linear(FEATURES, CLASSES, self.dtype, self.device)

    def val_loss(self, phi, h, task):
        return cross_entropy(linear_logits(phi, task["xv"]), task["yv"]).mean()

    def eval_metrics(self, phi, h, task) -> dict:
        """{"val_loss", "accuracy"} on the task's validation set."""
        return classification_metrics(linear_logits(phi, task["xv"]), task["yv"])

    def report(self, h, solver, *, compile: bool | str | Compilation = False) -> dict:
        """Solve the inner problem for h with `solver` (compiled as `compile` says,
        `hypergradient`'s values): validation loss, test loss and accuracy, and the final
        inner gradient norm, as floats."""
        values, stats = at_inner_solutions(self.test_set_metrics, self, h, self.sample_tasks(1),
                                           solver, with_stats=True,
                                           compilation=Compilation.of(compile))
        return ({name: value.item() for name, value in values.items()}
                | {"inner_grad_norm": stats["grad_norm"].item()})

    def test_set_metrics(self, phi, h, task) -> dict:
        """{"val_loss", "test_loss", "test_accuracy"} of the classifier phi."""
        logits = linear_logits(phi, self.test["x"])
        return {"val_loss": self.val_loss(phi, h, task),
                "test_loss": cross_entropy(logits, self.test["y"]).mean(),
                "test_accuracy": accuracy(logits, self.test["y"])}
