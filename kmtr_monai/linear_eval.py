"""The linear evaluation protocol of the floors and probes (DESIGN §15): inputs, fit, outputs.

* **Inputs** (:func:`split_inputs`): every subject of a split through a bundle's deterministic
  ``validate#preprocessing`` (the ``regress`` bundle at the run's preset; phase map and ky–t mask seeded by
  ``eid``), i.e. exactly what a model is validated and tested on; cached per (input, R, split) as ``.npz`` and
  rebuilt when the datalist, the phenotype table, the bundle configs or the config overrides (the pipeline's
  ``--set``) change (a SHA-256 digest is stored).
* **Fit** (:func:`linear_eval`): features standardised with training statistics; per phenotype a ridge
  regression on standardised targets, per disease an L2 logistic regression with ``class_weight="balanced"`` (the
  classify bundle's ``pos_weight`` = negatives/positives gives the same class ratio). The strength is chosen on the
  validation split only (best R² / AUC over :data:`STRENGTH_GRID`; ties go to the stronger regularisation), the
  model fitted on the training split with it and applied to validation and test. Rows with a NaN target are
  dropped for that target only. Deterministic (closed-form ridge, Newton–Cholesky logistic, no shuffling).
* **Outputs** (:func:`write_linear_results`): a model's test folder (``phenotypes.csv`` or ``diseases.csv``,
  ``targets.csv``, ``metrics.csv``), so the report pairs a floor or probe with the models by eid.

Exact reduction: an L2-penalised linear model's weights lie in the span of the (standardised) training rows, so
the features are first replaced by their coordinates in that span (:func:`reduce_features`, an eigendecomposition
of the training Gram matrix, rank <= N_train). The predictions are those of the fit on the full features (tested
against scikit-learn on the raw features), at a cost independent of the feature count after one Gram product.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.metrics import effective_rank, mean_pairwise_cosine

__all__ = [
    "SPLITS", "STRENGTH_GRID", "TASKS", "bundle_parser", "inputs_parser", "load_split", "batched", "file_digest",
    "cached_arrays", "inputs_digest", "split_inputs", "reduced_cache", "reduced_split", "mean_pairwise_cosine",
    "effective_rank", "reduce_features", "linear_eval", "fit_linear_readout", "write_linear_results", "write_metrics",
    "finish_run",
]  # fmt: skip

SPLITS = ("training", "validation", "test")
TASKS = ("regress", "classify")
#: Regularisation grid, relative: ridge ``alpha = g * s`` and logistic ``C = 1 / (g * s)`` with ``s`` the mean
#: squared norm of a standardised training row (the number of non-constant features), so one grid serves 10 or
#: 100,000 features. 15 values, 10^-4 .. 10^3.
STRENGTH_GRID = tuple(10.0 ** np.arange(-4.0, 3.01, 0.5))
_INPUT_KEYS = {"image": ("image",), "zero_filled": ("zero_filled",), "kspace": ("kspace", "mask")}
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------------- inputs
def bundle_parser(bundle: str | Path, preset: str, overrides: Mapping[str, Any]):
    """``monai.bundle.ConfigParser`` over ``config_files(bundle, "train", preset)`` with ``overrides`` set
    (``bundle_root`` defaults to ``bundle``)."""
    from monai.bundle import ConfigParser

    from kmtr_monai.bundle import config_files

    parser = ConfigParser()
    parser.read_config(config_files(Path(bundle), "train", preset))
    for key, value in {"bundle_root": str(bundle), **dict(overrides)}.items():
        parser[key] = value
    return parser


def load_split(parser, split: str, keys: Sequence[str] = ("image", "kspace", "mask", "phenotypes")) -> dict:
    """All subjects of ``split`` through ``validate#preprocessing`` (batched by the bundle's dataloader).

    Returns ``keys`` as stacked tensors, e.g. ``image`` (N,S,T,H,W), ``kspace`` (N,2,S,T,H,W), ``mask`` (N,S,T,H),
    ``phenotypes`` (N,12) (NaN kept), and ``eid`` (list of N str) in datalist order.
    """
    parser["validate#dataset#data"] = f"$kmtr_monai.data.datalist.read_datalist(@datalist_file, {split!r})"
    parser["validate#dataset#progress"] = False
    loader = parser.get_parsed_content("validate#dataloader", lazy=False)
    batches = list(loader)
    if not batches:
        raise ValueError(f"split {split!r} of {parser.get_parsed_content('datalist_file')} is empty")
    out = {k: torch.cat([torch.as_tensor(b[k]) for b in batches]) for k in keys}
    out["eid"] = [str(e) for b in batches for e in b["eid"]]
    return out


@torch.no_grad()
def batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Apply ``fn`` to row-chunks of ``tensors`` on ``device``; concatenated (N, D) float64 on CPU."""
    n = tensors[0].shape[0]
    outs = [fn(*(t[i : i + batch_size].to(device) for t in tensors)).double().cpu() for i in range(0, n, batch_size)]
    return torch.cat(outs)


