"""Curves "best validation loss so far against cost", one point per validation, truncated
at the budget so that both sides are compared point for point over the same range."""

import dataclasses
import math


@dataclasses.dataclass
class Curve:
    """Points (cost, seconds, best validation loss so far), cost in inner gradient
    evaluations (+ HVPs), seconds of wall time; `values`: each point's own validation loss
    (NaN or huge where a trial diverged), for the plot."""

    name: str
    cost: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)
    best: list = dataclasses.field(default_factory=list)
    values: list = dataclasses.field(default_factory=list)

    def add(self, cost: float, seconds: float, value: float) -> None:
        previous = self.best[-1] if self.best else math.inf
        self.values.append(value)
        self.cost.append(cost)
        self.seconds.append(seconds)
        self.best.append(min(previous, value) if math.isfinite(value) else previous)

    def within(self, unit: str, budget: float) -> "Curve":
        """The points spent within `budget` in `unit` ("inner_grad_evals" or "seconds")."""
        spent = self.seconds if unit == "seconds" else self.cost
        keep = sum(1 for s in spent if s <= budget)
        return Curve(self.name, self.cost[:keep], self.seconds[:keep], self.best[:keep],
                     self.values[:keep])

    def to_reach(self, target: float) -> tuple[float | None, float | None]:
        """(cost, seconds) of the first point at or below `target`, or (None, None)."""
        for cost, seconds, best in zip(self.cost, self.seconds, self.best, strict=True):
            if best <= target:
                return cost, seconds
        return None, None

    def as_dict(self) -> dict:
        return {"cost": self.cost, "seconds": self.seconds, "best_val_loss": self.best}
