"""A bilevel problem composed from blocks: a task source, a model, losses, a regulariser.

For one task {"x", "y", "xq", "yq"} (`bilevel.blocks.sources`) and a model f whose
layers are split into adapted ones (phi) and shared ones (h["decoder"], eq. 15):

    train_loss(phi, h) = loss(f_{phi, decoder}(x), y), or with per-example weights
                       = 1/n sum_i sigmoid(w_i) loss(f_{phi, decoder}(x_i), y_i)
    val_loss(phi, h)   = val_loss(f_{phi, decoder}(xq), yq)
    g(phi, h)          = train_loss + sum_j lam_j r_j(phi, h)     (regularizer: proximal,
                                                                   l2 or none)
h holds:
    theta    the adapted parameters' prior and starting point, when `theta` is "learned"
             (meta-learning); with "fixed", the inner solve starts from the model's own
             initialisation and theta is not a hyperparameter (hyperparameter tuning);
    decoder  the shared layers' parameters, when `shared_layers` names any;
    log_lam  log lam, when `lam.learn` is not "fixed":
               scalar          one lam
               per-tensor      one per tensor of phi
               per-coordinate  one per coordinate of phi
               per-feature     one per input feature (row) of each weight matrix, shared by
                               its outputs, and one per bias vector;
    example_logit  w (n,), one logit per training example, when `learn_weights` is
             "per-example" (data hyper-cleaning, `bilevel.blocks.weighting`; sources whose
             tasks share one training set of n rows: holdout splits).
"""

import math

import torch

from bilevel import checks
from bilevel.blocks import weighting
from bilevel.blocks.losses import accuracy, losses
from bilevel.compiled import Compilation
from bilevel.errors import InvalidInputError
from bilevel.problem import BilevelProblem

LAM_SHAPES = ("fixed", "scalar", "per-tensor", "per-coordinate", "per-feature")


