"""Driving a run: the outer loop, outer optimizers, checkpoints, run directory, processes."""

from bilevel.training.optimizers import ClippedGD, NormalizedGD, optimizers, schedules
from bilevel.training.trainer import MetaTrainResult, meta_train

__all__ = ["ClippedGD", "MetaTrainResult", "NormalizedGD", "meta_train", "optimizers",
           "schedules"]
