"""Driving a run: the outer loop, outer optimizers, checkpoints, run directory, processes."""

from bilevel.training import optimizers
from bilevel.training.optimizers import ClippedGD, NormalizedGD
from bilevel.training.trainer import MetaTrainResult, meta_train

__all__ = ["ClippedGD", "MetaTrainResult", "NormalizedGD", "meta_train", "optimizers"]
