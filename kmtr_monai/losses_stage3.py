"""Stage III losses: standardised Huber (phenotypes), weighted BCE helper (diseases), masked Dice+CE (segmentation),
magnitude MSE (reconstruction). DESIGN §4 "Heads", issue 13.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["StandardisedHuberLoss", "pos_weight_from_prevalence", "MaskedDiceCELoss", "MagnitudeMSELoss"]


def _vector(name: str, v, dtype=torch.float32) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=dtype).flatten()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected a non-empty finite vector, got {v!r}")
    return t


class StandardisedHuberLoss(nn.Module):
    """Huber loss on standardised phenotypes, skipping missing (NaN) targets.

    Args:
        mean, std: (K,) training-split statistics; ``std`` must be > 0.
        delta: Huber threshold in standard deviations.

    ``forward(pred (B, K) native units, target (B, K) native units, NaN = missing) -> scalar``: the mean of
    ``nn.HuberLoss(reduction="none")`` on ``(pred - mean)/std`` against ``(target - mean)/std`` over the observed
    entries (0 with a gradient path if none is observed), so every phenotype weighs the same whatever its unit.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, delta: float = 1.0):
        super().__init__()
        mean, std = _vector("mean", mean), _vector("std", std)
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same length K")
        if bool((std <= 0).any()):
            raise ValueError(f"std must be > 0 for every phenotype, got {std.tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.huber = nn.HuberLoss(reduction="none", delta=delta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = self.mean.numel()
        if pred.ndim != 2 or pred.shape[1] != k or target.shape != pred.shape:
            raise ValueError(f"pred and target: expected (B, K={k}), got {tuple(pred.shape)} and {tuple(target.shape)}")
        observed = ~torch.isnan(target)
        z_pred = (pred - self.mean) / self.std
        z_true = torch.where(observed, (target - self.mean) / self.std, z_pred.detach())
        per = self.huber(z_pred, z_true) * observed.to(pred.dtype)
        return per.sum() / observed.sum().clamp_min(1).to(pred.dtype)


def pos_weight_from_prevalence(labels: torch.Tensor, eps: float = 1e-6, degenerate: str = "raise") -> torch.Tensor:
    """labels (N, K) in {0, 1} (NaN = missing) → (K,) ``pos_weight = (1 - p) / p`` with p the prevalence per column,
    for ``nn.BCEWithLogitsLoss(pos_weight=...)`` (positives and negatives then weigh the same in total).

    A column with no positive or no negative (the weight would be infinite or zero) raises ValueError, or, with
    ``degenerate="one"``, gets weight 1 and a warning (a demo cohort of a few subjects may lack every CAD case).
    """
    y = torch.as_tensor(labels, dtype=torch.float64)
    if y.ndim != 2:
        raise ValueError(f"labels: expected (N, K), got shape {tuple(y.shape)}")
    observed = ~torch.isnan(y)
    vals = y[observed]
    if bool(((vals != 0) & (vals != 1)).any()):
        raise ValueError("labels: expected 0/1 values (NaN for missing)")
    p = torch.where(observed, y, 0.0).sum(0) / observed.sum(0).clamp_min(1)
    bad = ((p < eps) | (p > 1 - eps)).nonzero().flatten().tolist()
    if bad and degenerate != "one":
        raise ValueError(f"labels: columns {bad} have no positive or no negative (prevalence {p[bad].tolist()})")
    if bad:
        import warnings

        warnings.warn(f"pos_weight_from_prevalence: columns {bad} have prevalence {p[bad].tolist()}; weight 1 used")
    return torch.where((p < eps) | (p > 1 - eps), 1.0, (1 - p) / p.clamp(eps, 1 - eps)).to(torch.float32)


class MaskedDiceCELoss(nn.Module):
    """MONAI ``DiceCELoss(softmax=True, to_onehot_y=True)`` over the valid views only.

    Views are folded into the batch: each (subject, view) is one 3-D (T, H, W) sample, and the samples of views
    with ``valid`` False (the unlabelled 3ch view) are dropped before the loss, so their logits get no gradient and
    cannot change the loss. Keyword arguments go to ``DiceCELoss`` (e.g. ``lambda_dice``, ``include_background``).

    ``forward(logits (B, C, S, T, H, W), target (B, S, T, H, W) int labels, valid (B, S) bool) -> scalar``.
    """

    def __init__(self, **dice_ce_kwargs) -> None:
        super().__init__()
        kw = {"softmax": True, "to_onehot_y": True, **dice_ce_kwargs}
        self.loss = DiceCELoss(**kw)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 6:
            raise ValueError(f"logits: expected (B, C, S, T, H, W), got {tuple(logits.shape)}")
        b, c, s = logits.shape[:3]
        if tuple(target.shape) != (b, *logits.shape[2:]):
            raise ValueError(f"target: expected (B, S, T, H, W) = {(b, *logits.shape[2:])}, got {tuple(target.shape)}")
        if tuple(valid.shape) != (b, s):
            raise ValueError(f"valid (seg_valid): expected (B, S) = {(b, s)}, got {tuple(valid.shape)}")
        keep = valid.reshape(-1).bool()
        x = logits.transpose(1, 2).reshape(b * s, c, *logits.shape[3:])[keep]
        y = target.reshape(b * s, 1, *target.shape[2:])[keep]
        if x.shape[0] == 0:
            return logits.sum() * 0.0
        return self.loss(x, y.to(x.dtype))


class MagnitudeMSELoss(nn.Module):
    """Mean squared error between predicted and fully-sampled magnitude images.

    MSE rather than L1 because the reported metric is PSNR = 10·log10(max² / MSE): minimising MSE optimises PSNR
    directly (nn.MSELoss underneath; this wrapper only checks shapes and accepts a target with or without the
    channel axis).

    ``forward(pred (B, 1, S, T, H, W), target (B, S, T, H, W) or (B, 1, S, T, H, W), view_valid (B, S) | None)
    -> scalar``; views with ``view_valid`` 0 (missing from the subject) are left out of the mean.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mse = nn.MSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, view_valid: torch.Tensor | None = None) -> torch.Tensor:
        if pred.ndim != 6 or pred.shape[1] != 1:
            raise ValueError(f"pred: expected (B, 1, S, T, H, W), got {tuple(pred.shape)}")
        if target.ndim == 5:
            target = target[:, None]
        if target.shape != pred.shape:
            raise ValueError(f"target: expected (B, S, T, H, W) = {(pred.shape[0], *pred.shape[2:])}, "
                             f"got {tuple(target.shape)}")  # fmt: skip
        if view_valid is None:
            return self.mse(pred, target.to(pred.dtype))
        if tuple(view_valid.shape) != (pred.shape[0], pred.shape[2]):
            raise ValueError(f"view_valid: expected (B, S) = {(pred.shape[0], pred.shape[2])}, "
                             f"got {tuple(view_valid.shape)}")  # fmt: skip
        w = view_valid.to(pred.dtype)[:, None, :, None, None, None].expand_as(pred)
        return ((pred - target.to(pred.dtype)).square() * w).sum() / w.sum().clamp_min(1.0)
