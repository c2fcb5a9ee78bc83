"""Engine pieces for the masked-autoencoder stages: the loss adapter and validation reconstruction metrics.

Both MAEs return a dict from ``forward`` and own a static ``loss(out)``; MONAI's ``SupervisedTrainer`` calls
``loss_function(pred, target)``, so :class:`OutputLoss` adapts one to the other and the engine needs no custom
iteration.
"""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce


class OutputLoss:
    """``loss_function(pred, target)`` for networks that return a dict: ``fn(pred)``, or ``fn(*(pred[k] for k in keys))``.

    The MAEs carry their own targets in the output (``fn = network.loss``); the dual encoder returns two embeddings
    (``fn = ClipLoss(...)``, ``keys = ("z_kspace", "z_image")``). The engine's ``target`` is ignored.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], keys: tuple[str, ...] | list[str] | None = None) -> None:
        self.fn, self.keys = fn, None if keys is None else tuple(keys)

    def __call__(self, pred: dict, target=None) -> torch.Tensor:
        if self.keys is None:
            return self.fn(pred)
        missing = [k for k in self.keys if k not in pred]
        if missing:
            raise KeyError(f"network output lacks {missing}; it has {sorted(pred)}")
        return self.fn(*(pred[k] for k in self.keys))


def _weight_total(out: dict) -> torch.Tensor:
    return out["weight"].detach().sum()


class MaskedReconstructionError(Metric):
    """Dataset-level MAE reconstruction error, in the units of the network's own ``loss`` (weighted MSE).

    ``baseline`` gives the error of a reference predictor on exactly the same positions and weights:
    - ``None``: the network's prediction;
    - ``"zero"``: predicting zeros — for the k-space MAE this is the zero-filled k-space (unsampled lines stay 0);
    - ``"view_sharing"``: for the k-space MAE, the view-shared k-space ``ref_norm`` (each unsampled line copied from
      the nearest frame that sampled it);
    - ``"mean_image"``: for the image MAE (``pred``/``target`` (B, N, P), ``weight`` (B, N)), predicting every masked
      patch by the mean image of the evaluated set at that position, computed exactly from running sums
      ``Σw·x², Σw·x, Σw`` and ``Σx`` (so no second pass over the data is needed).
    The value is ``Σ_batches loss·Σw / Σ_batches Σw``, i.e. the weighted mean over all evaluated positions.

    The default ``output_transform`` takes the network output dict from a MONAI engine's ``output["pred"]``.
    """

    required_output_keys = None

    def __init__(self, loss_fn: Callable[[dict], torch.Tensor], baseline: str | None = None,
                 output_transform=lambda output: (output["pred"],), device="cpu") -> None:  # fmt: skip
        if baseline not in (None, "zero", "view_sharing", "mean_image"):
            raise ValueError(f"baseline must be None, 'zero', 'view_sharing' or 'mean_image', got {baseline!r}")
        self.loss_fn, self.baseline = loss_fn, baseline
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._err = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._w = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._n = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._sums: list[torch.Tensor] | None = None  # mean_image: Σw·x², Σw·x, Σw (per pixel), Σx (per pixel)

    @reinit__is_reduced
    def update(self, output: tuple[dict]) -> None:
        (out,) = output
        out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        if self.baseline == "mean_image":
            x = out["target"].double()  # (B, N, P)
            w = out["weight"].double()[..., None].expand_as(x)
            sums = [(w * x * x).sum(0), (w * x).sum(0), w.sum(0), x.sum(0)]
            self._sums = sums if self._sums is None else [a + b for a, b in zip(self._sums, sums)]
            self._n += x.shape[0]
            return
        if self.baseline == "zero":
            out = {k: torch.zeros_like(v) if k.startswith("pred") else v for k, v in out.items()}
        elif self.baseline == "view_sharing":
            if "ref_norm" not in out:
                raise KeyError(f"baseline 'view_sharing' needs 'ref_norm' in the network output; it has {sorted(out)}")
            out = {**out, "pred_norm": out["ref_norm"]}
        w = _weight_total(out).double()
        self._err += self.loss_fn(out).double().to(self._device) * w
        self._w += w.to(self._device)

    @sync_all_reduce("_err", "_w", "_n")
    def compute(self) -> float:
        if self.baseline == "mean_image":
            if self._sums is None:
                raise NotComputableError("MaskedReconstructionError needs at least one batch")
            wxx, wx, w, x = (idist.all_reduce(s) for s in self._sums)
            mu = x / self._n
            return float(((wxx - 2 * mu * wx + mu * mu * w).sum() / w.sum().clamp_min(1e-12)).item())
        if self._w <= 0:
            raise NotComputableError("MaskedReconstructionError needs at least one weighted position")
        return float((self._err / self._w).item())
