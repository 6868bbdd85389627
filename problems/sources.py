"""Task sources that problems/ contributes to composed problems (entry-point group
"bilevel.sources" in pyproject.toml): the synthetic families."""

import dataclasses

from bilevel import checks
from bilevel.blocks.sources import Tasks
from problems.sinusoid import Sinusoid


@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
    """The sinusoid family of `problems.sinusoid` (y = a sin(x - p)) as regression tasks with
    `shots` support and `queries` query points, x and y shaped (points, 1)."""

    shots: int = checks.option("support points per task", 10, minimum=1)
    queries: int = checks.option("query points per task", 10, minimum=1)

    def __post_init__(self):
        checks.in_bounds(self)

    def load(self, dtype, device) -> Tasks:
        family = Sinusoid(shots=self.shots, queries=self.queries, dtype=dtype, device=device)

        def sample(n, generator=None):
            tasks = family.sample_tasks(n, generator)
            return {k: tasks[k][..., None] for k in ("x", "y", "xq", "yq")}

        return Tasks("regression", 1, 1, sample)
