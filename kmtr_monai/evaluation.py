"""Stage III evaluation (DESIGN §8): phenotype regression, disease classification, segmentation and reconstruction.

Pure functions (numpy/torch in, floats and dicts out) plus Ignite ``Metric`` subclasses for a MONAI
``SupervisedEvaluator`` (``key_val_metric`` / ``additional_metrics``). The Ignite metrics accumulate over the epoch,
gather from every DDP rank (``kmtr_monai.distributed.all_gather_uneven``; uneven counts allowed) and compute once,
so every rank returns the same value. Each metric documents the tuple its ``output_transform`` must yield, e.g.
``monai.handlers.from_engine(["pred", "label"])``; a dict engine output is read by ``required_output_keys``.

Reuse: scikit-learn (``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve``,
``precision_recall_fscore_support``, ``r2_score``), MONAI ``DiceMetric`` and ``SSIMMetric``. Written here: the
split-conformal quantile (a few lines, with the finite-sample rank), PSNR with a per-subject peak (MONAI's
``PSNRMetric`` takes one ``max_val`` for all subjects) and the NaN-aware per-column loops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from kmtr_monai.constants import DISEASES, LABELS, NUM_CLASSES, PHENOTYPES
from kmtr_monai.distributed import all_gather_uneven
from kmtr_monai.metrics import _EpochPairs, _stack_rows

__all__ = [
    "best_f1_threshold", "best_f1_thresholds", "classification_metrics", "prevalence_predictor_metrics",
    "regression_metrics", "mean_predictor_mae", "conformal_halfwidth", "interval_coverage", "dice_per_class",
    "psnr_magnitude", "ssim_2d",
    "PhenotypeMAE", "PhenotypeR2", "MultiLabelAUC", "BestF1Thresholds", "ConformalHalfwidths", "SegmentationDice",
    "MagnitudePSNR", "MagnitudeSSIM",
]  # fmt: skip

FOREGROUND = tuple(name for name, _ in sorted(LABELS.items(), key=lambda kv: kv[1]) if name != "background")


# ------------------------------------------------------------------------------------------------------ helpers
def _np2d(x: Any, name: str, width: int | None = None) -> np.ndarray:
    """Array-like (N,) or (N, K) -> float64 (N, K); checks the width when given."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if np.iscomplexobj(a):
        raise TypeError(f"{name}: expected real values, got complex dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected (N,) or (N, K), got shape {a.shape}")
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{name}: expected {width} columns, got shape {a.shape}")
    return a


def _pair(y: Any, p: Any, ny: str, np_: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _np2d(y, ny), _np2d(p, np_)
    if a.shape != b.shape:
        raise ValueError(f"{ny} and {np_} must have the same shape (N, K); got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{ny}: no rows")
    return a, b


def _names(names: Sequence[str] | None, k: int, default: Sequence[str], what: str) -> list[str]:
    if names is None:
        names = default if len(default) == k else [f"{what}_{i}" for i in range(k)]
    names = list(names)
    if len(names) != k:
        raise ValueError(f"names has {len(names)} entries but the arrays have {k} {what} columns")
    return names


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------- classification
def best_f1_threshold(y_true: Any, prob: Any) -> float:
    """Decision threshold maximising F1 on one binary target (validation split).

    Args:
        y_true: (N,) 0/1 labels (NaN rows are dropped). prob: (N,) scores or probabilities.

    Returns:
        t such that ``prob >= t`` is predicted positive (the ``precision_recall_curve`` convention); t is one of the
        observed scores. Ties in F1 go to the highest such threshold (fewest positive calls at equal F1).
        Degenerate case: with no positive label F1 is 0 at every threshold; the fallback is then 0.5 (the neutral
        probability), with a warning. All-positive labels give the lowest score (call everyone positive).
    """
    from sklearn.metrics import precision_recall_curve

    y, p = _pair(y_true, prob, "y_true", "prob")
    if y.shape[1] != 1:
        raise ValueError(f"best_f1_threshold takes one target (N,), got shape {y.shape}; see best_f1_thresholds")
    ok = np.isfinite(y[:, 0])
    y, p = y[ok, 0], p[ok, 0]
    if not np.isfinite(p).all():
        raise ValueError("prob contains NaN or Inf")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"y_true must be 0/1, got values {np.unique(y)[:5].tolist()}")
    if y.size == 0 or y.sum() == 0:
        warnings.warn("best_f1_threshold: no positive label; F1 is 0 at every threshold, falling back to 0.5")
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = np.flatnonzero(f1 == f1.max())
    return float(thresholds[best].max())


