"""N-way K-shot classification of the handwritten digits that scikit-learn ships (B-MAML).

The ten digit classes are split into meta-train classes (default 0-5) and meta-test
classes (default 6-9). A task picks N classes of one split at random, in random order
(so label j means a different digit in each task), and K support plus Q query images
of each (drawn without replacement). Pixels are scaled to [0, 1] and standardised with
the statistics of the meta-train classes' images.

The model is an MLP 64-`hidden`-N with ReLU (hidden=() gives a linear classifier),
phi and theta dicts of its tensors ("w0", "b0", ...), with the cross-entropy CE:

    train_loss(phi) = 1/(N K) sum_{support} CE(f_phi(x), y)
    val_loss(phi)   = 1/(N Q) sum_{query} CE(f_phi(xq), yq)
    phi*(h) = argmin_phi train_loss(phi) + lam/2 ||phi - theta||^2      (eq. 6)
    F(h)    = mean over tasks of val_loss(phi*(h)),   h = {"theta", "log_lam"}

(h = {"theta"} with lam fixed when learn_lam=False). `eval_metrics` adds the query
accuracy; `sample_tasks(n, split="test")` draws meta-test tasks.
"""


from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from bilevel import InvalidInputError, checks
from bilevel.blocks.sources import few_shot_sampler
from problems.classification import classification_metrics, cross_entropy
from problems.digits_data import CLASSES, FEATURES, digits, standardize
from problems.mlp import MLPPrior, mlp

SPLITS = ("train", "test")


class Digits(MLPPrior):
    """N-way (`ways`) K-shot (`shots`) digit classification with a proximal prior.

    Args:
        ways: classes per task (N), at least 2
        shots: support images per class (K)
        queries: query images per class (Q)
        hidden: the MLP's hidden widths (empty: a linear classifier)
        train_classes: the digits meta-training tasks draw from
        test_classes: the digits meta-test tasks draw from
        lam: the prior's strength (its start when learned)
        learn_lam: learn lam as h['log_lam'] (false: fixed)
    """

    def __init__(self, ways: int = 4, shots: int = 1, queries: int = 10,
                 hidden: Sequence[int] = (32,), train_classes: Sequence[int] = range(6),
                 test_classes: Sequence[int] = range(6, 10), lam: float = 1.0,
                 learn_lam: bool = True, dtype=torch.float32, device="cpu"):
        self.ways = checks.integer("ways", ways, minimum=2)
        self.shots = checks.integer("shots", shots, minimum=1)
        self.queries = checks.integer("queries", queries, minimum=1)
        self.hidden = tuple(checks.integer("hidden width", w, minimum=1) for w in hidden)
        self.set_prior((FEATURES, *self.hidden, self.ways), lam, learn_lam, dtype, device)
        self.classes = {"train": self._check_classes("train_classes", train_classes),
                        "test": self._check_classes("test_classes", test_classes)}
        if set(self.classes["train"]) & set(self.classes["test"]):
            raise InvalidInputError(
                "train_classes and test_classes must be disjoint, but got "
                f"{self.classes['train']} and {self.classes['test']}")
        x, y = digits(dtype, self.device)
        in_train = torch.isin(y, torch.tensor(self.classes["train"], device=self.device))
        _, x = standardize(x[in_train], x)
        members = {split: [x[y == c] for c in classes] for split, classes in self.classes.items()}
        # Per split: the images of each class, padded with zeros to the largest, and counts.
        self.images = {split: (pad_sequence(rows, batch_first=True),
                               torch.tensor([len(r) for r in rows], device=self.device))
                       for split, rows in members.items()}
        self.samplers = {split: self._sampler(rows, self.classes[split])
                         for split, rows in members.items()}

    def _check_classes(self, name, classes) -> tuple[int, ...]:
        classes = tuple(classes)
        if len(set(classes)) != len(classes) or not set(classes) <= set(range(CLASSES)):
            raise InvalidInputError(f"{name} must be distinct digits in 0..9, got {classes!r}")
        if len(classes) < self.ways:
            raise InvalidInputError(
                f"{name} must hold at least ways={self.ways} classes, got {classes!r}")
        return classes

    def _sampler(self, members, classes):
        """The task sampler of one split (`bilevel.blocks.sources.few_shot_sampler`)."""
        smallest = min(len(m) for m in members)
        if smallest < self.shots + self.queries:
            raise InvalidInputError(
                f"shots + queries must be at most {smallest} (the smallest class of "
                f"{classes}), got {self.shots} + {self.queries}")
        return few_shot_sampler(members, self.ways, self.shots, self.queries,
                                torch.tensor(classes, device=self.device))

    def sample_tasks(self, n, generator=None, split="train"):
        """n tasks of the `split` ("train": meta-train classes, "test": meta-test classes):
        {"x": (n, N K, 64), "y": (n, N K)} support, {"xq": (n, N Q, 64), "yq": (n, N Q)}
        query (labels int64 in 0..N-1, K or Q consecutive images per label) and
        {"classes": (n, N)}: the digit that each label stands for."""
        checks.one_of("split", split, SPLITS)
        return self.samplers[split](n, generator)

    def train_loss(self, phi, h, task):
        return cross_entropy(mlp(phi, task["x"]), task["y"]).mean()

    def val_loss(self, phi, h, task):
        return cross_entropy(mlp(phi, task["xq"]), task["yq"]).mean()

    def eval_metrics(self, phi, h, task) -> dict:
        """{"val_loss", "accuracy"} on the query set of one task."""
        return classification_metrics(mlp(phi, task["xq"]), task["yq"])
