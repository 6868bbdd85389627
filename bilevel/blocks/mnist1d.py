"""The MNIST-1D task source: ten classes of one-dimensional signals (length 40), generated
offline by the `mnist1d` package's own seeded generator (Greydanus, 2020), never
downloaded.

    x, y            the package's training signals: every task of the `split` draws from
                    these (holdout: train and val rows; few-shot: meta-train tasks)
    x_test, y_test  its held-out signals (the last `1 - train_split` of the shuffled set):
                    the test set (holdout) or where the meta-test tasks are drawn
                    (few-shot, over `test_classes`, default the same `classes`)

`split` as for the table sources (`bilevel.blocks.sources`), except that `standardize`
defaults to false: the generator already centres the whole set and scales it to unit
variance, and per-position statistics would reshape the signals that a convolution reads.
"""

import dataclasses
import functools
import random

import numpy as np

from bilevel import checks
from bilevel.blocks.sources import SPLIT, Tasks, sources, table_tasks
from bilevel.errors import InvalidInputError

INSTALL = "pip install 'bilevel[mnist1d]'"


@functools.cache
def generate(samples: int, seed: int) -> dict:
    """{"x", "y", "x_test", "y_test"}: `make_dataset(get_dataset_args())` with `samples`
    signals and `seed`; Python's and NumPy's global random states, which the generator
    reseeds, are restored afterwards."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise InvalidInputError(f"source mnist1d needs the mnist1d package ({INSTALL})") from None
    args = get_dataset_args()
    args.num_samples, args.seed = samples, seed
    states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return {key: data[key] for key in ("x", "y", "x_test", "y_test")}


@sources.register("mnist1d")
@dataclasses.dataclass(frozen=True)
class Mnist1d:
    """MNIST-1D signals (length 40, 10 classes), generated offline from `seed`: `samples`
    signals in all (the package's default 5000: 4000 to draw tasks from, 1000 held out
    as the test set); `split` as for every table source (standardize: false by default)."""

    split: dict = checks.option(SPLIT + " (standardize: false by default)",
                                default_factory=dict)
    samples: int = checks.option("signals in all, a fifth of them held out as the test set",
                                 5000, minimum=100)
    seed: int = checks.option("the seed the signals are generated from", 42, minimum=0)

    def __post_init__(self):
        checks.in_bounds(self)

    def load(self, dtype, device) -> Tasks:
        data = generate(self.samples, self.seed)
        split = {"standardize": False} | dict(self.split)
        return table_tasks(data["x"], data["y"], "classification", split, dtype, device,
                           "source mnist1d", test=(data["x_test"], data["y_test"]))