class ComposedProblem(BilevelProblem):
    """`source` and `model` are built blocks (`sources`, `models` entries); `loss` and
    `val_loss` loss names; `lam`: its initial value and how it is learned (`LAM_SHAPES`);
    `learn_weights`: "none" or "per-example" (`weighting.WEIGHT_SHAPES`)."""

    def __init__(self, source, model, *, loss="mse", val_loss=None, regularizer="proximal",
                 lam=1.0, learn_lam="scalar", theta="learned", shared_layers=(),
                 learn_weights="none", seed=0, dtype=torch.float32, device="cpu"):
        self.dtype, self.device = dtype, torch.device(device)
        self.tasks = source.load(dtype, self.device)
        self.model = model
        self.loss = losses.get(loss)
        self.val_loss_fn = losses.get(val_loss or loss)
        self.classification = self.tasks.kind == "classification"
        if self.classification != (losses.get("cross-entropy") in (self.loss, self.val_loss_fn)):
            kind = self.tasks.kind
            raise InvalidInputError(f"loss: a {kind} source needs "
                                    f"{'cross-entropy' if self.classification else 'mse'} losses, "
                                    f"got {loss!r} and {val_loss or loss!r}")
        self.regularization = checks.one_of("regularizer", regularizer, ("proximal", "l2", "none"))
        self.lam_value = checks.positive("lam", lam)
        self.learn_lam = checks.one_of("learn_lam", learn_lam, LAM_SHAPES)
        self.theta = checks.one_of("theta", theta, ("learned", "fixed"))
        if self.regularization == "proximal" and self.theta == "fixed":
            raise InvalidInputError("regularizer: 'proximal' pulls phi towards theta, which needs "
                                    "theta: learned (or use regularizer: l2)")
        if self.regularization == "none" and self.learn_lam != "fixed":
            raise InvalidInputError("learn_lam: regularizer 'none' has no lam to learn; set "
                                    "learn_lam: fixed")
        self.learn_weights = checks.one_of("learn_weights", learn_weights,
                                           weighting.WEIGHT_SHAPES)
        if self.learn_weights != "none" and self.tasks.train_rows is None:
            raise InvalidInputError("learn_weights: 'per-example' needs one training set of "
                                    "fixed size that every task shares (a holdout split), but "
                                    "this source's tasks each draw their own (e.g. few-shot)")
        layers = model.layers(self.tasks.inputs, self.tasks.outputs)
        shared = []
        for index in shared_layers:
            if not isinstance(index, int) or not -len(layers) <= index < len(layers):
                raise InvalidInputError(f"shared_layers: {index!r} is not a layer index of a model "
                                        f"with {len(layers)} layers")
            shared += layers[index]
        if len(shared) == sum(len(names) for names in layers):
            raise InvalidInputError("shared_layers: every layer is shared; at least one must be "
                                    "adapted per task")
        generator = torch.Generator().manual_seed(checks.seed("seed", seed))
        self.start = model.init(self.tasks.inputs, self.tasks.outputs, generator, dtype,
                                self.device)
        self.shared = [name for name in self.start if name in shared]

    # h and the inner problem ----------------------------------------------------------

    def init_hyper(self, generator=None) -> dict:
        """theta / decoder from the model's initialisation (drawn with `generator` when given),
        log_lam = log(lam) in the shape that `learn_lam` says, example_logit = 0 (every
        example weighted 1/2)."""
        params = self.start if generator is None else self.model.init(
            self.tasks.inputs, self.tasks.outputs, generator, self.dtype, self.device)
        adapted = {k: v for k, v in params.items() if k not in self.shared}
        h: dict[str, dict | torch.Tensor] = {}
        if self.theta == "learned":
            h["theta"] = adapted
        if self.shared:
            h["decoder"] = {k: params[k] for k in self.shared}
        if self.learn_lam != "fixed":
            h["log_lam"] = self._log_lam(adapted)
        if self.learn_weights != "none":
            h[weighting.KEY] = torch.zeros(self.tasks.train_rows, dtype=self.dtype,
                                           device=self.device)
        return h

    def _log_lam(self, adapted: dict):
        def full(*shape):
            return torch.full(shape, math.log(self.lam_value), dtype=self.dtype,
                              device=self.device)

        if self.learn_lam == "scalar":
            return full()
        if self.learn_lam == "per-tensor":
            return {k: full() for k in adapted}
        if self.learn_lam == "per-coordinate":
            return {k: full(*v.shape) for k, v in adapted.items()}
        return {k: full(v.shape[0]) if v.ndim == 2 else full() for k, v in adapted.items()}

    def lam(self, h):
        if self.learn_lam == "fixed":
            return torch.tensor(self.lam_value, dtype=self.dtype, device=self.device)
        lam = super().lam(h)
        if self.learn_lam != "per-feature":
            return lam
        # A weight matrix's row weights broadcast over its outputs in weighted_sum.
        return {k: v[:, None] if v.ndim == 1 else v for k, v in lam.items()}

    def inner_init(self, h, task):
        if self.theta == "learned":
            return super().inner_init(h, task)
        return {k: v for k, v in self.start.items() if k not in self.shared}

    # Tasks and losses -----------------------------------------------------------------

    def sample_tasks(self, n, generator=None):
        return self.tasks.sample(n, generator)

    def predict(self, phi, h, x):
        return self.model(phi | h.get("decoder", {}), x)

    def train_loss(self, phi, h, task):
        prediction = self.predict(phi, h, task["x"])
        if self.learn_weights == "none":
            return self.loss(prediction, task["y"])
        return weighting.weighted_loss(self.loss, prediction, task["y"], h[weighting.KEY])

    def val_loss(self, phi, h, task):
        return self.val_loss_fn(self.predict(phi, h, task["xq"]), task["yq"])

    def eval_metrics(self, phi, h, task) -> dict:
        """{"val_loss"}, and "accuracy" for classification, on the task's query set."""
        prediction = self.predict(phi, h, task["xq"])
        metrics = {"val_loss": self.val_loss_fn(prediction, task["yq"])}
        if self.classification:
            metrics["accuracy"] = accuracy(prediction, task["yq"])
        return metrics

    def test_tasks(self):
        """The source's test tasks (`bilevel.blocks.sources.Tasks.test`), or None."""
        return self.tasks.test

    def report(self, h: dict, solver, *,
               compile: bool | str | Compilation = False) -> dict[str, float] | None:
        """The cleaning metrics (`cleaning_metrics`), where there are some."""
        return self.cleaning_metrics(h) or None

    def cleaning_metrics(self, h) -> dict:
        """With per-example weights on a split with corrupted labels, how well the weights
        below 0.1 pick out the corrupted examples (`weighting.detection`); else {}."""
        if self.learn_weights == "none" or self.tasks.corrupted is None:
            return {}
        return weighting.detection(h[weighting.KEY], self.tasks.corrupted)
