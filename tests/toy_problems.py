"""Small problems for tests: a shared linear decoder and a tiny MLP regression."""

import torch

from bilevel import BilevelProblem


class SharedDecoderRegression(BilevelProblem):
    """Each task fits a code z in y ~ X D z; the decoder D is shared and meta-learned.

    train_loss = 1/(2m) ||X D z - y||^2 on the support set, val_loss the same on the
    query set: val_loss depends on h["decoder"], so its hypergradient has a direct term.
    """

    def __init__(self, features=6, code=3, shots=8, lam=0.5, dtype=torch.float64, device="cpu"):
        self.features, self.code, self.shots, self.lam0 = features, code, shots, lam
        self.dtype, self.device = dtype, device

    def init_hyper(self, generator=None):
        def normal(*shape):
            return torch.randn(*shape, generator=generator, dtype=self.dtype).to(self.device)

        return {
            "theta": {"z": normal(self.code)},
            "decoder": {"D": normal(self.features, self.code) / self.features**0.5},
            "log_lam": torch.tensor(self.lam0, dtype=self.dtype, device=self.device).log(),
        }

    def sample_tasks(self, n, generator=None):
        def normal(*shape):
            return torch.randn(*shape, generator=generator, dtype=self.dtype).to(self.device)

        weights = normal(n, self.features)
        x, xq = normal(n, self.shots, self.features), normal(n, self.shots, self.features)
        noise = 0.1 * normal(n, 2, self.shots)
        y = torch.einsum("nsf,nf->ns", x, weights) + noise[:, 0]
        yq = torch.einsum("nsf,nf->ns", xq, weights) + noise[:, 1]
        return {"x": x, "y": y, "xq": xq, "yq": yq}

    def _mse(self, phi, h, x, y):
        return 0.5 * ((x @ (h["decoder"]["D"] @ phi["z"]) - y) ** 2).mean()

    def train_loss(self, phi, h, task):
        return self._mse(phi, h, task["x"], task["y"])

    def val_loss(self, phi, h, task):
        return self._mse(phi, h, task["xq"], task["yq"])

    def solution(self, h, task):
        """z* in closed form (the inner problem is a ridge regression in z)."""
        features = task["x"] @ h["decoder"]["D"]
        lam = h["log_lam"].exp()
        identity = torch.eye(self.code, dtype=self.dtype, device=features.device)
        gram = features.mT @ features / self.shots + lam * identity
        rhs = features.mT @ task["y"] / self.shots + lam * h["theta"]["z"]
        return {"z": torch.linalg.solve(gram, rhs)}


class TinyMLPRegression(BilevelProblem):
    """1-8-1 tanh MLP fitted to a random sine per task, proximal regulariser."""

    def __init__(self, hidden=8, shots=10, lam=5.0, dtype=torch.float64, device="cpu"):
        self.hidden, self.shots, self.lam0 = hidden, shots, lam
        self.dtype, self.device = dtype, device

    def init_hyper(self, generator=None):
        def normal(*shape):
            return torch.randn(*shape, generator=generator, dtype=self.dtype).to(self.device)

        theta = {
            "w1": normal(1, self.hidden),
            "b1": normal(self.hidden) * 0.1,
            "w2": normal(self.hidden, 1) / self.hidden**0.5,
            "b2": normal(1) * 0.1,
        }
        log_lam = torch.tensor(self.lam0, dtype=self.dtype, device=self.device).log()
        return {"theta": theta, "log_lam": log_lam}

    def sample_tasks(self, n, generator=None):
        def uniform(*shape, low, high):
            u = torch.rand(*shape, generator=generator, dtype=self.dtype)
            return (low + (high - low) * u).to(self.device)

        amplitude = uniform(n, 1, low=0.5, high=1.5)
        phase = uniform(n, 1, low=0.0, high=3.0)
        x, xq = uniform(n, self.shots, low=-2, high=2), uniform(n, self.shots, low=-2, high=2)
        return {"x": x, "y": amplitude * torch.sin(x + phase),
                "xq": xq, "yq": amplitude * torch.sin(xq + phase)}

    @staticmethod
    def predict(phi, x):
        hidden = torch.tanh(x[:, None] @ phi["w1"] + phi["b1"])
        return (hidden @ phi["w2"] + phi["b2"])[:, 0]

    def train_loss(self, phi, h, task):
        return 0.5 * ((self.predict(phi, task["x"]) - task["y"]) ** 2).mean()

    def val_loss(self, phi, h, task):
        return 0.5 * ((self.predict(phi, task["xq"]) - task["yq"]) ** 2).mean()