def best_f1_thresholds(y_true: Any, prob: Any) -> np.ndarray:
    """Per-column :func:`best_f1_threshold`: (N, K) labels and probabilities -> (K,) thresholds."""
    y, p = _pair(y_true, prob, "y_true", "prob")
    return np.array([best_f1_threshold(y[:, k], p[:, k]) for k in range(y.shape[1])], dtype=np.float64)


def classification_metrics(
    y_true: Any, prob: Any, thresholds: Any, names: Sequence[str] | None = DISEASES
) -> dict[str, dict[str, float]]:
    """Per-disease AUC-ROC, AP, F1, recall and precision at given thresholds, plus their means.

    Args:
        y_true: (N, K) 0/1 labels; NaN marks a missing label (that row is left out for that disease).
        prob: (N, K) probabilities. thresholds: (K,) (``prob >= t`` is positive, e.g. from validation).
        names: K disease names (default ``DISEASES``).

    Returns:
        ``{name: {"auc", "ap", "f1", "recall", "precision", "threshold", "prevalence", "n"}, "mean": {...}}``.
        AUC and AP are NaN (with a warning) when a disease has only one label value; means skip NaN. F1, recall and
        precision use ``zero_division=0``.
    """
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    y, p = _pair(y_true, prob, "y_true", "prob")
    k = y.shape[1]
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.shape != (k,):
        raise ValueError(f"thresholds must have shape ({k},), got {thr.shape}")
    names = _names(names, k, DISEASES, "disease")
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        ok = np.isfinite(y[:, j])
        yj, pj = y[ok, j], p[ok, j]
        if not np.isfinite(pj).all():
            raise ValueError(f"prob[:, {j}] ({name}) contains NaN or Inf")
        if not np.isin(yj, (0.0, 1.0)).all():
            raise ValueError(f"y_true[:, {j}] ({name}) must be 0/1")
        if yj.size == 0:
            raise ValueError(f"y_true[:, {j}] ({name}) has no finite label")
        pred = (pj >= thr[j]).astype(int)
        prec, rec, f1, _ = precision_recall_fscore_support(yj, pred, average="binary", zero_division=0)
        if np.unique(yj).size < 2:
            warnings.warn(f"classification_metrics: {name} has a single label value; AUC and AP are NaN")
            auc = ap = float("nan")
        else:
            auc, ap = float(roc_auc_score(yj, pj)), float(average_precision_score(yj, pj))
        out[name] = {"auc": auc, "ap": ap, "f1": float(f1), "recall": float(rec), "precision": float(prec),
                     "threshold": float(thr[j]), "prevalence": float(yj.mean()), "n": int(yj.size)}  # fmt: skip
    out["mean"] = {m: _nanmean([out[n][m] for n in names]) for m in ("auc", "ap", "f1", "recall", "precision")}
    return out


def prevalence_predictor_metrics(
    train_y: Any, test_y: Any, names: Sequence[str] | None = DISEASES
) -> dict[str, dict[str, float]]:
    """Reference classifier: every test subject gets the training prevalence as probability.

    AUC is 0.5 and AP the test prevalence by construction; with the prevalence as threshold everyone is called
    positive, so recall is 1 and F1 = 2q/(1+q) for test prevalence q. Shapes as :func:`classification_metrics`.
    """
    tr, te = _np2d(train_y, "train_y"), _np2d(test_y, "test_y")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train_y has {tr.shape[1]} columns but test_y has {te.shape[1]}")
    prev = np.nanmean(tr, axis=0)
    return classification_metrics(te, np.broadcast_to(prev, te.shape), prev, names)


