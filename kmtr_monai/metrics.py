"""Representation metrics for Stage II: cross-modal retrieval top-k (optionally guarded against collapse), a ridge
linear probe (R^2) and the spread of an embedding (mean pairwise cosine, effective rank).

Plain functions plus Ignite ``Metric`` subclasses that accumulate embeddings over an epoch, gather them from
all ranks (``ignite.distributed``; uneven per-rank counts allowed) and compute once at epoch end, so they can be
attached to a MONAI ``SupervisedEvaluator`` (``key_val_metric``/``additional_metrics``) with an
``output_transform`` such as ``monai.handlers.from_engine(["z_kspace", "z_image"])``.

Validation sets should be split with ``monai.data.DistributedSampler(even_divisible=False)``: padding
duplicates a subject, which would create a second, equally good gallery match for it.
"""

from __future__ import annotations

import logging
import math
import warnings

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from kmtr_monai.distributed import all_gather_uneven

__all__ = ["retrieval_topk", "linear_probe_r2", "linear_probe_r2_cv", "r2_gain_interval", "embedding_spread",
           "RetrievalTopK", "LinearProbeR2", "EmbeddingSpread"]


def _as_2d_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (N, D), got shape {tuple(t.shape)}")
    return t


def _as_2d_numpy(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (N, D), got shape {a.shape}")
    return a


def retrieval_topk(
    z_query: torch.Tensor, z_gallery: torch.Tensor, ks: Sequence[int] = (1, 5), normalize: bool = True
) -> dict[str, float]:
    """Fraction of queries whose own gallery item (same index) is among the k most similar.

    Args:
        z_query: (N, D) query embeddings (k-space).
        z_gallery: (N, D) gallery embeddings (images); row i is the match of query i.
        ks: cut-offs.
        normalize: use cosine similarity (L2-normalise first); else the raw dot product.

    Returns:
        ``{"top1": ..., "top5": ...}``. The rank of the match is the number of gallery items scoring strictly
        higher, so ties count in the query's favour.
    """
    zq, zg = _as_2d_tensor(z_query, "z_query").float(), _as_2d_tensor(z_gallery, "z_gallery").float()
    if zq.shape != zg.shape or zq.shape[0] == 0:
        raise ValueError(
            f"z_query and z_gallery must be non-empty and of equal shape (N, D); got {tuple(zq.shape)} and "
            f"{tuple(zg.shape)}"
        )
    if isinstance(ks, int):
        ks = (ks,)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    if normalize:
        zq, zg = F.normalize(zq, dim=1), F.normalize(zg, dim=1)
    sim = zq @ zg.T  # (N, N)
    rank = (sim > sim.diagonal()[:, None]).sum(1)  # (N,) 0 = best
    n = rank.shape[0]
    return {f"top{int(k)}": int((rank < k).sum()) / n for k in ks}


SPREAD_STATISTICS = ("mean_cosine", "effective_rank")


def embedding_spread(z: Any) -> dict[str, float]:
    """How spread out the rows of ``z`` (N, D) are, on the unit sphere (the rows are L2-normalised first, as the
    contrastive losses and retrieval see them):

    - ``mean_cosine``: mean cosine over the N(N-1) ordered pairs of distinct rows (1: one direction; 0 for
      orthonormal rows; NaN for N < 2);
    - ``effective_rank``: exp of the entropy of the singular values normalised to sum 1 (Roy & Vetterli 2007): 1 for
      one direction, k for k orthonormal rows; uncentred.

    A collapsing contrastive embedding shows as the first rising towards 1 and the second falling (DESIGN §15).
    Computed by :func:`mean_pairwise_cosine` and :func:`effective_rank`
    in float64, so the probes' figures and these agree.
    """
    zt = _as_2d_tensor(z, "z").detach().cpu().double()
    if zt.shape[0] == 0:
        raise ValueError("embedding_spread needs at least one row")
    unit = F.normalize(zt, dim=1).numpy()
    cosine = mean_pairwise_cosine(unit) if unit.shape[0] >= 2 else float("nan")
    return {"mean_cosine": cosine, "effective_rank": effective_rank(unit)}


PROBE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))  # ridge strengths searched when alpha is None


