"""Driving a run: the outer loop, outer optimizers, checkpoints, run directory, processes."""

from bilevel.training import optimizers
from bilevel.training.callbacks import Callback
from bilevel.training.optimizers import ClippedGD, NormalizedGD
from bilevel.training.spec import Evaluation, RunSpec
from bilevel.training.trainer import MetaTrainResult, meta_train

__all__ = ["Callback", "ClippedGD", "Evaluation", "MetaTrainResult", "NormalizedGD", "RunSpec",
           "meta_train", "optimizers"]
