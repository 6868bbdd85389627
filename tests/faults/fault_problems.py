"""A small ridge-regression problem for fault injection, and variants that each carry one
mistake a newcomer makes in a first problem."""

import torch
import yaml

import bilevel

DIM, SHOTS, N_TASKS = 3, 4, 4
SOLVER = bilevel.solvers.GD(lr=0.1, steps=5)


class Ridge(bilevel.BilevelProblem):
    """phi* = argmin 1/m ||X phi - y||^2 + lam/2 ||phi - theta||^2; val on (xq, yq) plus
    times sqrt(c) (c = 1 by default; c < 0 makes one task's loss and gradient NaN); labels
    are integers that the losses do not use."""

    regularization = "proximal"

    def init_hyper(self, generator=None):
        return {"theta": {"w": torch.zeros(DIM, dtype=torch.float64)},
                "log_lam": torch.tensor(0.0, dtype=torch.float64)}

    def sample_tasks(self, n, generator=None):
        g = torch.Generator().manual_seed(0) if generator is None else generator
        x = torch.randn(n, SHOTS, DIM, generator=g, dtype=torch.float64)
        w = torch.randn(n, DIM, generator=g, dtype=torch.float64)
        return {"x": x, "y": (x @ w[:, :, None])[..., 0], "xq": x.flip(1),
                "yq": (x.flip(1) @ w[:, :, None])[..., 0],
                "c": torch.ones(n, dtype=torch.float64),
                "label": torch.arange(n, dtype=torch.int64)}

    def train_loss(self, phi, h, task):
        return ((task["x"] @ phi["w"] - task["y"]) ** 2).mean()

    def val_loss(self, phi, h, task):
        return ((task["xq"] @ phi["w"] - task["yq"]) ** 2).mean() * torch.sqrt(task["c"])


def setting(problem=None, n=N_TASKS):
    problem = Ridge() if problem is None else problem
    return problem, problem.init_hyper(), problem.sample_tasks(n)


def poisoned(tasks, *indices):
    """The tasks with c = -1 at `indices`: their val_loss is NaN, their data finite."""
    c = tasks["c"].clone()
    c[list(indices)] = -1.0
    return tasks | {"c": c}


class Unregularized(Ridge):
    regularization = "none"


# One mistake each ----------------------------------------------------------------------

class VectorTrainLoss(Ridge):
    def train_loss(self, phi, h, task):
        return (task["x"] @ phi["w"] - task["y"]) ** 2


class VectorValLoss(Ridge):
    def val_loss(self, phi, h, task):
        return (task["xq"] @ phi["w"] - task["yq"]) ** 2


class FloatTrainLoss(Ridge):
    def train_loss(self, phi, h, task):
        return 1.0


class InPlaceOnTask(Ridge):
    def train_loss(self, phi, h, task):
        y = task["y"]
        y -= task["x"] @ phi["w"]
        return (y ** 2).mean()


class InPlaceOnPhi(Ridge):
    def train_loss(self, phi, h, task):
        w = phi["w"]
        w.mul_(2.0)
        return ((task["x"] @ w - task["y"]) ** 2).mean()


class InPlaceOnH(Ridge):
    def val_loss(self, phi, h, task):
        h["log_lam"].add_(1.0)
        return super().val_loss(phi, h, task)


class IfOnTensor(Ridge):
    def val_loss(self, phi, h, task):
        loss = super().val_loss(phi, h, task)
        if loss > 100.0:
            return loss / 2
        return loss


class ItemInLoss(Ridge):
    def train_loss(self, phi, h, task):
        scale = task["c"].item()
        return scale * super().train_loss(phi, h, task)


class PerCoordinateLam(Ridge):
    def init_hyper(self, generator=None):
        return super().init_hyper() | {"log_lam": {"w": torch.zeros(DIM + 1, dtype=torch.float64)}}


class KeyErrorInLoss(Ridge):
    def train_loss(self, phi, h, task):
        return task["missing"].sum()


class InitNotADict(Ridge):
    def inner_init(self, h, task):
        return h["theta"]["w"]


class IntegerInitHyper(Ridge):
    def init_hyper(self, generator=None):
        return {"theta": {"w": torch.zeros(DIM, dtype=torch.int64)}}


class EmptyInitHyper(Ridge):
    def init_hyper(self, generator=None):
        return {}


class CountingRidge(Ridge):
    """Counts train_loss calls (each trace counts once)."""

    def __init__(self):
        self.calls = 0

    def train_loss(self, phi, h, task):
        self.calls += 1
        return super().train_loss(phi, h, task)


class ItemOnHyper(Ridge):
    """Reads lam as a Python number: autograd sees no dependence on h["log_lam"]."""

    def train_loss(self, phi, h, task):
        return super().train_loss(phi, h, task) * (1 + h["log_lam"].item())


class IfOnHyper(Ridge):
    """Branches on the value of a hyperparameter h["w"] (0.5): piecewise constant in it."""

    def init_hyper(self, generator=None):
        return super().init_hyper() | {"w": torch.tensor(0.5, dtype=torch.float64)}

    def val_loss(self, phi, h, task):
        loss = super().val_loss(phi, h, task)
        if h["w"] > 0:
            return 2 * loss
        return loss


class FloatInLam(Ridge):
    """A lam of its own that reads log_lam through float()."""

    def lam(self, h):
        return torch.tensor(2.0, dtype=torch.float64) ** float(h["log_lam"])


class UnusedHyper(Ridge):
    """A leaf no loss reads: its gradient is 0, legitimately."""

    def init_hyper(self, generator=None):
        return super().init_hyper() | {"spare": torch.ones(2, dtype=torch.float64)}


def cli_run(tmp_path):
    """(config path, run directory) of a small quadratic run, done by `bilevel run`."""
    from bilevel.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "problem": {"name": "quadratic", "dim": 4, "kappa": 10.0, "n_tasks": 4},
        "solver": {"name": "gd", "lr": 0.05, "steps": 10}, "steps": 3, "tasks_per_step": 2,
        "progress": False}))
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return config, out

