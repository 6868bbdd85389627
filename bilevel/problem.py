"""The bilevel problem of paper eq. 15, written for ONE task.

    g(phi, h)  = train_loss(phi, h, task) + lam(h) * Reg(phi; h)
    phi*(h)    = argmin_phi g(phi, h)
    F_i(h)     = val_loss(phi*(h), h, task)
    F(h)       = mean over tasks of F_i(h)

Hyperparameters `h` and inner parameters `phi` are dicts of tensors (nested
dicts allowed). Conventional keys of `h`: "theta" (the prior / initialisation,
shaped like phi), "decoder" (shared parameters that every task uses but does
not adapt), "log_lam" (lam = exp(log_lam): a scalar, or a dict shaped like phi
with one value per tensor or per coordinate). Estimators batch these functions
over tasks with `torch.func.vmap`; the problem never knows which one runs.
"""

import abc

import torch

from bilevel.compiled import Compilation
from bilevel.info import LOSS_KEY
from bilevel.registry import Registry
from bilevel.regularizers import regularizers, require_key, weighted_sum
from bilevel.tree import tree_leaves, tree_map

# Problems by name, for configs (`problem: {name: sinusoid, ...}`): a package contributes
# its problem classes through the "bilevel.problems" entry-point group (this repository's
# problems/ does so in pyproject.toml), or by `problems.register(name)(cls)`.
problems = Registry("problem", entry_points="bilevel.problems")


class BilevelProblem(abc.ABC):
    """Subclass and implement the four abstract methods; override the rest at will.

    `regularization` picks a registered regulariser ("proximal", "l2", "none");
    set it as a class attribute or in `__init__`. The optional hooks `test_tasks`,
    `report` and `meta_gradient` return None unless a subclass has something to give.
    """

    regularization: str = "proximal"

    @abc.abstractmethod
    def init_hyper(self, generator: torch.Generator | None = None) -> dict:
        """Initial hyperparameters `h`."""

    @abc.abstractmethod
    def sample_tasks(self, n: int, generator: torch.Generator | None = None):
        """A batch of `n` tasks: a pytree of tensors whose leaves have leading dim n."""

    @abc.abstractmethod
    def train_loss(self, phi: dict, h: dict, task) -> torch.Tensor:
        """Inner (training) loss of one task: a scalar."""

    @abc.abstractmethod
    def val_loss(self, phi: dict, h: dict, task) -> torch.Tensor:
        """Outer (validation) loss of one task: a scalar."""

    def regularizer(self, phi: dict, h: dict):
        """Elementwise terms r(phi, h) of Reg, shaped like phi (default 1/2 (phi - theta)^2),
        or None for no regulariser. See `bilevel.regularizers`."""
        return regularizers.get(self.regularization)(phi, h)

    def lam(self, h: dict):
        """Regularisation strength: exp(h["log_lam"]), a scalar or a dict shaped like phi."""
        log_lam = require_key(h, "log_lam", f"the {self.regularization!r} regulariser's lam")
        return tree_map(torch.exp, log_lam)

    def inner_init(self, h: dict, task) -> dict:
        """Starting point of the inner solver (default: h["theta"])."""
        return require_key(h, "theta", "the default inner_init (a copy of theta)")

    def penalty(self, phi: dict, h: dict) -> torch.Tensor:
        """lam(h) * Reg(phi; h), summed over coordinates (0 with no regulariser)."""
        terms = self.regularizer(phi, h)
        if terms is None:
            leaf = tree_leaves(phi)[0]
            return torch.zeros((), dtype=leaf.dtype, device=leaf.device)
        return weighted_sum(self.lam(h), terms)

    def inner_objective(self, phi: dict, h: dict, task) -> torch.Tensor:
        """g(phi, h) = train_loss + lam * Reg (eq. 15)."""
        return self.train_loss(phi, h, task) + self.penalty(phi, h)

    def eval_metrics(self, phi: dict, h: dict, task) -> dict[str, torch.Tensor]:
        """Scalar metrics of one held-out task at its inner solution phi; the trainer
        averages them over tasks (default: {"val_loss": val_loss(phi, h, task)})."""
        return {LOSS_KEY: self.val_loss(phi, h, task)}

    def test_tasks(self):
        """A held-out test set: a batch of tasks like `sample_tasks`', on which `bilevel run`
        and `compare` report `eval_metrics` as "test_*" numbers; None (default) for none."""
        return None

    def report(self, h: dict, solver, *,
               compile: bool | str | Compilation = False) -> dict[str, float] | None:
        """The problem's own numbers at h, solved with `solver` (compiled as `compile` says,
        `hypergradient`'s values): `bilevel run` adds them to
        its test numbers, and `compare` reads "test_loss" and "test_accuracy" from them where
        `test_tasks` gives none; None (default)."""
        return None

    def meta_gradient(self, h: dict, tasks) -> dict | None:
        """grad F(h) in closed form, shaped like h, averaged over the batch `tasks`
        (`bilevel gradcheck --reference closed-form`); None (default) for none."""
        return None