def _probe_estimator(alpha: float | None):
    """Standardise x and y, then ridge: fixed ``alpha``, or (None) the best of ``PROBE_ALPHAS`` per target by
    efficient leave-one-out on the training rows only (``RidgeCV``): with fewer subjects than feature dimensions an
    untuned ridge overfits and gives strongly negative R^2 whatever the features hold."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if alpha is not None and not alpha >= 0:
        raise ValueError(f"alpha must be >= 0 or None, got {alpha}")
    ridge = RidgeCV(alphas=PROBE_ALPHAS, alpha_per_target=True) if alpha is None else Ridge(alpha=alpha)
    return TransformedTargetRegressor(regressor=make_pipeline(StandardScaler(), ridge), transformer=StandardScaler())


def _r2_dict(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import r2_score

    r2 = np.atleast_1d(r2_score(y_true, y_pred, multioutput="raw_values"))
    return {"r2": r2, "mean_r2": float(r2.mean())}


def linear_probe_r2(train_x: Any, train_y: Any, test_x: Any, test_y: Any, alpha: float | None = None) -> dict[str, Any]:
    """Ridge probe from embeddings to targets, fitted on train, scored on test.

    Features and targets are standardised with train statistics (scikit-learn ``StandardScaler`` +
    ``TransformedTargetRegressor``), so one ``alpha`` suits targets of any unit; ``alpha=None`` (default) picks it
    per target on the training rows (see ``_probe_estimator``).

    Args:
        train_x: (N, D) embeddings; train_y: (N,) or (N, P) targets; test_x/test_y likewise (M rows).

    Returns:
        ``{"r2": ndarray (P,) per-target R^2 on test, "mean_r2": float, "pred": ndarray (M, P) test predictions}``.
    """
    xtr, ytr = _as_2d_numpy(train_x, "train_x"), _as_2d_numpy(train_y, "train_y")
    xte, yte = _as_2d_numpy(test_x, "test_x"), _as_2d_numpy(test_y, "test_y")
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise ValueError(
            f"row counts differ: train_x {xtr.shape[0]} vs train_y {ytr.shape[0]}, "
            f"test_x {xte.shape[0]} vs test_y {yte.shape[0]}"
        )
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train/test widths differ: x {xtr.shape[1]} vs {xte.shape[1]}, y {ytr.shape[1]} vs {yte.shape[1]}")
    if xtr.shape[0] < 2 or xte.shape[0] < 2:
        raise ValueError("linear probe needs at least 2 train and 2 test rows")
    pred = np.asarray(_probe_estimator(alpha).fit(xtr, ytr).predict(xte)).reshape(yte.shape)
    return {**_r2_dict(yte, pred), "pred": pred}


def r2_gain_interval(
    y: Any, pred_ref: Any, pred_new: Any, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Gain in mean R^2 (over targets) of ``pred_new`` over ``pred_ref``, with a paired bootstrap interval.

    Rows (subjects) are resampled with replacement, the same rows for both predictions, by
    ``scipy.stats.bootstrap`` (BCa). A target's NaN rows are left out of its R^2.

    Args:
        y, pred_ref, pred_new: (N,) or (N, P) targets and two sets of predictions of them.

    Returns:
        ``{"gain": float, "low": float, "high": float}`` (the interval at ``confidence``).
    """
    from scipy.stats import bootstrap

    yy, a, b = (_as_2d_numpy(v, n) for v, n in ((y, "y"), (pred_ref, "pred_ref"), (pred_new, "pred_new")))
    if not yy.shape == a.shape == b.shape:
        raise ValueError(f"shapes differ: y {yy.shape}, pred_ref {a.shape}, pred_new {b.shape}")
    ok = np.isfinite(yy)
    if (ok.sum(0) < 3).any():
        raise ValueError(f"every target needs at least 3 finite rows, got {ok.sum(0).tolist()}")

    def mean_r2(rows: np.ndarray, pred: np.ndarray) -> float:
        w, t = ok[rows], np.where(ok[rows], yy[rows], 0.0)
        mu = t.sum(0) / np.maximum(w.sum(0), 1)
        ss_tot = (w * (t - mu) ** 2).sum(0)
        ss_res = (w * (t - np.where(w, pred[rows], 0.0)) ** 2).sum(0)
        return float(np.mean(1.0 - ss_res / np.maximum(ss_tot, np.finfo(float).tiny)))

    def gain(rows: np.ndarray) -> float:
        return mean_r2(rows, b) - mean_r2(rows, a)

    rows = np.arange(yy.shape[0])
    res = bootstrap((rows,), gain, vectorized=False, confidence_level=confidence, n_resamples=n_resamples,
                    random_state=np.random.default_rng(seed))  # fmt: skip
    ci = res.confidence_interval
    return {"gain": gain(rows), "low": float(ci.low), "high": float(ci.high)}