# --------------------------------------------------------------------------------------------------- regression
def regression_metrics(
    y_true: Any, y_pred: Any, names: Sequence[str] | None = PHENOTYPES
) -> dict[str, dict[str, float]]:
    """Per-phenotype MAE (native units) and R², NaN targets ignored, plus the means over phenotypes.

    Args:
        y_true, y_pred: (N, K) in native units (mL, %, g). A NaN target drops that row for that phenotype only.

    Returns:
        ``{name: {"mae", "r2", "n"}, "mean": {"mae", "r2"}}``; R² (sklearn ``r2_score``) is NaN with fewer than
        2 finite rows.
    """
    from sklearn.metrics import r2_score

    y, p = _pair(y_true, y_pred, "y_true", "y_pred")
    names = _names(names, y.shape[1], PHENOTYPES, "phenotype")
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        ok = np.isfinite(y[:, j])
        yj, pj = y[ok, j], p[ok, j]
        if not np.isfinite(pj).all():
            raise ValueError(f"y_pred[:, {j}] ({name}) contains NaN or Inf where the target is finite")
        mae = float(np.abs(yj - pj).mean()) if yj.size else float("nan")
        r2 = float(r2_score(yj, pj)) if yj.size >= 2 else float("nan")
        out[name] = {"mae": mae, "r2": r2, "n": int(yj.size)}
    out["mean"] = {m: _nanmean([out[n][m] for n in names]) for m in ("mae", "r2")}
    return out


def mean_predictor_mae(train_y: Any, test_y: Any) -> np.ndarray:
    """Reference: MAE (K,) on test of predicting the training mean (NaN-aware both sides); its R² is <= 0."""
    tr, te = _np2d(train_y, "train_y"), _np2d(test_y, "test_y")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train_y has {tr.shape[1]} columns but test_y has {te.shape[1]}")
    return np.nanmean(np.abs(te - np.nanmean(tr, axis=0)), axis=0)


def conformal_halfwidth(abs_residuals: Any, coverage: float = 0.9) -> np.ndarray:
    """Split-conformal half-widths (K,) from calibration residuals |y - ŷ| (N, K).

    Per column, with n finite residuals, the half-width is the ceil((n + 1)·coverage)-th smallest residual, so
    ``ŷ ± q`` covers a new exchangeable subject with probability >= coverage; +inf when that rank exceeds n (too few
    calibration subjects). NaN residuals (missing targets) are dropped per column.
    """
    r = _np2d(abs_residuals, "abs_residuals")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    if (r[np.isfinite(r)] < 0).any():
        raise ValueError("abs_residuals must be non-negative (absolute residuals)")
    out = np.full(r.shape[1], np.inf)
    for j in range(r.shape[1]):
        rj = np.sort(r[np.isfinite(r[:, j]), j])
        rank = math.ceil((rj.size + 1) * coverage - 1e-12)  # tolerance: (n+1)*0.9 in floating point
        if 1 <= rank <= rj.size:
            out[j] = rj[rank - 1]
    return out


def interval_coverage(y: Any, lower: Any, upper: Any) -> np.ndarray:
    """Fraction (K,) of finite targets with lower <= y <= upper; (N, K) inputs, NaN targets ignored."""
    yy = _np2d(y, "y")
    lo, hi = _np2d(lower, "lower"), _np2d(upper, "upper")
    if not yy.shape == lo.shape == hi.shape:
        raise ValueError(f"shapes differ: y {yy.shape}, lower {lo.shape}, upper {hi.shape}")
    ok = np.isfinite(yy)
    inside = (lo <= yy) & (yy <= hi) & ok
    n = ok.sum(0)
    return np.where(n > 0, inside.sum(0) / np.maximum(n, 1), np.nan)


# ------------------------------------------------------------------------------------------------- segmentation
def _tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x.detach()
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x)
    if isinstance(x, (list, tuple)) and len(x) > 0:  # decollated per-sample tensors
        return torch.stack([_tensor(v, name) for v in x])
    raise TypeError(f"{name}: expected a tensor, array or non-empty list of per-sample tensors, got {type(x).__name__}")