def file_digest(*parts: Any) -> str:
    """SHA-256 over ``parts``: a ``Path`` to a file contributes its bytes (a missing one ``None``), anything else
    its ``repr``."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, os.PathLike):
            h.update(Path(p).read_bytes() if Path(p).is_file() else b"None")
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def cached_arrays(path: Path, digest: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays in ``path`` when its stored ``digest`` matches; otherwise ``build()``, saved there first. The
    returned dict also holds ``"digest"`` (a 0-d str array), so derived caches can key on it."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) == digest:
                return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, digest=np.array(digest), **arrays)
    os.replace(tmp, path)
    return {**arrays, "digest": np.array(digest)}


def _input_r(input: str, acceleration: int | None) -> int | None:
    if input not in _INPUT_KEYS:
        raise ValueError(f"input must be one of {sorted(_INPUT_KEYS)}, got {input!r}")
    return None if input == "image" else int(acceleration if acceleration is not None else 4)


def inputs_digest(cohort: str | Path, bundles: str | Path, preset: str, input: str, acceleration: int | None,
                  split: str, overrides: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The cache key of :func:`split_inputs`, without loading anything: SHA-256 of the cohort's ``datalist.json``
    and ``phenotypes.csv``, the ``regress`` bundle's config files at ``preset`` and the arguments (``overrides``
    only when not empty, so the key without them is the one of earlier versions)."""
    from kmtr_monai.bundle import config_files

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cohort, bundles = Path(cohort).resolve(), Path(bundles).resolve()
    datalist = cohort / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist} does not exist (write it with `kmtr datalist {cohort}`)")
    configs = config_files(bundles / "regress", "train", preset)
    extra = [repr(sorted(overrides.items()))] if overrides else []
    return file_digest(_CACHE_VERSION, datalist, cohort / "phenotypes.csv", *map(Path, configs), str(cohort), preset,
                       input, _input_r(input, acceleration), split, *extra)  # fmt: skip


def inputs_parser(cohort: str | Path, bundles: str | Path, preset: str, input: str, acceleration: int | None,
                  overrides: Mapping[str, Any] | None = None):  # fmt: skip
    """The ``regress`` bundle's parser :func:`split_inputs` loads through: ``overrides`` (e.g. the pipeline's
    ``--set``) with the keys it sets itself (cohort, input, R, kept keys) on top."""
    r = _input_r(input, acceleration)
    over = {**(overrides or {}), "dataset_dir": str(Path(cohort).resolve()), "num_workers": 0, "input": input,
            "keep_keys": ["eid", "phenotypes", "diseases", *_INPUT_KEYS[input]]}  # fmt: skip
    if r is not None:
        over["val_acceleration"] = r
    return bundle_parser(Path(bundles).resolve() / "regress", preset, over)


def split_inputs(cohort: str | Path, bundles: str | Path, preset: str, input: str, acceleration: int | None,
                 split: str, cache: str | Path, overrides: Mapping[str, Any] | None = None
                 ) -> dict[str, np.ndarray]:  # fmt: skip
    """What the models read for one split, through the ``regress`` bundle's validation preprocessing.

    ``input``: ``"image"`` (fully sampled, ``acceleration`` ignored), ``"zero_filled"`` (|ifft2c| of the
    undersampled k-space, the bundle's ``input_transforms``) or ``"kspace"`` (the masked k-space and its mask).
    Returns float32 ``image`` or ``zero_filled`` (N,S,T,H,W), or ``kspace`` (N,2,S,T,H,W) and ``mask`` (N,S,T,H);
    float64 ``phenotypes`` (N,12) and ``diseases`` (N,3) (NaN = missing); ``eid`` (N,) str; ``digest``
    (:func:`inputs_digest`). Cached in ``cache/<input>_R<R>_<split>.npz`` (``image_<split>.npz``). ``overrides``:
    further config keys of the bundle (:func:`inputs_parser`).
    """
    r = _input_r(input, acceleration)
    cohort, bundles = Path(cohort).resolve(), Path(bundles).resolve()
    digest = inputs_digest(cohort, bundles, preset, input, r, split, overrides)
    name = f"{input}_{split}.npz" if r is None else f"{input}_R{r}_{split}.npz"

    def build() -> dict[str, np.ndarray]:
        parser = inputs_parser(cohort, bundles, preset, input, r, overrides)
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a base seed: leave the caller's RNG alone
            data = load_split(parser, split, keys=(*_INPUT_KEYS[input], "phenotypes", "diseases"))
        out = {k: data[k].float().numpy() for k in _INPUT_KEYS[input]}
        out.update(phenotypes=data["phenotypes"].double().numpy(), diseases=data["diseases"].double().numpy(),
                   eid=np.array(data["eid"], dtype=str))  # fmt: skip
        return out

    return cached_arrays(Path(cache) / name, digest, build)


