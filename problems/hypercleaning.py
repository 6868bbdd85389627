"""Data hyper-cleaning on the scikit-learn digits: one learnable weight per training example.

The digits are split at random (seeded) into n_train training, n_val validation and
the rest test images (features standardised with the training statistics). A
fraction `corruption` of the training labels (seeded) is replaced by a different,
random class; the validation set stays clean. With s(w) = 1 / (1 + e^{-w}), a linear
classifier phi = {"W": (64, 10), "b": (10,)} and CE the cross-entropy:

    train_loss(phi, h) = 1/n sum_i s(w_i) CE(x_i W + b, y_i),   w = h["weights"] (n,)
    g(phi, h)          = train_loss(phi, h) + l2/2 ||phi||^2    (regularization "l2",
                                                                  lam = l2 fixed)
    F(h)               = 1/n_v sum_{val} CE(xv W* + b*, yv)

Thousands of hyperparameters (one per training example), all differentiated at once.
The inner solver starts from phi = 0. `report` gives the test accuracy for h;
`detection` how well low weights pick out the corrupted examples.

A single-task problem: `sample_tasks(n)` returns the training and validation sets
repeated n times (leading dim n, a view).
"""

import torch

from bilevel import InvalidInputError, checks
from problems.classification import cross_entropy, linear_logits
from problems.digits_data import CLASSES
from problems.linear_digits import LinearDigits


class HyperCleaning(LinearDigits):
    """Learn per-example weights that undo label noise, judged on a clean validation set.

    Args:
        n_train: training images, each with a learned weight
        n_val: clean validation images (the rest are the test set)
        corruption: the fraction of training labels replaced by another class, in [0, 1)
        l2: the fixed L2 weight of the inner problem, > 0
        seed: seeds the split and the corruption
    """

    def __init__(self, n_train: int = 1000, n_val: int = 300, corruption: float = 0.5,
                 l2: float = 1e-3, seed: int = 0, dtype=torch.float32, device="cpu"):
        if not 0 <= corruption < 1:
            raise InvalidInputError(f"corruption must be a fraction in [0, 1), got {corruption!r}")
        self.l2 = checks.positive("l2", l2)
        generator = self.split(n_train, n_val, seed, dtype, device)
        n_corrupted = round(corruption * n_train)
        self.corrupted = (torch.randperm(n_train, generator=generator) < n_corrupted).to(
            self.device)
        # A shift of 1..9 classes: a corrupted label is never the true one.
        shift = torch.randint(1, CLASSES, (n_train,), generator=generator).to(self.device)
        self.true_labels = self.data["y"]
        noisy = torch.where(self.corrupted, (self.true_labels + shift) % CLASSES,
                            self.true_labels)
        self.data = self.data | {"y": noisy}

    def init_hyper(self, generator=None):
        """weights = 0 (every example weighted 1/2; `generator` is not used)."""
        return {"weights": torch.zeros(self.n_train, dtype=self.dtype, device=self.device)}

    def lam(self, h):
        """The fixed L2 weight `l2`."""
        return torch.tensor(self.l2, dtype=self.dtype, device=self.device)

    def train_loss(self, phi, h, task):
        losses = cross_entropy(linear_logits(phi, task["x"]), task["y"])
        return (torch.sigmoid(h["weights"]) * losses).mean()

    def detection(self, h) -> dict:
        """How well low weights mark corrupted examples, as floats:
        auc: P(w_corrupted < w_clean) over all pairs, ties counted 1/2 (1 perfect, 0.5 chance);
        precision: fraction of corrupted examples among the m lowest-weighted ones, m the
        number of corrupted examples."""
        weights, corrupted = h["weights"], self.corrupted
        bad, good = weights[corrupted], weights[~corrupted]
        if len(bad) == 0 or len(good) == 0:
            raise InvalidInputError("detection needs both corrupted and clean training examples, "
                               f"got {len(bad)} corrupted of {self.n_train}")
        below = (bad[:, None] < good[None, :]).to(self.dtype)
        tied = (bad[:, None] == good[None, :]).to(self.dtype)
        lowest = weights.argsort()[: len(bad)]
        return {"auc": (below + 0.5 * tied).mean().item(),
                "precision": corrupted[lowest].to(self.dtype).mean().item()}
