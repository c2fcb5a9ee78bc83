"""Pieces MONAI's SupervisedTrainer/SupervisedEvaluator need for our stages: batch preparation, loss adapters,
metrics and atomic checkpointing."""

from kmtr_monai.engines.batch import PrepareKeys
from kmtr_monai.engines.checkpoint import BestCheckpoint
from kmtr_monai.engines.mae import MaskedReconstructionError, OutputLoss

__all__ = ["PrepareKeys", "BestCheckpoint", "MaskedReconstructionError", "OutputLoss"]