def linear_probe_r2_cv(x: Any, y: Any, alpha: float | None = None, n_splits: int = 5, seed: int = 0) -> dict[str, Any]:
    """K-fold cross-validated ridge probe on one set of embeddings (used inside evaluation).

    Every row is predicted by a probe fitted on the other folds (``sklearn.model_selection.cross_val_predict``
    with a shuffled ``KFold(n_splits, random_state=seed)``) and R^2 is computed once over all out-of-fold
    predictions. Deterministic, so every rank gets the same value.

    Returns:
        ``{"r2": ndarray (P,), "mean_r2": float}``.
    """
    from sklearn.model_selection import KFold, cross_val_predict

    xa, ya = _as_2d_numpy(x, "x"), _as_2d_numpy(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"row counts differ: x {xa.shape[0]} vs y {ya.shape[0]}")
    if n_splits < 2 or xa.shape[0] < 2 * n_splits:
        raise ValueError(f"need n_splits >= 2 and at least 2 * n_splits rows, got n_splits={n_splits}, N={xa.shape[0]}")
    pred = cross_val_predict(_probe_estimator(alpha), xa, ya, cv=KFold(n_splits, shuffle=True, random_state=seed))
    return _r2_dict(ya, np.asarray(pred).reshape(ya.shape))


def _stack_rows(x: Any, name: str) -> torch.Tensor:
    """Tensor (B, D) or (B,), or a list of per-sample tensors (decollated MONAI output) -> (B, D) float."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, (list, tuple)) and len(x) > 0:
        t = torch.stack([torch.as_tensor(v) for v in x])
    else:
        raise TypeError(f"{name}: expected a tensor or a non-empty list of per-sample tensors, got {type(x).__name__}")
    t = t.detach().float()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name}: expected (B, D) rows, got shape {tuple(t.shape)}")
    return t



def mean_pairwise_cosine(x: Any) -> float:
    """Mean cosine similarity over the distinct pairs of rows of ``x`` (N, D), N >= 2 (1: identical directions)."""
    z = torch.nn.functional.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float64), dim=1)
    n = z.shape[0]
    return float(((z @ z.T).sum() - n) / (n * (n - 1)))


def effective_rank(x: Any) -> float:
    """exp(entropy of the singular values of ``x`` (N, D) normalised to sum 1) (Roy & Vetterli 2007): k for k
    orthonormal rows, 1 for rows that are all multiples of one vector (collapse)."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))

class _EpochPairs(Metric):
    """Accumulates (a, b) row pairs over an epoch; ``_gathered()`` returns both gathered from all ranks."""

    _names = ("a", "b")
    required_output_keys = _names  # a Mapping output is read by these keys

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        self._a: list[torch.Tensor] = []
        self._b: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._a, self._b = [], []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise ValueError(f"{type(self).__name__}.update expects a pair {self._names}; fix output_transform")
        a, b = _stack_rows(output[0], self._names[0]), _stack_rows(output[1], self._names[1])
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"{self._names[0]} has {a.shape[0]} rows but {self._names[1]} has {b.shape[0]}")
        self._a.append(a.to(self._device))
        self._b.append(b.to(self._device))

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._a:
            raise RuntimeError(f"{type(self).__name__} must have at least one update before compute")
        return all_gather_uneven(torch.cat(self._a)), all_gather_uneven(torch.cat(self._b))


