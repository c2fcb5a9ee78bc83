"""Pieces MONAI's SupervisedTrainer/SupervisedEvaluator need for our stages: batch preparation, loss adapters,
metrics and atomic checkpointing."""

from kmtr_monai.engines.batch import PrepareKeys, UnpackTarget
from kmtr_monai.engines.checkpoint import BestCheckpoint, LoadCheckpoint
from kmtr_monai.engines.mae import MaskedReconstructionError, OutputLoss
from kmtr_monai.engines.predictions import SavePredictions
from kmtr_monai.engines.resume import ResumeCheckpoint, RngState
from kmtr_monai.engines.safety import GradientClipping, StopOnNonFiniteLoss


def metric_improved(mode: str):
    """``metric_cmp_fn`` for MONAI evaluators from a bundle's ``key_metric_mode``: ``"min"`` (errors) or ``"max"``."""
    if mode == "min":
        return lambda current, best: current < best
    if mode == "max":
        return lambda current, best: current > best
    raise ValueError(f"key_metric_mode must be 'min' or 'max', got {mode!r}")


__all__ = ["PrepareKeys", "UnpackTarget", "BestCheckpoint", "LoadCheckpoint", "ResumeCheckpoint", "RngState",
           "GradientClipping", "StopOnNonFiniteLoss", "MaskedReconstructionError", "OutputLoss", "SavePredictions",
           "metric_improved"]
