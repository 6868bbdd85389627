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


import torch
from torch.nn.utils.rnn import pad_sequence

from bilevel import InvalidInputError, checks
from problems.classification import classification_metrics, cross_entropy
from problems.digits_data import CLASSES, FEATURES, digits, standardize
from problems.mlp import MLPPrior, mlp

SPLITS = ("train", "test")


class Digits(MLPPrior):
    """N-way (`ways`) K-shot (`shots`) digit classification with a proximal prior."""

    def __init__(self, ways=4, shots=1, queries=10, hidden=(32,), train_classes=range(6),
                 test_classes=range(6, 10), lam=1.0, learn_lam=True, dtype=torch.float32,
                 device="cpu"):
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
        self.images = {split: self._by_class(x, y, classes)
                       for split, classes in self.classes.items()}

    def _check_classes(self, name, classes) -> tuple[int, ...]:
        classes = tuple(classes)
        if len(set(classes)) != len(classes) or not set(classes) <= set(range(CLASSES)):
            raise InvalidInputError(f"{name} must be distinct digits in 0..9, got {classes!r}")
        if len(classes) < self.ways:
            raise InvalidInputError(
                f"{name} must hold at least ways={self.ways} classes, got {classes!r}")
        return classes

    def _by_class(self, x, y, classes):
        """(images (C, M, 64) padded with zeros to M = the largest class, counts (C,))."""
        members = [x[y == c] for c in classes]
        counts = torch.tensor([len(m) for m in members], device=x.device)
        if counts.min() < self.shots + self.queries:
            raise InvalidInputError(
                f"shots + queries must be at most {int(counts.min())} (the smallest class of "
                f"{classes}), got {self.shots} + {self.queries}")
        return pad_sequence(members, batch_first=True), counts

    def sample_tasks(self, n, generator=None, split="train"):
        """n tasks of the `split` ("train": meta-train classes, "test": meta-test classes):
        {"x": (n, N K, 64), "y": (n, N K)} support, {"xq": (n, N Q, 64), "yq": (n, N Q)}
        query (labels int64 in 0..N-1, K or Q consecutive images per label) and
        {"classes": (n, N)}: the digit that each label stands for."""
        checks.integer("n", n, minimum=1)
        checks.one_of("split", split, SPLITS)
        images, counts = self.images[split]
        digits_of_split = torch.tensor(self.classes[split], device=self.device)
        picks = torch.rand(n, len(counts), generator=generator).argsort(-1)[:, : self.ways]
        picks = picks.to(self.device)
        # Random scores, padding scored above every real image: the first shots + queries
        # of each row's order are distinct images of its class.
        scores = torch.rand(n, self.ways, images.shape[1], generator=generator).to(self.device)
        padding = torch.arange(images.shape[1], device=self.device) >= counts[picks, None]
        chosen = scores.masked_fill(padding, 2.0).argsort(-1)[..., : self.shots + self.queries]
        x = images[picks[..., None], chosen]
        labels = torch.arange(self.ways, device=self.device)[None, :, None]

        def flat(part, size):
            return (x[:, :, part].reshape(n, self.ways * size, FEATURES),
                    labels.expand(n, self.ways, size).reshape(n, self.ways * size))

        support, query = slice(0, self.shots), slice(self.shots, None)
        (xs, ys), (xq, yq) = flat(support, self.shots), flat(query, self.queries)
        return {"x": xs, "y": ys, "xq": xq, "yq": yq, "classes": digits_of_split[picks]}

    def train_loss(self, phi, h, task):
        return cross_entropy(mlp(phi, task["x"]), task["y"]).mean()

    def val_loss(self, phi, h, task):
        return cross_entropy(mlp(phi, task["xq"]), task["yq"]).mean()

    def eval_metrics(self, phi, h, task) -> dict:
        """{"val_loss", "accuracy"} on the query set of one task."""
        return classification_metrics(mlp(phi, task["xq"]), task["yq"])