def _dice_rows(pred: Any, target: Any, valid_views: Any, n_classes: int) -> torch.Tensor:
    """Per-subject foreground Dice (N, n_classes - 1), NaN where the class is absent from the target."""
    from monai.metrics import compute_dice

    p, t = _tensor(pred, "pred"), _tensor(target, "target")
    if p.ndim == t.ndim + 1:  # scores with a class axis (N, C, S, T, H, W) -> labels
        if p.shape[1] != n_classes:
            raise ValueError(f"pred has {p.shape[1]} class channels, expected n_classes={n_classes}")
        p = p.argmax(1)
    if p.shape != t.shape or t.ndim < 3:
        raise ValueError(f"pred labels {tuple(p.shape)} and target {tuple(t.shape)} must both be (N, S, ...)")
    if p.is_floating_point() and not torch.equal(p, p.round()):
        raise ValueError("pred must hold integer labels (or class scores with a class axis)")
    v = _tensor(valid_views, "valid_views").to(torch.bool)
    if v.shape != t.shape[:2]:
        raise ValueError(f"valid_views must be (N, S) = {tuple(t.shape[:2])}, got {tuple(v.shape)}")
    for nm, lab in (("pred", p), ("target", t)):
        if lab.numel() and (lab.min() < 0 or lab.max() >= n_classes):
            raise ValueError(f"{nm} labels must lie in [0, {n_classes - 1}], got [{int(lab.min())}, {int(lab.max())}]")
    keep = v.view(*v.shape, *([1] * (t.ndim - 2)))
    p, t = (torch.where(keep, x.long(), 0) for x in (p, t))  # invalid views -> background in both: no effect on fg
    n = t.shape[0]
    return compute_dice(p.reshape(n, 1, -1), t.reshape(n, 1, -1), include_background=False, ignore_empty=True,
                        num_classes=n_classes).double()  # fmt: skip