class RetrievalTopK(_EpochPairs):
    """Ignite metric: k-space -> image retrieval top-k over the whole (all-rank) validation set.

    ``output_transform`` must yield ``(z_kspace, z_image)``: (B, D) tensors or lists of (D,) tensors.
    ``compute()`` returns a float for an int ``k`` (usable as MONAI key metric), else ``{"top1": ..., ...}``.

    ``collapse_cosine_max`` (None: off) guards it as a key metric for checkpoint selection: when the mean pairwise
    cosine of the gathered ``z_kspace`` (:func:`embedding_spread`) is above it (or NaN), every value is ``-inf``,
    which :class:`kmtr_monai.engines.BestCheckpoint` and MONAI's ``metric_cmp_fn`` (``"max"``) never count as an
    improvement, so a collapsed epoch cannot become the best checkpoint. The cosine of the last compute is kept in
    ``self.last_cosine``.
    """

    _names = ("z_kspace", "z_image")
    required_output_keys = _names

    def __init__(
        self,
        k: int | Sequence[int] = 1,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
        collapse_cosine_max: float | None = None,
    ) -> None:
        if collapse_cosine_max is not None and not -1.0 <= float(collapse_cosine_max) <= 1.0:
            raise ValueError(f"collapse_cosine_max must be None or in [-1, 1], got {collapse_cosine_max!r}")
        self.k = k
        self.collapse_cosine_max = None if collapse_cosine_max is None else float(collapse_cosine_max)
        self.last_cosine: float | None = None
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float | dict[str, float]:
        zq, zg = self._gathered()
        res = retrieval_topk(zq, zg, ks=(self.k,) if isinstance(self.k, int) else tuple(self.k))
        if self.collapse_cosine_max is not None:
            self.last_cosine = embedding_spread(zq)["mean_cosine"]
            if not self.last_cosine <= self.collapse_cosine_max:  # NaN (one subject) is refused too
                logging.getLogger(__name__).warning(
                    f"RetrievalTopK: z_kspace mean pairwise cosine {self.last_cosine:.4f} > collapse_cosine_max "
                    f"{self.collapse_cosine_max} (collapsed); top-k reported as -inf so this epoch is never chosen")
                res = dict.fromkeys(res, -math.inf)
        return res[f"top{self.k}"] if isinstance(self.k, int) else res


class LinearProbeR2(_EpochPairs):
    """Ignite metric: mean cross-validated ridge-probe R^2 of targets from embeddings, over the epoch.

    ``output_transform`` must yield ``(z, y)``: embeddings (B, D) and targets (B,) or (B, P). There is no
    separate probe-training set inside evaluation, so the gathered validation embeddings are split into
    ``n_splits`` folds (:func:`linear_probe_r2_cv`; ``alpha=None`` tunes the ridge inside each training fold).
    ``compute()`` returns the mean R^2 (float); the per-target values of the last compute are kept in
    ``self.per_target``.
    """

    _names = ("z", "y")
    required_output_keys = _names

    def __init__(
        self,
        alpha: float | None = None,
        n_splits: int = 5,
        seed: int = 0,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.alpha, self.n_splits, self.seed = alpha, n_splits, seed
        self.per_target: np.ndarray | None = None
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float:
        z, y = self._gathered()
        n_splits = min(self.n_splits, z.shape[0] // 2)
        if n_splits < 2:  # fewer than 4 subjects: no cross-validation possible
            warnings.warn(f"LinearProbeR2: {z.shape[0]} validation embeddings are too few for a probe; returning NaN")
            self.per_target = None
            return float("nan")
        res = linear_probe_r2_cv(z.cpu(), y.cpu(), alpha=self.alpha, n_splits=n_splits, seed=self.seed)
        self.per_target = res["r2"]
        return res["mean_r2"]


class EmbeddingSpread(Metric):
    """Ignite metric: one statistic of :func:`embedding_spread` (``"mean_cosine"`` or ``"effective_rank"``) of the
    embeddings of the whole (all-rank, uneven counts allowed) validation set.

    ``output_transform`` must yield the embeddings: a (B, D) tensor or a list of (D,) tensors. ``compute()`` returns a
    float (for ``additional_metrics``; the align bundle logs it for ``z_kspace`` and ``z_image`` every validation).
    """

    def __init__(self, statistic: str = "mean_cosine", output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        if statistic not in SPREAD_STATISTICS:
            raise ValueError(f"statistic must be one of {SPREAD_STATISTICS}, got {statistic!r}")
        self.statistic = statistic
        self._rows: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._rows = []

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        self._rows.append(_stack_rows(output, "z").to(self._device))

    def compute(self) -> float:
        if not self._rows:
            raise RuntimeError("EmbeddingSpread must have at least one update before compute")
        return embedding_spread(all_gather_uneven(torch.cat(self._rows)).cpu())[self.statistic]