def reduced_cache(path: str | Path, digest: str, features: Callable[[], tuple[dict, dict]]) -> dict[str, np.ndarray]:
    """Reduced features of every split, cached in ``path`` under ``digest`` (:func:`cached_arrays`).

    ``features()`` → ``({name: {split: (N, D) features}}, {split: split_inputs arrays})``; it runs only on a cache
    miss. Returns ``<name>_<split>`` (N, r) and ``<name>_scale`` (:func:`reduce_features`), ``<name>_mean_cosine``
    and ``<name>_effective_rank`` of the raw test features, and ``eid_<split>``, ``phenotypes_<split>``,
    ``diseases_<split>``, so a cache hit reads neither the inputs nor a network.
    """

    def build() -> dict[str, np.ndarray]:
        feats, arrays = features()
        out = {}
        for name, per_split in feats.items():
            z_tr, z_va, z_te, scale = reduce_features(*(per_split[s] for s in SPLITS))
            out.update({f"{name}_training": z_tr, f"{name}_validation": z_va, f"{name}_test": z_te,
                        f"{name}_scale": np.array(scale),
                        f"{name}_mean_cosine": np.array(mean_pairwise_cosine(per_split["test"])),
                        f"{name}_effective_rank": np.array(effective_rank(per_split["test"]))})  # fmt: skip
        for s in SPLITS:
            out.update({f"{k}_{s}": arrays[s][k] for k in ("eid", "phenotypes", "diseases")})
        return out

    return cached_arrays(Path(path), digest, build)


def reduced_split(red: Mapping[str, np.ndarray], name: str) -> tuple:
    """``(Z_train, Z_val, Z_test, scale)`` of feature set ``name`` from :func:`reduced_cache`."""
    return (*(red[f"{name}_{s}"] for s in SPLITS), float(red[f"{name}_scale"]))


# -------------------------------------------------------------------------------------------------------- fit
def reduce_features(train: np.ndarray, *others: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, ...]:
    """Standardise (N, D) features with ``train``'s mean and std (constant features → 0) and express every split in
    the orthonormal basis of the standardised training rows' span: returns ``(Z_train (N, r), *Z_others (M, r),
    scale)``, r <= N the numerical rank, ``scale`` = mean squared norm of a standardised training row.

    Inner products with any weight vector in that span are preserved (``Z = X V`` with ``V`` orthonormal), so an
    L2-penalised linear model on ``Z`` predicts exactly as on the standardised ``X``. float64 throughout; the
    features are processed in column chunks of ``chunk``.
    """
    train = np.asarray(train)
    n, d = train.shape
    gram = np.zeros((n, n))
    cross = [np.zeros((np.asarray(o).shape[0], n)) for o in others]
    for c in range(0, d, chunk):
        block = train[:, c : c + chunk].astype(np.float64)
        mu, sd = block.mean(0), block.std(0)
        sd = np.where(sd > 1e-12 * np.maximum(np.abs(mu), 1.0), sd, np.inf)  # constant feature → 0
        block = (block - mu) / sd
        gram += block @ block.T
        for o, acc in zip(others, cross):
            acc += ((np.asarray(o)[:, c : c + chunk].astype(np.float64) - mu) / sd) @ block.T
    evals, evecs = np.linalg.eigh(gram)
    keep = evals > max(evals.max(initial=0.0), 0.0) * 1e-10 * max(n, 1)
    evals, evecs = evals[keep][::-1], evecs[:, keep][:, ::-1]
    s = np.sqrt(evals)
    z_train = evecs * s  # U S
    z_others = tuple(acc @ evecs / s for acc in cross)  # X_o V = X_o X^T U S^-1
    scale = float(np.trace(gram) / n) if n else 1.0
    return (z_train, *z_others, max(scale, 1e-12))


