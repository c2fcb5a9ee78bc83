"""Batch preparation for MONAI engines when a network takes several named inputs."""

from collections.abc import Sequence

import torch
from monai.engines.utils import PrepareBatch


class PrepareKeys(PrepareBatch):
    """Pick named tensors of a collated batch dict and move them to the device.

    MONAI's ``default_prepare_batch`` only knows ``image``/``label``; our networks take e.g. ``(kspace, mask,
    kspace_full)``. Returns ``(d[input_keys[0]], d[target_key] or None, (d[k] for k in input_keys[1:]), {})``, which
    ``SupervisedTrainer``/``SupervisedEvaluator`` turn into ``network(first, *rest)`` and ``loss(pred, target)``.
    A sequence ``target_key`` gives a tuple of targets (e.g. ``("seg", "seg_valid")``; see :class:`UnpackTarget`).
    """

    def __init__(self, input_keys: str | Sequence[str], target_key: str | Sequence[str] | None = None):
        self.input_keys = (input_keys,) if isinstance(input_keys, str) else tuple(input_keys)
        if not self.input_keys:
            raise ValueError("PrepareKeys needs at least one input key.")
        self.target_key = target_key if target_key is None or isinstance(target_key, str) else tuple(target_key)

    def _get(self, batchdata: dict, key: str, device, non_blocking: bool, **kwargs) -> torch.Tensor:
        if key not in batchdata:
            raise KeyError(f"batch has no key '{key}'; available keys: {sorted(batchdata)}")
        value = batchdata[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"batch['{key}'] must be a tensor, got {type(value).__name__}")
        return value.to(device=device, non_blocking=non_blocking, **kwargs)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        if not isinstance(batchdata, dict):
            raise TypeError(f"PrepareKeys expects a dict batch, got {type(batchdata).__name__}")
        first, *rest = (self._get(batchdata, k, device, non_blocking, **kwargs) for k in self.input_keys)
        if self.target_key is None or isinstance(self.target_key, str):
            target = None if self.target_key is None else self._get(batchdata, self.target_key, device, non_blocking,
                                                                    **kwargs)  # fmt: skip
        else:
            target = tuple(self._get(batchdata, k, device, non_blocking, **kwargs) for k in self.target_key)
        return first, target, tuple(rest), {}


class UnpackTarget:
    """``loss_function(pred, target)`` for a loss that takes several targets: ``fn(pred, *target[:n_targets])``.

    With ``PrepareKeys(target_key=("seg", "seg_valid"))`` the engine's target is a tuple; e.g. the segmentation loss
    is ``fn(logits, seg, seg_valid)``, and ``n_targets=1`` keeps only the first (the rest are for metrics).
    """

    def __init__(self, fn, n_targets: int | None = None) -> None:
        self.fn, self.n_targets = fn, n_targets

    def __call__(self, pred, target):
        if not isinstance(target, tuple):
            raise TypeError(f"UnpackTarget expects a tuple of targets (PrepareKeys with several target keys), got "
                            f"{type(target).__name__}")  # fmt: skip
        return self.fn(pred, *target[: self.n_targets])