def dice_per_class(
    pred_labels: Any, target: Any, valid_views: Any, n_classes: int = NUM_CLASSES, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Dice per foreground class and mean foreground Dice (DESIGN §8).

    Args:
        pred_labels: (N, S, T, H, W) integer labels, or scores (N, C, S, T, H, W) (argmax over C).
        target: (N, S, T, H, W) integer labels 0..n_classes-1. valid_views: (N, S) 0/1; invalid views (the
            unlabelled 3ch view) are excluded: they count as background in both, so they add nothing.

    Per subject, one Dice per class pools all valid views and frames (MONAI ``compute_dice``); a class absent
    from a subject's target gives NaN for that subject (MONAI ``ignore_empty=True``) and is skipped, so false
    positives of a class in a subject without it are not scored. Class Dice = mean over subjects;
    ``"mean_foreground"`` = mean of the class Dice values (NaN classes skipped).

    Returns:
        ``{"LV": ..., "MYO": ..., "RV": ..., "LA": ..., "RA": ..., "mean_foreground": ...}``.
    """
    rows = _dice_rows(pred_labels, target, valid_views, n_classes).numpy()
    names = _names(names, n_classes - 1, FOREGROUND, "class")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN
        per = np.nanmean(rows, axis=0)
    out = {name: float(v) for name, v in zip(names, per)}
    out["mean_foreground"] = _nanmean(per)
    return out


# ----------------------------------------------------------------------------------------------- reconstruction
def _magnitudes(pred: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _tensor(pred, "pred"), _tensor(target, "target")
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must both be (N, ..., H, W)")
    p, t = p.abs().double(), t.abs().double()  # |complex| or |real|: magnitude images
    if not (torch.isfinite(p).all() and torch.isfinite(t).all()):
        raise ValueError("pred or target contains NaN or Inf")
    return p, t


def _psnr_rows(pred: Any, target: Any) -> torch.Tensor:
    p, t = _magnitudes(pred, target)
    n = t.shape[0]
    peak = t.reshape(n, -1).amax(1)
    mse = ((p - t) ** 2).reshape(n, -1).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)  # mse 0 -> +inf


def psnr_magnitude(pred: Any, target: Any, reduction: str = "mean") -> float | np.ndarray:
    """PSNR (dB) on magnitude images with each subject's ground-truth maximum as peak.

    Args:
        pred, target: (N, ...) per subject, e.g. (N, S, T, H, W); complex or real (the magnitude is used).
        reduction: "mean" (mean over subjects) or "none" ((N,) per subject).

    ``10·log10(max|target|² / mean((|pred| - |target|)²))`` per subject. Written here because MONAI's
    ``PSNRMetric`` uses one fixed ``max_val`` for all subjects.
    """
    rows = _psnr_rows(pred, target).numpy()
    return float(rows.mean()) if reduction == "mean" else rows


def _ssim_rows(pred: Any, target: Any, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    from monai.metrics import SSIMMetric

    p, t = _magnitudes(pred, target)
    h, w = t.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(f"SSIM window {win_size} is larger than the frames ({h}, {w})")
    rows = []
    for pi, ti in zip(p, t):  # one data_range per subject
        peak = float(ti.max())
        metric = SSIMMetric(spatial_dims=2, data_range=peak if peak > 0 else 1.0, win_size=win_size,
                            kernel_sigma=sigma)  # fmt: skip
        rows.append(metric(pi.reshape(-1, 1, h, w), ti.reshape(-1, 1, h, w)).mean())
    return torch.stack(rows)


def ssim_2d(
    pred: Any, target: Any, reduction: str = "mean", win_size: int = 11, sigma: float = 1.5
) -> float | np.ndarray:
    """SSIM over 2-D frames with MONAI ``SSIMMetric`` (Gaussian window 11, σ 1.5, k1 0.01, k2 0.03).

    Args:
        pred, target: (N, ..., H, W), magnitudes taken; every (H, W) frame of a subject is one SSIM image, with
            data_range = that subject's ground-truth maximum. Mean over frames, then over subjects ("mean") or
            (N,) per subject ("none"). Equals skimage ``structural_similarity(..., gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False)``.
    """
    rows = _ssim_rows(pred, target, win_size, sigma).numpy()
    return float(rows.mean()) if reduction == "mean" else rows


# ---------------------------------------------------------------------------------------------- Ignite metrics
def _destandardize(x: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    if mean is None:
        return x
    if x.shape[1] != mean.numel():
        raise ValueError(f"pred has {x.shape[1]} columns but pred_mean/pred_std have {mean.numel()}")
    return x * std.to(x) + mean.to(x)


def _vec(v: Any, name: str) -> torch.Tensor | None:
    return None if v is None else torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(-1)


class _PairMetric(_EpochPairs):
    """(pred (B, K), label (B, K)) pairs over the epoch; optional sigmoid or de-standardisation of ``pred``.

    ``output_transform`` must yield ``(pred, label)``; a dict output is read by keys ``"pred"`` and ``"label"``.
    """

    _names = ("pred", "label")
    required_output_keys = _names

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu",
                 pred_mean: Any = None, pred_std: Any = None, sigmoid: bool = False) -> None:  # fmt: skip
        if (pred_mean is None) != (pred_std is None):
            raise ValueError("give both pred_mean and pred_std, or neither")
        self.pred_mean, self.pred_std, self.sigmoid = _vec(pred_mean, "pred_mean"), _vec(pred_std, "pred_std"), sigmoid
        super().__init__(output_transform=output_transform, device=device)
        self._skip_unrolling = True  # decollated per-sample lists are stacked in update, not unrolled by Ignite

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        pred, label = self._gathered()
        pred = _destandardize(pred.double(), self.pred_mean, self.pred_std)
        if self.sigmoid:
            pred = torch.sigmoid(pred)
        if pred.shape != label.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} shapes differ")
        return pred.cpu().numpy(), label.double().cpu().numpy()


class PhenotypeMAE(_PairMetric):
    """Key metric of ``regress``: mean over phenotypes of the MAE in native units (lower is better: mode "min").

    ``output_transform`` -> ``(pred (B, K), label (B, K))``, label in native units (NaN = missing, ignored). When
    the network predicts standardised targets give the training ``pred_mean``/``pred_std`` (K,): pred is mapped
    back to native units first. Per-phenotype values of the last compute: ``self.per_target`` (dict).
    """

    stat = "mae"

    def compute(self) -> float:
        pred, label = self._arrays()
        res = regression_metrics(label, pred, names=None)
        self.per_target = {k: v[self.stat] for k, v in res.items() if k != "mean"}
        return res["mean"][self.stat]


class PhenotypeR2(PhenotypeMAE):
    """Mean R² over phenotypes (higher is better); same inputs as :class:`PhenotypeMAE`."""

    stat = "r2"


class MultiLabelAUC(_PairMetric):
    """Key metric of ``classify``: mean AUC-ROC over diseases (higher is better: mode "max").

    ``output_transform`` -> ``(pred (B, K), label (B, K) 0/1)``; ``sigmoid=True`` when pred are logits (AUC is
    rank-based, so it does not change the value). Per-disease AUC of the last compute: ``self.per_target``.
    """

    def compute(self) -> float:
        pred, label = self._arrays()
        thr = np.full(pred.shape[1], 0.5)
        res = classification_metrics(label, pred, thr, names=None)
        self.per_target = {k: v["auc"] for k, v in res.items() if k != "mean"}
        return res["mean"]["auc"]


def _write_store(store: torch.Tensor | None, values: np.ndarray, what: str) -> None:
    if store is None:
        return
    if store.numel() != values.size:
        raise ValueError(f"{what}: store has {store.numel()} elements but {values.size} values were computed")
    with torch.no_grad():
        store.copy_(torch.as_tensor(values, dtype=store.dtype).reshape(store.shape))


class BestF1Thresholds(_PairMetric):
    """Calibration metric: best-F1 thresholds (K,) on the validation outputs, written into ``store``.

    ``store`` is a model buffer (e.g. ``model.threshold``, (K,)), so a checkpoint saved after this validation
    carries the thresholds that inference and test apply. ``output_transform`` -> ``(pred (B, K), label (B, K))``
    with probabilities (or logits and ``sigmoid=True``). Returns the mean threshold; ``self.thresholds`` keeps (K,).
    Attach it before the checkpoint saver (all ranks compute the same values from the gathered outputs).
    """

    def __init__(self, store: torch.Tensor | None = None, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", sigmoid: bool = False) -> None:  # fmt: skip
        self.store, self.thresholds = store, None
        super().__init__(output_transform=output_transform, device=device, sigmoid=sigmoid)

    def compute(self) -> float:
        pred, label = self._arrays()
        self.thresholds = best_f1_thresholds(label, pred)
        _write_store(self.store, self.thresholds, type(self).__name__)
        return float(self.thresholds.mean())


class ConformalHalfwidths(_PairMetric):
    """Calibration metric: split-conformal half-widths (K,) of |label - pred| on validation, written into ``store``.

    ``store`` is a model buffer (e.g. ``model.interval_halfwidth``, (K,)); inference reports ``pred ± store``.
    The half-widths are in the units of the (de-standardised, see ``pred_mean``/``pred_std``) pred and the label.
    ``output_transform`` -> ``(pred (B, K), label (B, K))``. Returns the mean half-width (+inf when the validation
    set is too small for the coverage: n < 1/(1 - coverage) - 1).
    """

    def __init__(self, store: torch.Tensor | None = None, coverage: float = 0.9,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu", pred_mean: Any = None,
                 pred_std: Any = None) -> None:  # fmt: skip
        self.store, self.coverage, self.halfwidths = store, float(coverage), None
        super().__init__(output_transform=output_transform, device=device, pred_mean=pred_mean, pred_std=pred_std)

    def compute(self) -> float:
        pred, label = self._arrays()
        self.halfwidths = conformal_halfwidth(np.abs(label - pred), self.coverage)
        if np.isinf(self.halfwidths).any():
            warnings.warn(f"ConformalHalfwidths: too few validation subjects for {self.coverage} coverage; +inf")
        _write_store(self.store, self.halfwidths, type(self).__name__)
        return float(self.halfwidths.mean())


class _PerSubjectRows(Metric):
    """Accumulates per-subject value rows (B, D) computed in ``update``; gathers and averages them at the end.

    The gathered rows (N, D) also go into ``engine.state.metric_details[name]``, which MONAI's ``MetricsSaver``
    writes as ``<name>_raw.csv`` (one row per subject) when given ``metric_details``: the report's paired intervals
    for Dice and PSNR are computed from them.
    """

    required_output_keys: tuple[str, ...] = ("pred", "label")

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        self._rows: list[torch.Tensor] = []
        self.details: np.ndarray | None = None  # the gathered rows (N, D) of the last compute
        # decollated per-sample lists are stacked in update; Ignite's unrolling only handles pairs
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._rows = []

    def _compute_rows(self, output: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        n = len(self.required_output_keys)
        if not isinstance(output, (tuple, list)) or len(output) != n:
            raise ValueError(f"{type(self).__name__}.update expects {self.required_output_keys}; fix output_transform")
        rows = self._compute_rows(output).double()
        self._rows.append((rows[:, None] if rows.ndim == 1 else rows).to(self._device))

    def _gathered(self) -> np.ndarray:
        if not self._rows:
            raise RuntimeError(f"{type(self).__name__} must have at least one update before compute")
        self.details = all_gather_uneven(torch.cat(self._rows)).cpu().numpy()
        return self.details

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        details = getattr(engine.state, "metric_details", None)
        if details is not None:  # MONAI engines have it, a plain Ignite engine does not
            details[name] = self.details


def subject_meta(batch: Any) -> list[dict]:
    """``MetricsSaver``'s ``batch_transform``: one ``{"filename_or_obj": eid}`` per subject of a collated batch
    (or of decollated per-subject dicts), so ``<metric>_raw.csv`` rows are named by eid; [] without eids."""
    if isinstance(batch, Mapping):
        return [{"filename_or_obj": str(e)} for e in batch.get("eid", [])]
    return [{"filename_or_obj": str(b["eid"])} for b in batch if isinstance(b, Mapping) and "eid" in b]


class SegmentationDice(_PerSubjectRows):
    """Key metric of ``segment-unetr``: mean foreground Dice over valid views (higher is better: mode "max").

    ``output_transform`` -> ``(pred, label)`` or ``(pred, label, valid)``: pred (B, S, T, H, W) labels or
    (B, C, S, T, H, W) scores, label (B, S, T, H, W), valid (B, S) view flags. MONAI engines do not copy extra
    batch keys into their output, so without ``valid`` in the output it is read from ``engine.state.batch
    [valid_key]`` (a collated dict or decollated per-sample dicts); ``valid_key=None``: every view is valid. A dict
    output is read by keys ``"pred"``, ``"label"`` (and ``valid_key`` when present). Same definition as
    :func:`dice_per_class`; per-class values of the last compute in ``self.per_class``, also put into the engine's
    metrics as ``<name with "mean_dice" → "dice">_<class>`` (``val_dice_LV``, ...) so ``MetricsSaver`` writes them.
    Written instead of MONAI ``MeanDice`` because that handler cannot drop invalid views.
    """

    required_output_keys = ("pred", "label", "seg_valid")

    def __init__(self, n_classes: int = NUM_CLASSES, valid_key: str | None = "seg_valid",
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.n_classes, self.valid_key, self.per_class = int(n_classes), valid_key, None
        super().__init__(output_transform=output_transform, device=device)

    def _batch_valid(self, engine) -> Any:
        batch = getattr(engine.state, "batch", None)
        if isinstance(batch, Mapping) and self.valid_key in batch:
            return batch[self.valid_key]
        if isinstance(batch, (list, tuple)) and batch and all(isinstance(b, Mapping) and self.valid_key in b
                                                              for b in batch):  # fmt: skip
            return [b[self.valid_key] for b in batch]
        raise KeyError(f"SegmentationDice: view-validity key {self.valid_key!r} is neither in the transformed "
                       f"output nor in engine.state.batch; pass it through output_transform or set valid_key=None")

    @torch.no_grad()
    def iteration_completed(self, engine) -> None:
        output = self._output_transform(engine.state.output)
        if isinstance(output, Mapping):
            keys = ("pred", "label") + ((self.valid_key,) if self.valid_key in output else ())
            output = tuple(output[k] for k in keys)
        if isinstance(output, (tuple, list)) and len(output) == 2:
            valid = None if self.valid_key is None else self._batch_valid(engine)
            output = (*output, valid)
        self.update(output)

    def _compute_rows(self, output: Sequence[Any]) -> torch.Tensor:
        pred, label, valid = output
        if valid is None:
            lab = _tensor(label, "label")
            valid = torch.ones(lab.shape[:2])
        return _dice_rows(pred, label, valid, self.n_classes)

    def compute(self) -> float:
        rows = self._gathered()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per = np.nanmean(rows, axis=0)
        self.per_class = dict(zip(_names(None, self.n_classes - 1, FOREGROUND, "class"), per.tolist()))
        return _nanmean(per)

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        for cls, value in (self.per_class or {}).items():
            engine.state.metrics[f"{name.replace('mean_dice', 'dice')}_{cls}"] = value


class MagnitudePSNR(_PerSubjectRows):
    """Key metric of ``recon``: mean per-subject PSNR on magnitude, peak = ground-truth max (mode "max").

    ``output_transform`` -> ``(pred, label)``: (B, ...) magnitude or complex images (see :func:`psnr_magnitude`).
    """

    def _compute_rows(self, output: Sequence[Any]) -> torch.Tensor:
        return _psnr_rows(output[0], output[1])

    def compute(self) -> float:
        return float(self._gathered().mean())


class MagnitudeSSIM(_PerSubjectRows):
    """Mean per-subject SSIM over 2-D frames (see :func:`ssim_2d`); ``output_transform`` -> ``(pred, label)``."""

    def _compute_rows(self, output: Sequence[Any]) -> torch.Tensor:
        return _ssim_rows(output[0], output[1])

    def compute(self) -> float:
        return float(self._gathered().mean())


class MultiLabelStat(_PairMetric):
    """Mean over diseases of one of ``classification_metrics``' statistics (``"f1"``, ``"recall"``, ``"precision"``,
    ``"ap"``, ``"auc"``) at fixed ``thresholds`` (K,), e.g. the model's stored best-F1 buffer at test time.

    ``output_transform`` -> ``(pred (B, K), label (B, K) 0/1)``; ``sigmoid=True`` for logits. Per-disease values of
    the last compute: ``self.per_target``.
    """

    def __init__(self, stat: str, thresholds: Any, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu", sigmoid: bool = False) -> None:  # fmt: skip
        if stat not in ("auc", "ap", "f1", "recall", "precision"):
            raise ValueError(f"stat must be one of auc, ap, f1, recall, precision; got {stat!r}")
        self.stat, self.thresholds = stat, thresholds
        super().__init__(output_transform=output_transform, device=device, sigmoid=sigmoid)

    def compute(self) -> float:
        pred, label = self._arrays()
        thr = torch.as_tensor(self.thresholds).detach().cpu().double().numpy().reshape(-1)
        res = classification_metrics(label, pred, thr, names=None)
        self.per_target = {k: v[self.stat] for k, v in res.items() if k != "mean"}
        return res["mean"][self.stat]


class IntervalCoverage(_PairMetric):
    """Mean over phenotypes of the fraction of subjects whose target lies in ``pred ± halfwidth`` (the stored
    split-conformal half-widths (K,)); measured on a split that did not calibrate them, it checks the stated coverage.

    ``output_transform`` -> ``(pred (B, K), label (B, K))`` native units. Per-phenotype values: ``self.per_target``.
    """

    def __init__(self, halfwidth: Any, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.halfwidth = halfwidth
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float:
        pred, label = self._arrays()
        hw = torch.as_tensor(self.halfwidth).detach().cpu().double().numpy().reshape(1, -1)
        cover = interval_coverage(label, pred - hw, pred + hw)
        self.per_target = dict(enumerate(cover.tolist()))
        return _nanmean(cover.tolist())