def _pick(scores: list[float]) -> int:
    """Index of the best finite score, ties to the larger index (stronger regularisation in our grid order);
    the grid's middle when no score is finite."""
    a = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(a).any():
        return len(a) // 2
    best = np.nanmax(np.where(np.isfinite(a), a, -np.inf))
    return int(np.flatnonzero(a >= best - 1e-12).max())


def _constant(z: Mapping[str, np.ndarray], value: float) -> tuple[np.ndarray, float]:
    """The read-out of a column with nothing to fit: zero weights, ``value`` as intercept."""
    return np.zeros(z["training"].shape[1]), float(value)


def _ridge_column(z: dict[str, np.ndarray], y: dict[str, np.ndarray], scale: float) -> tuple[dict, float, float, tuple]:
    """One phenotype: (pred per split in native units, chosen alpha, validation R² at it, (coef (r,), intercept):
    the chosen model in native units, ``pred = z @ coef + intercept``)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    ok = {s: np.isfinite(y[s]) for s in y}
    ytr = y["training"][ok["training"]]
    if ytr.size < 2:
        nothing = _constant(z, ytr.mean() if ytr.size else 0.0)
        return {s: np.full(len(y[s]), np.nan) for s in y}, math.nan, math.nan, nothing
    mu, sd = ytr.mean(), max(ytr.std(), 1e-12)
    alphas = sorted(g * scale for g in STRENGTH_GRID)  # ascending: index grows with the regularisation (_pick)
    fits, scores = [], []
    for a in alphas:
        m = Ridge(alpha=a).fit(z["training"][ok["training"]], (ytr - mu) / sd)
        fits.append(m)
        yv = y["validation"][ok["validation"]]
        scores.append(r2_score(yv, m.predict(z["validation"][ok["validation"]]) * sd + mu) if yv.size >= 2
                      else math.nan)  # fmt: skip
    k = _pick(scores)
    pred = {s: fits[k].predict(z[s]) * sd + mu for s in z}
    return pred, float(alphas[k]), float(scores[k]), (fits[k].coef_ * sd, float(fits[k].intercept_ * sd + mu))


def _logistic_column(z: dict[str, np.ndarray], y: dict[str, np.ndarray], scale: float
                     ) -> tuple[dict, float, float, tuple]:  # fmt: skip
    """One disease: (probability per split, chosen C, validation AUC at it, (coef (r,), intercept): the chosen model,
    ``logit = z @ coef + intercept``)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    ok = {s: np.isfinite(y[s]) for s in y}
    ytr = y["training"][ok["training"]]
    if np.unique(ytr).size < 2:  # nothing to fit: the training prevalence for everyone
        prev = float(ytr.mean()) if ytr.size else 0.5
        logit = math.log(prev / (1 - prev)) if 0 < prev < 1 else 0.0
        return {s: np.full(len(z[s]), prev) for s in z}, math.nan, math.nan, _constant(z, logit)
    cs = sorted(1.0 / (g * scale) for g in STRENGTH_GRID)[::-1]  # descending C: index grows with the regularisation
    fits, scores = [], []
    yv = y["validation"][ok["validation"]]
    for c in cs:
        m = LogisticRegression(C=c, class_weight="balanced", solver="newton-cholesky", max_iter=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m.fit(z["training"][ok["training"]], ytr.astype(int))
        fits.append(m)
        scores.append(roc_auc_score(yv, m.predict_proba(z["validation"][ok["validation"]])[:, 1])
                      if np.unique(yv).size == 2 else math.nan)  # fmt: skip
    k = _pick(scores)
    readout = (fits[k].coef_[0], float(fits[k].intercept_[0]))
    return {s: fits[k].predict_proba(z[s])[:, 1] for s in z}, float(cs[k]), float(scores[k]), readout


def linear_eval(features: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], task: str,
                names: Sequence[str] | None = None, reduced: tuple | None = None) -> dict[str, Any]:  # fmt: skip
    """The protocol on one feature set.

    Args:
        features: ``{"training", "validation", "test"}`` → (N_split, D) features (ignored when ``reduced``).
        targets: same keys → (N_split, K) phenotypes (native units) or 0/1 diseases; NaN = missing.
        task: ``"regress"`` (ridge per column) or ``"classify"`` (balanced L2 logistic per column).
        names: K column names (default ``PHENOTYPES`` / ``DISEASES``).
        reduced: a cached ``reduce_features(train, val, test)`` result, to skip that step.

    Returns:
        ``{"pred": {split: (N, K)}`` (native units or probabilities), ``"strength": {name: alpha or C}``,
        ``"val_score": {name: validation R² or AUC at the chosen strength}``, ``"thresholds"`` (K,) best-F1 on
        validation (classify only) ``, "metrics": {"validation": {...}, "test": {...}}`` (:func:`_split_metrics`)}.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    names = list(names or (PHENOTYPES if task == "regress" else DISEASES))
    z_tr, z_va, z_te, scale = reduced if reduced is not None else reduce_features(
        features["training"], features["validation"], features["test"])  # fmt: skip
    z = {"training": z_tr, "validation": z_va, "test": z_te}
    y = {s: np.asarray(targets[s], dtype=np.float64) for s in SPLITS}
    for s in SPLITS:
        if y[s].ndim != 2 or y[s].shape != (len(z[s]), len(names)):
            raise ValueError(f"targets[{s!r}] must be ({len(z[s])}, {len(names)}), got {y[s].shape}")
    fit = _ridge_column if task == "regress" else _logistic_column
    pred = {s: np.full(y[s].shape, np.nan) for s in SPLITS}
    strength, val_score = {}, {}
    for j, name in enumerate(names):
        p, strength[name], val_score[name], _ = fit(z, {s: y[s][:, j] for s in SPLITS}, scale)
        for s in SPLITS:
            pred[s][:, j] = p[s]
    out = {"pred": pred, "strength": strength, "val_score": val_score, "names": names, "task": task}
    if task == "classify":
        from kmtr_monai.evaluation import best_f1_thresholds

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out["thresholds"] = best_f1_thresholds(y["validation"], pred["validation"])
    out["metrics"] = {s: _split_metrics(task, y[s], pred[s], names, out.get("thresholds"), strength)
                      for s in ("validation", "test")}  # fmt: skip
    return out


def fit_linear_readout(train: np.ndarray, val: np.ndarray, y_train: np.ndarray, y_val: np.ndarray,
                       task: str) -> dict[str, Any]:  # fmt: skip
    """The protocol's linear model (:func:`linear_eval`) as weights on the features, for a network head that applies
    it (:class:`~kmtr_monai.networks.heads.LinearProbeHead`).

    Args: ``train`` (N, D) and ``val`` (M, D) features; ``y_train`` (N, K) and ``y_val`` (M, K) targets (native
    units, or 0/1 diseases; NaN = missing); ``task`` ``"regress"`` or ``"classify"``.

    Returns ``{"mean", "scale"}`` (D,) (scale 1 for a constant feature, whose weight is 0), ``"weight"`` (K, D) on
    the standardised features ``(x - mean) / scale``, ``"bias"`` (K,), ``"strength"`` and ``"val_score"`` (K,):
    ``standardised @ weight.T + bias`` is the phenotype in native units (regress) or the logit (classify), the same
    predictions :func:`linear_eval` makes on these features (each weight vector is ``V @ coef`` with ``Z = X V``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    x, xv = np.asarray(train, dtype=np.float64), np.asarray(val, dtype=np.float64)
    y = {"training": np.asarray(y_train, dtype=np.float64), "validation": np.asarray(y_val, dtype=np.float64)}
    if x.ndim != 2 or xv.ndim != 2 or xv.shape[1] != x.shape[1]:
        raise ValueError(f"features: expected (N, D) and (M, D), got {x.shape} and {xv.shape}")
    for split, rows in (("training", len(x)), ("validation", len(xv))):
        if y[split].ndim != 2 or len(y[split]) != rows or y[split].shape[1] != y["training"].shape[1]:
            raise ValueError(f"targets of {split}: expected ({rows}, K), got {y[split].shape}")
    z_tr, z_va, scale = reduce_features(x, xv)
    mean, sd = x.mean(0), x.std(0)
    constant = ~(sd > 1e-12 * np.maximum(np.abs(mean), 1.0))
    sd = np.where(constant, 1.0, sd)
    basis = np.where(constant[:, None], 0.0, ((x - mean) / sd).T @ z_tr) / np.square(z_tr).sum(0)  # V (D, r)
    fit = _ridge_column if task == "regress" else _logistic_column
    weight, bias, strength, val_score = [], [], [], []
    for j in range(y["training"].shape[1]):
        _, a, v, (coef, intercept) = fit({"training": z_tr, "validation": z_va}, {k: t[:, j] for k, t in y.items()},
                                         scale)  # fmt: skip
        weight.append(basis @ coef)
        bias.append(intercept)
        strength.append(a)
        val_score.append(v)
    return {"mean": mean, "scale": sd, "weight": np.stack(weight), "bias": np.asarray(bias),
            "strength": np.asarray(strength), "val_score": np.asarray(val_score)}  # fmt: skip


def _split_metrics(task: str, y: np.ndarray, pred: np.ndarray, names: Sequence[str], thresholds, strength) -> dict:
    """``metrics.csv`` rows of one split, named as a model's evaluator names them, plus the chosen strengths; a
    per-target row is left out where it is undefined (a disease with one class on the split)."""
    from kmtr_monai.evaluation import classification_metrics, regression_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if task == "regress":
            ok = np.isfinite(pred) | ~np.isfinite(y)
            if not ok.all():
                raise ValueError("a phenotype without a fit has finite targets")
            res = regression_metrics(y, pred, names)
            m = {"val_mean_mae": res["mean"]["mae"], "val_mean_r2": res["mean"]["r2"]}
            m.update({f"val_r2_{n}": res[n]["r2"] for n in names})
            m.update({f"alpha_{n}": strength[n] for n in names})
        else:
            res = classification_metrics(y, pred, thresholds, names)
            m = {"val_mean_auc": res["mean"]["auc"], "val_f1": res["mean"]["f1"],
                 "val_threshold": float(np.mean(thresholds))}  # fmt: skip
            m.update({f"val_auc_{n}": res[n]["auc"] for n in names})
            m.update({f"C_{n}": strength[n] for n in names})
    means = ("val_mean_mae", "val_mean_r2", "val_mean_auc", "val_f1", "val_threshold")
    return {k: v for k, v in m.items() if k in means or np.isfinite(v)}  # a target undefined on this split: no row


# ----------------------------------------------------------------------------------------------------- outputs
def write_metrics(folder: str | Path, metrics: Mapping[str, float]) -> Path:
    """``folder/metrics.csv``: ``name,value`` rows, no header (as MONAI's ``MetricsSaver`` writes them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for k, v in metrics.items():
            w.writerow([k, repr(float(v))])
    return path


def write_linear_results(folder: str | Path, task: str, eids: Sequence[str], pred: Any, names: Sequence[str],
                         true: Any, metrics: Mapping[str, float], thresholds: Any = None) -> Path:  # fmt: skip
    """A model's test folder: ``phenotypes.csv`` (regress: pred (N, K) native units, no interval columns) or
    ``diseases.csv`` (classify: pred (N, K) probabilities, labels at ``thresholds`` (K,)), ``targets.csv`` (eid +
    ``true`` (N, K)) and ``metrics.csv``, with :mod:`kmtr_monai.io.outputs`, as ``SavePredictions`` writes them."""
    from kmtr_monai.io.outputs import write_diseases_csv, write_phenotypes_csv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    eids = [str(e) for e in eids]
    if task == "regress":
        write_phenotypes_csv(str(folder / "phenotypes.csv"), eids, pred, names=names)
    elif task == "classify":
        if thresholds is None:
            raise ValueError("classify results need thresholds (best F1 on validation)")
        write_diseases_csv(str(folder / "diseases.csv"), eids, pred, thresholds, names=names)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    write_phenotypes_csv(str(folder / "targets.csv"), eids, true, names=names)
    write_metrics(folder, metrics)
    return folder


def finish_run(out: str | Path, key: str, result: Mapping[str, Any], eids: Sequence[str], true_test: np.ndarray,
               extra: Mapping[str, float] | None = None, minutes: float = 0.0) -> dict:  # fmt: skip
    """Write ``out/test/<R{key} or full>/`` and ``out/eval/metrics.csv`` from a :func:`linear_eval` result; returns
    the pipeline record ``{"tests": {key: "<out.name>/test/<folder>"}, "validation": {...}, "minutes"}`` (test
    folders relative to ``out``'s parent, the run folder when ``out`` is ``DIR/<stage>``)."""
    out = Path(out)
    folder = "full" if key == "full" else f"R{key}"
    extra = dict(extra or {})
    write_linear_results(out / "test" / folder, result["task"], eids, result["pred"]["test"], result["names"],
                         true_test, {**result["metrics"]["test"], **extra}, result.get("thresholds"))  # fmt: skip
    validation = dict(result["metrics"]["validation"])
    write_metrics(out / "eval", validation)
    return {"tests": {key: f"{out.name}/test/{folder}"}, "validation": validation, "minutes": float(minutes)}
