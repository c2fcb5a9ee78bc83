"""The report of the one-command pipeline (``kmtr pipeline``): tables, evidence and figures from a run folder.

``write_report(DIR)`` reads what a pipeline run left in ``DIR`` and writes, under ``DIR/report/``:
``results.json`` (every number shown, nested dict, NaN → null), ``report.md`` and the PNG figures it references;
it returns the results dict. ``summary_text(results)`` is the short plain-text summary for the terminal.

Input contract
--------------
``DIR/pipeline.json``::

    {"preset": "small", "cohort": "/abs/path/cohort", "accelerations": [2, 4, 8, 16],
     "acceleration": 4,            # default R of the vector tasks (regress, classify)
     "seg_acceleration": 8,        # R of the segmentation comparison
     "stages": [{"name": "regress-kmtr", "task": "regress", "method": "kmtr", "label": "k-MTR",
                 "minutes": 3.2, "tests": {"2": "regress-kmtr/test/R2", "4": "regress-kmtr/test/R4"}}, ...]}

``cohort`` holds ``datalist.json`` (``training`` / ``validation`` / ``test`` lists of items with ``eid``,
``phenotypes`` and ``diseases``) and ``phenotypes.csv`` (ukbb_cardiac columns). ``task`` is one of ``regress``,
``classify``, ``segment``, ``recon``, ``pretrain``. ``tests`` maps R (a string) to a test folder relative to
``DIR``; an image-domain method on fully-sampled images has one entry, under the key ``"full"``. Each test folder
holds ``metrics.csv`` (``name,value`` rows) and

- regress: ``phenotypes.csv`` (eid, predictions, ``"<name> lower"`` / ``"<name> upper"`` interval bounds) and
  ``targets.csv`` (eid, true values), as :class:`kmtr_monai.engines.predictions.SavePredictions` writes them;
  metrics ``val_mean_mae``, ``val_mean_r2``, ``val_interval_coverage``;
- classify: ``diseases.csv`` (eid, ``<disease>_probability``, ``<disease>`` 0/1 at the stored threshold) and
  ``targets.csv``;
- segment: metrics ``val_mean_dice`` and ``val_dice_<class>`` per foreground class;
- recon: metrics ``val_psnr``, ``val_ssim``, ``val_zero_filled_psnr``, ``val_view_sharing_psnr``,
  ``val_view_sharing_ssim`` (``val_zero_filled_ssim`` optional);
- segment and recon, optional: ``<metric>_raw.csv`` per-subject rows (``filename`` = eid, one column per class,
  ``mean``), as MONAI's ``MetricsSaver`` writes metric details (``bundles/common/evaluate.json``).

A ``pretrain`` stage (image-mae, kspace-mae, align) has only validation metrics in ``DIR/<name>/eval/metrics.csv``.
Optional: ``DIR/report/data/embeddings.npz`` (``z`` (N, D) k-MTR embeddings of test subjects, ``eid`` (N,)) and
``DIR/report/data/examples.npz`` (``image``, ``zero_filled``, ``recon_kmtr``, ``recon_kgin`` (optional),
``seg_true``, ``seg_kmtr``, ``seg_dynunet_zf`` (optional), each (E, H, W), and ``titles`` (E,)).

Any stage or file may be missing (a partial run): what exists is rendered and what is missing is listed.

Intervals are 95 % percentile bootstrap intervals over test subjects (2,000 draws, seed 0); comparisons between
methods are paired (the same resampled subjects for both, aligned by eid). Segmentation and reconstruction
comparisons use the per-subject rows (Dice: the subject's mean over its foreground classes); a folder without them
(a run from before they were written) gives a point estimate of the means. The F1 / recall / precision of a
classifier are those of its stored 0/1 labels (made at the thresholds the model stored on validation).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np

from kmtr_monai.constants import DISEASES, NUM_CLASSES, PHENOTYPES
from kmtr_monai.data.datalist import read_datalist
from kmtr_monai.data.targets import read_phenotype_table, target_array
from kmtr_monai.evaluation import (
    FOREGROUND,
    classification_metrics,
    interval_coverage,
    mean_predictor_mae,
    prevalence_predictor_metrics,
    regression_metrics,
)
from kmtr_monai.pipeline import all_stages

__all__ = ["write_report", "summary_text", "METHOD_ORDER", "bootstrap_weights", "weighted_auc", "weighted_mae"]

_STAGES = all_stages()  # the pipeline's stage table: the paper's method order and labels
METHOD_ORDER = {task: tuple(s.method for s in _STAGES if s.task == task)
                for task in dict.fromkeys(s.task for s in _STAGES)}
DEFAULT_LABELS = {s.method: s.label for s in _STAGES}
MEAN_LABEL, CHANCE_LABEL = "Training-mean predictor", "Chance / prevalence"
DRAWS, SEED = 2000, 0
SMOKE_PRESETS = ("tiny",)
SMOKE_NOTE = ("Note: the tiny preset checks that every stage runs end to end (a few dozen subjects, one or two "
              "epochs per model); its numbers are not evidence, and models at or below the mean predictor or "
              "chance are expected here. Use --preset small for evidence.")
BA_PHENOTYPES = ("LVEDV (mL)", "LVEF (%)", "LVM (g)")
TSNE_PHENOTYPES = ("LVEDV (mL)", "LVM (g)", "RVEDV (mL)")
IMAGE_BOUND, ZF_BASELINE, KMTR = "resnet50-image", "resnet50-zf", "kmtr"


# ------------------------------------------------------------------------------------------------------ reading
def load_run(run_dir) -> dict:
    """``pipeline.json`` of ``run_dir`` with ``dir`` (Path) and ``datalist`` (path string) added."""
    run_dir = Path(run_dir).resolve()
    cfg = json.loads((run_dir / "pipeline.json").read_text())
    cfg["dir"] = run_dir
    cfg["datalist"] = str(Path(cfg["cohort"]) / "datalist.json")
    return cfg


def stages_of(cfg: dict, task: str) -> list[dict]:
    """The stages of one task in the paper's method order (unknown methods last, in file order)."""
    order = METHOD_ORDER.get(task, ())
    found = [s for s in cfg.get("stages", []) if s.get("task") == task]
    return sorted(found, key=lambda s: order.index(s.get("method")) if s.get("method") in order else len(order))


def label_of(stage: dict) -> str:
    return stage.get("label") or DEFAULT_LABELS.get(stage.get("method"), stage.get("method") or stage["name"])


def method_key(stage: dict) -> str:
    return stage.get("method") or stage["name"]


def test_key(stage: dict, r) -> str | None:
    """The ``tests`` key to read at acceleration ``r``: ``str(r)``, else ``"full"`` (image methods), else None."""
    tests = stage.get("tests") or {}
    return str(r) if str(r) in tests else ("full" if "full" in tests else None)


def test_folder(cfg: dict, stage: dict, key: str | None) -> Path | None:
    """The test folder of ``stage`` under ``key`` when it exists, else None."""
    rel = (stage.get("tests") or {}).get(key) if key is not None else None
    folder = cfg["dir"] / rel if rel else None
    return folder if folder is not None and folder.is_dir() else None


def read_metrics(folder: Path | None) -> dict[str, float]:
    """``metrics.csv`` (``name,value`` rows) of a folder; {} when absent."""
    path = folder / "metrics.csv" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2 and _is_number(row[1])}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(eids, {column: float array}) of a prediction CSV; an empty cell is NaN."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0].keys() if rows else []) if c != "eid"]
    data = {c: np.array([float(r[c]) if r[c] not in ("", None) else np.nan for r in rows]) for c in cols}
    return [str(r["eid"]) for r in rows], data


def _stack(table: dict[str, np.ndarray], names) -> np.ndarray:
    return np.stack([table[n] for n in names], axis=1)


def _reindex(eids: list[str], ref_eids: list[str], arr: np.ndarray) -> np.ndarray:
    """Rows of ``arr`` (ordered as ``ref_eids``) reordered to ``eids``."""
    where = {e: i for i, e in enumerate(ref_eids)}
    return arr[[where[e] for e in eids]]


def read_predictions(folder: Path | None, file: str) -> tuple | None:
    """(eids, prediction columns, target names, targets aligned to eids) of ``folder/file`` and
    ``folder/targets.csv``; None when either is missing."""
    if folder is None or not (folder / file).is_file() or not (folder / "targets.csv").is_file():
        return None
    eids, table = read_table(folder / file)
    t_eids, true = read_table(folder / "targets.csv")
    names = list(true)
    return eids, table, names, _reindex(eids, t_eids, _stack(true, names))


def load_regress(folder: Path | None) -> dict | None:
    """Predictions, bounds and targets of a regress test folder, aligned by eid; None when files are missing."""
    found = read_predictions(folder, "phenotypes.csv")
    if found is None:
        return None
    eids, pred, names, true = found
    out = {"eid": eids, "names": names, "pred": _stack(pred, names), "true": true}
    if all(f"{n} lower" in pred and f"{n} upper" in pred for n in names):
        out["lower"] = _stack(pred, [f"{n} lower" for n in names])
        out["upper"] = _stack(pred, [f"{n} upper" for n in names])
    return out


def load_classify(folder: Path | None) -> dict | None:
    """Probabilities, stored labels and targets of a classify test folder; None when files are missing."""
    found = read_predictions(folder, "diseases.csv")
    if found is None:
        return None
    eids, table, names, true = found
    prob, labels = _stack(table, [f"{n}_probability" for n in names]), _stack(table, names)
    return {"eid": eids, "names": names, "prob": prob, "labels": labels, "true": true}


def training_targets(cfg: dict, key: str, names: list[str]) -> np.ndarray:
    """(N, K) training-split targets of the ``names`` columns (datalist, else the cohort's phenotypes.csv)."""
    known = PHENOTYPES if key == "phenotypes" else DISEASES
    if all(n in known for n in names):
        return target_array(cfg["datalist"], "training", key)[:, [known.index(n) for n in names]]
    table = read_phenotype_table(str(Path(cfg["cohort"]) / "phenotypes.csv"), names)
    return np.stack([table[str(it["eid"])] for it in read_datalist(cfg["datalist"], "training")])


# ---------------------------------------------------------------------------------------------------- bootstrap
def bootstrap_weights(n: int, draws: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """(draws, n) resampling counts: how often each subject is drawn in each bootstrap sample (fixed seed)."""
    idx = np.random.default_rng(seed).integers(0, n, (draws, n))
    flat = (idx + np.arange(draws)[:, None] * n).ravel()
    return np.bincount(flat, minlength=draws * n).reshape(draws, n).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def weighted_mae(err: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) mean over columns of the weighted per-column mean of ``err`` (N, K) absolute errors (NaN skipped)."""
    ok = np.isfinite(err)
    per = _ratio(w @ np.where(ok, err, 0.0), w @ ok.astype(np.float64))
    return _nanmean_rows(per)


def weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) ROC AUC of scores ``s`` (N,) for 0/1 labels ``y`` (N,, NaN dropped) under row weights ``w`` (B, N).

    The Mann–Whitney form (ties count one half) with weights = bootstrap counts equals sklearn's ``roc_auc_score``
    on the resampled subjects; NaN where a sample lacks either class.
    """
    ok = np.isfinite(y)
    y, s, w = y[ok], s[ok], w[:, ok]
    order = np.argsort(s, kind="stable")
    y, s, w = y[order], s[order], w[:, order]
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w * (y == 0), axis=1)], axis=1)
    first, last = np.searchsorted(s, s, "left"), np.searchsorted(s, s, "right")
    below, tied = cum[:, first], cum[:, last] - cum[:, first]
    wp = w * (y == 1)
    num = (wp * (below + 0.5 * tied)).sum(axis=1)
    return _ratio(num, wp.sum(axis=1) * cum[:, -1])


def weighted_mean_auc(true: np.ndarray, prob: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) mean over diseases (columns) of :func:`weighted_auc`."""
    return _nanmean_rows(np.stack([weighted_auc(true[:, k], prob[:, k], w) for k in range(true.shape[1])], axis=1))


def interval(values: np.ndarray) -> list[float]:
    """95 % percentile interval of bootstrap values (NaN draws skipped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(x) for x in np.percentile(v, [2.5, 97.5])] if v.size else [math.nan, math.nan]


def bootstrap(stat, n: int) -> dict:
    """``{"estimate", "ci": [lo, hi], "n"}`` of ``stat(w)`` ((B, n) weights → (B,)) over subjects."""
    return {"estimate": float(stat(np.ones((1, n)))[0]), "ci": interval(stat(bootstrap_weights(n))), "n": int(n)}


def align(*datasets: dict) -> list[dict]:
    """The datasets restricted to their common eids, in the first one's order (for paired comparisons)."""
    common = set.intersection(*(set(d["eid"]) for d in datasets))
    eids = [e for e in datasets[0]["eid"] if e in common]
    out = []
    for d in datasets:
        where = {e: i for i, e in enumerate(d["eid"])}
        idx = [where[e] for e in eids]
        out.append({k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 else v) for k, v in d.items()}
                   | {"eid": eids})  # fmt: skip
    return out


def verdict(ci, lower_is_better: bool) -> str:
    """Answer from a 95 % interval of a difference (model − reference)."""
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not available"
    if (hi < 0 and lower_is_better) or (lo > 0 and not lower_is_better):
        return "yes"
    if (lo > 0 and lower_is_better) or (hi < 0 and not lower_is_better):
        return "no"
    return "not distinguishable: interval includes 0"


# --------------------------------------------------------------------------------------------------- regression
def _abs_err(d: dict) -> np.ndarray:
    return np.abs(d["pred"] - d["true"])


def coverage_of(d: dict, metrics: dict) -> dict:
    """Conformal interval coverage per phenotype (from the CSV bounds) and its mean; metrics.csv value kept too."""
    out = {"metrics_csv": metrics.get("val_interval_coverage", math.nan)}
    if "lower" in d:
        cov = interval_coverage(d["true"], d["lower"], d["upper"])
        out |= {"per_phenotype": dict(zip(d["names"], cov.tolist())), "mean": float(np.nanmean(cov))}
    else:
        out["mean"] = out["metrics_csv"]
    return out


def regress_method(d: dict, metrics: dict) -> dict:
    """Per-phenotype MAE / R², means, bootstrap interval of the mean MAE and coverage of one method."""
    reg = regression_metrics(d["true"], d["pred"], d["names"])
    boot = bootstrap(lambda w: weighted_mae(_abs_err(d), w), len(d["eid"]))
    return {"mae": {n: reg[n]["mae"] for n in d["names"]}, "r2": {n: reg[n]["r2"] for n in d["names"]},
            "mean_mae": reg["mean"]["mae"], "mean_r2": reg["mean"]["r2"], "mean_mae_ci": boot["ci"],
            "n": boot["n"], "coverage": coverage_of(d, metrics), "metrics_csv": metrics}  # fmt: skip


def mean_predictor(cfg: dict, names: list[str]) -> dict:
    """The training-mean predictor on the datalist's test subjects: per-phenotype MAE, mean and its interval."""
    train = training_targets(cfg, "phenotypes", names)
    test = _test_targets(cfg, "phenotypes", names)
    mae = mean_predictor_mae(train, test)
    boot = bootstrap(lambda w: weighted_mae(np.abs(test - np.nanmean(train, axis=0)), w), test.shape[0])
    return {"mae": dict(zip(names, mae.tolist())), "mean_mae": float(np.nanmean(mae)), "mean_mae_ci": boot["ci"],
            "train_mean": dict(zip(names, np.nanmean(train, axis=0).tolist())), "n": boot["n"]}  # fmt: skip


def _test_targets(cfg: dict, key: str, names: list[str]) -> np.ndarray:
    known = PHENOTYPES if key == "phenotypes" else DISEASES
    if all(n in known for n in names):
        return target_array(cfg["datalist"], "test", key)[:, [known.index(n) for n in names]]
    table = read_phenotype_table(str(Path(cfg["cohort"]) / "phenotypes.csv"), names)
    return np.stack([table[str(it["eid"])] for it in read_datalist(cfg["datalist"], "test")])


def mae_vs_r(cfg: dict) -> dict:
    """``{method: {R: mean MAE}}`` over every test folder of every regress stage (CSV, else metrics.csv)."""
    out = {}
    for stage in stages_of(cfg, "regress"):
        curve = {}
        for key in stage.get("tests") or {}:
            folder = test_folder(cfg, stage, key)
            d = load_regress(folder)
            value = regression_metrics(d["true"], d["pred"], d["names"])["mean"]["mae"] if d else \
                read_metrics(folder).get("val_mean_mae")  # fmt: skip
            if value is not None:
                curve[key] = value
        out[method_key(stage)] = curve
    return out


def _task_methods(cfg: dict, ctx: dict, missing: list[str], task: str, load, summarise) -> dict:
    """``{method: {label, test, **summarise(predictions, metrics)}}`` of one vector task at the default R; the
    loaded predictions go to ``ctx[task]`` and a method without them to ``missing``."""
    r, methods = cfg["acceleration"], {}
    for stage in stages_of(cfg, task):
        key = test_key(stage, r)
        folder = test_folder(cfg, stage, key)
        d = load(folder)
        if d is None:
            missing.append(f"{task} {stage['name']}: no predictions at R={r}")
            continue
        ctx[task][method_key(stage)] = d
        methods[method_key(stage)] = {"label": label_of(stage), "test": key, **summarise(d, read_metrics(folder))}
    return methods


def regress_section(cfg: dict, ctx: dict, missing: list[str]) -> dict:
    """Table 1 numbers at the default R; fills ``ctx["regress"]`` with the loaded predictions."""
    r, methods = cfg["acceleration"], _task_methods(cfg, ctx, missing, "regress", load_regress, regress_method)
    names = next(iter(ctx["regress"].values()))["names"] if ctx["regress"] else list(PHENOTYPES)
    ctx["mean_predictor"] = mean_predictor(cfg, names)
    return {"R": r, "phenotypes": names, "methods": methods, "mean_predictor": ctx["mean_predictor"],
            "mae_vs_R": mae_vs_r(cfg)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- classification
def classify_method(d: dict, metrics: dict) -> dict:
    """AUC, AP, F1, recall, precision per disease and mean, with the bootstrap interval of the mean AUC."""
    half = np.full(len(d["names"]), 0.5)
    res = classification_metrics(d["true"], d["prob"], half, d["names"])  # AUC and AP: threshold-free
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = classification_metrics(d["true"], d["labels"].astype(float), half, d["names"])
    for name in [*d["names"], "mean"]:  # F1, recall, precision of the stored 0/1 labels
        res[name].update({k: stored[name][k] for k in ("f1", "recall", "precision")})
    boot = bootstrap(lambda w: weighted_mean_auc(d["true"], d["prob"], w), len(d["eid"]))
    return {"per_disease": {n: res[n] for n in d["names"]}, "mean": res["mean"], "mean_auc_ci": boot["ci"],
            "n": boot["n"], "metrics_csv": metrics}  # fmt: skip


def classify_section(cfg: dict, ctx: dict, missing: list[str]) -> dict:
    """Table 2 numbers at the default R with the prevalence (chance) reference; fills ``ctx["classify"]``."""
    r, methods = cfg["acceleration"], _task_methods(cfg, ctx, missing, "classify", load_classify, classify_method)
    names = next(iter(ctx["classify"].values()))["names"] if ctx["classify"] else list(DISEASES)
    ref = prevalence_predictor_metrics(training_targets(cfg, "diseases", names), _test_targets(cfg, "diseases", names),
                                       names)  # fmt: skip
    return {"R": r, "diseases": names, "methods": methods, "reference": ref}


# ------------------------------------------------------------------------------------ segmentation, recon, pretrain
def read_subject_rows(folder: Path | None, metric: str) -> dict | None:
    """``{"eid": [N], "value": (N,)}`` of ``folder/<metric>_raw.csv`` (per-subject metric details: eid, class
    columns, their ``mean``, which is the value); None when absent."""
    path = folder / f"{metric}_raw.csv" if folder is not None else None
    if path is None or not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"eid": [r["filename"] for r in rows], "value": np.array([float(r["mean"]) for r in rows])}


def segment_section(cfg: dict, ctx: dict, missing: list[str]) -> dict:
    """Dice per foreground class for every test folder of every segment stage; per-subject mean Dice at the
    segmentation R into ``ctx["segment"]``."""
    methods, seg_r = {}, str(cfg.get("seg_acceleration"))
    for stage in stages_of(cfg, "segment"):
        per_r = {}
        for key in stage.get("tests") or {}:
            folder = test_folder(cfg, stage, key)
            m = read_metrics(folder)
            if "val_mean_dice" not in m:
                missing.append(f"segment {stage['name']}: no metrics at {key}")
                continue
            per_r[key] = {"mean_dice": m["val_mean_dice"],
                          "dice": {c: m.get(f"val_dice_{c}", math.nan) for c in FOREGROUND}}  # fmt: skip
            if key == seg_r and (rows := read_subject_rows(folder, "val_mean_dice")) is not None:
                ctx["segment"][method_key(stage)] = rows
        methods[method_key(stage)] = {"label": label_of(stage), "tests": per_r}
    return {"R": cfg.get("seg_acceleration"), "classes": list(FOREGROUND), "methods": methods}


RECON_REFERENCES = {"zero-filled": ("val_zero_filled_psnr", "val_zero_filled_ssim"),
                    "view-sharing": ("val_view_sharing_psnr", "val_view_sharing_ssim")}  # fmt: skip
RECON_LABELS = {"zero-filled": "Zero-filled (reference)", "view-sharing": "View sharing (reference)"}


def recon_section(cfg: dict, ctx: dict, missing: list[str]) -> dict:
    """PSNR / SSIM per recon method and R, with the zero-filled and view-sharing references of the k-MTR folders;
    per-subject PSNRs at the default R (methods and references) into ``ctx["recon"]``."""
    methods, refs = {}, {name: {"label": RECON_LABELS[name], "tests": {}} for name in RECON_REFERENCES}
    r = str(cfg["acceleration"])
    for stage in stages_of(cfg, "recon"):
        per_r = {}
        for key in stage.get("tests") or {}:
            folder = test_folder(cfg, stage, key)
            m = read_metrics(folder)
            if "val_psnr" not in m:
                missing.append(f"recon {stage['name']}: no metrics at {key}")
                continue
            per_r[key] = {"psnr": m["val_psnr"], "ssim": m.get("val_ssim", math.nan)}
            for name, (p, s) in RECON_REFERENCES.items():
                if method_key(stage) == KMTR and p in m:
                    refs[name]["tests"][key] = {"psnr": m[p], "ssim": m.get(s, math.nan)}
            if key != r:
                continue
            for name, metric in ((method_key(stage), "val_psnr"), ("view-sharing", "val_view_sharing_psnr")):
                if (rows := read_subject_rows(folder, metric)) is not None and name not in ctx["recon"]:
                    ctx["recon"][name] = rows
        methods[method_key(stage)] = {"label": label_of(stage), "tests": per_r}
    return {"R": cfg["acceleration"], "methods": methods, "references": refs}


def pretrain_section(cfg: dict, missing: list[str]) -> dict:
    """Validation metrics of the pretraining stages (``DIR/<name>/eval/metrics.csv``)."""
    out = {}
    for stage in stages_of(cfg, "pretrain"):
        m = read_metrics(cfg["dir"] / stage["name"] / "eval")
        if not m:
            missing.append(f"pretrain {stage['name']}: no eval/metrics.csv")
        out[stage["name"]] = {"label": label_of(stage), "minutes": stage.get("minutes"), "metrics": m}
    return out


def missing_methods(cfg: dict) -> list[str]:
    """Known methods of each task with no stage in pipeline.json."""
    present = {(s.get("task"), s.get("method")) for s in cfg.get("stages", [])}
    return [f"{task} {m}: not in this run" for task in ("regress", "classify", "segment", "recon")
            for m in METHOD_ORDER[task] if (task, m) not in present]  # fmt: skip


# ----------------------------------------------------------------------------------------------------- evidence
def _item(question: str, comparison: str, stat: dict, lower_is_better: bool, unit: str = "") -> dict:
    ans = verdict(stat["ci"], lower_is_better)
    lo, hi = stat["ci"]
    text = f"{comparison}: {stat['estimate']:+.3g}{unit} [{lo:+.3g}, {hi:+.3g}] (n={stat['n']}) → {ans}"
    return {"question": question, "comparison": comparison, **stat, "answer": ans, "text": text}


def _not_available(question: str, comparison: str, absent) -> dict:
    """An evidence entry whose inputs are missing from the run."""
    ans = f"not available: no {', '.join(absent)} results"
    return {"question": question, "comparison": comparison, "estimate": math.nan, "ci": [math.nan, math.nan],
            "answer": ans, "text": f"{comparison}: {ans}"}  # fmt: skip


def _absent(data: dict, methods) -> list[str]:
    return [m for m in methods if m not in data]


def mae_diff(a: dict, b: dict) -> dict:
    """Paired bootstrap of mean MAE(a) − mean MAE(b) on common subjects."""
    a, b = align(a, b)
    return bootstrap(lambda w: weighted_mae(_abs_err(a), w) - weighted_mae(_abs_err(b), w), len(a["eid"]))


def auc_diff(a: dict, b: dict) -> dict:
    """Paired bootstrap of mean AUC(a) − mean AUC(b) on common subjects."""
    a, b = align(a, b)
    return bootstrap(lambda w: weighted_mean_auc(a["true"], a["prob"], w) - weighted_mean_auc(b["true"], b["prob"], w),
                     len(a["eid"]))  # fmt: skip


def evidence_references(ctx: dict, labels: dict) -> list[dict]:
    """(1) Every regress model against the training-mean predictor, every classifier against chance (AUC 0.5)."""
    q, out, mean = "beats the reference", [], ctx["mean_predictor"]["train_mean"]
    for m, d in ctx["regress"].items():
        ref = {**d, "pred": np.broadcast_to(np.array([mean[n] for n in d["names"]]), d["pred"].shape)}
        stat = bootstrap(lambda w: weighted_mae(_abs_err(d), w) - weighted_mae(_abs_err(ref), w), len(d["eid"]))
        out.append(_item(q, f"{labels['regress'][m]}: mean MAE − mean predictor", stat, True) | {"method": m})
    for m, d in ctx["classify"].items():
        stat = bootstrap(lambda w: weighted_mean_auc(d["true"], d["prob"], w) - 0.5, len(d["eid"]))
        out.append(_item(q, f"{labels['classify'][m]}: mean AUC − 0.5", stat, False) | {"method": m})
    return out


def evidence_kmtr(ctx: dict) -> list[dict]:
    """(2) k-MTR against the unaligned k-space MAE (stage1) and the scratch encoder (paired differences)."""
    out = []
    for other in ("stage1", "scratch"):
        q = f"k-MTR beats {DEFAULT_LABELS[other]}"
        for task, what, diff, lower in (("regress", "MAE", mae_diff, True), ("classify", "AUC", auc_diff, False)):
            comparison, absent = f"mean {what} k-MTR − {other}", _absent(ctx[task], (KMTR, other))
            out.append(_not_available(q, comparison, [f"{task} {m}" for m in absent]) if absent else
                       _item(q, comparison, diff(ctx[task][KMTR], ctx[task][other]), lower))  # fmt: skip
    return out


def _gap(task: str, d: dict, bound: dict, w: np.ndarray) -> np.ndarray:
    """(B,) signed gap to the image upper bound: how much worse ``d`` is (MAE above / AUC below the bound)."""
    if task == "regress":
        return weighted_mae(_abs_err(d), w) - weighted_mae(_abs_err(bound), w)
    return weighted_mean_auc(bound["true"], bound["prob"], w) - weighted_mean_auc(d["true"], d["prob"], w)


def evidence_upper_bound(ctx: dict) -> list[dict]:
    """(3) Is k-MTR closer to the fully-sampled image bound than the zero-filled baseline?

    Paired bootstrap of gap(k-MTR) − gap(zero-filled), gaps signed as in :func:`_gap` (negative = yes); a model
    above the bound has a negative gap, which counts as closing it."""
    out, q = [], "k-MTR closer to the image upper bound than zero-filled"
    for task, what in (("regress", "mean MAE"), ("classify", "mean AUC")):
        data, comparison = ctx[task], f"{what} gap to image bound: k-MTR − zero-filled"
        absent = _absent(data, (KMTR, ZF_BASELINE, IMAGE_BOUND))
        if absent:
            out.append(_not_available(q, comparison, [f"{task} {m}" for m in absent]))
        else:
            k, z, i = align(data[KMTR], data[ZF_BASELINE], data[IMAGE_BOUND])
            stat = bootstrap(lambda w: _gap(task, k, i, w) - _gap(task, z, i, w), len(k["eid"]))
            one = np.ones((1, len(k["eid"])))
            gaps = {"gap_kmtr": float(_gap(task, k, i, one)[0]), "gap_zero_filled": float(_gap(task, z, i, one)[0])}
            item = _item(q, comparison, stat, True)
            item["text"] += f" (gaps: k-MTR {gaps['gap_kmtr']:+.3g}, zero-filled {gaps['gap_zero_filled']:+.3g})"
            out.append(item | gaps)
    return out


def _point_item(question: str, comparison: str, diff: float) -> dict:
    ans = "not available" if not np.isfinite(diff) else ("yes" if diff > 0 else "no")
    ans += " (point estimate: the test folders hold means only, no interval)" if np.isfinite(diff) else ""
    return {"question": question, "comparison": comparison, "estimate": diff, "ci": [math.nan, math.nan],
            "answer": ans, "text": f"{comparison}: {diff:+.3g} → {ans}"}  # fmt: skip


def _dense_item(question: str, comparison: str, rows: tuple, means: tuple) -> dict:
    """Paired bootstrap of the per-subject difference (higher is better) when both ``rows`` are loaded, else the
    point estimate of the two ``means``."""
    if any(r is None for r in rows):
        return _point_item(question, comparison, means[0] - means[1])
    a, b = align(*rows)
    diff = a["value"] - b["value"]
    ok = np.isfinite(diff)
    stat = bootstrap(lambda w: _ratio(w[:, ok] @ diff[ok], w[:, ok].sum(axis=1)), int(ok.sum()))
    return _item(question, comparison, stat, lower_is_better=False)


def evidence_dense(results: dict, ctx: dict) -> list[dict]:
    """(4) Dice k-MTR − DynUNet (zero-filled) at seg_acceleration; (5) PSNR k-MTR − view sharing (default R)."""
    out, seg, rec = [], results["segment"], results["recon"]
    r = str(seg["R"])
    k, z = (seg["methods"].get(m, {}).get("tests", {}).get(r) for m in (KMTR, "dynunet-zf"))
    q = "k-MTR segments better than DynUNet on zero-filled images"
    comparison = f"mean Dice k-MTR − DynUNet (zero-filled) at R={r}"
    absent = [f"segment {m} at R={r}" for m, x in ((KMTR, k), ("dynunet-zf", z)) if not x]
    out.append(_not_available(q, comparison, absent) if absent else
               _dense_item(q, comparison, (ctx["segment"].get(KMTR), ctx["segment"].get("dynunet-zf")),
                           (k["mean_dice"], z["mean_dice"])))  # fmt: skip
    r = str(rec["R"])
    k, v = rec["methods"].get(KMTR, {}).get("tests", {}).get(r), rec["references"]["view-sharing"]["tests"].get(r)
    q, comparison = "k-MTR reconstructs better than view sharing", f"PSNR k-MTR − view sharing at R={r} (dB)"
    absent = [f"recon {m} at R={r}" for m, x in ((KMTR, k), ("view-sharing", v)) if not x]
    out.append(_not_available(q, comparison, absent) if absent else
               _dense_item(q, comparison, (ctx["recon"].get(KMTR), ctx["recon"].get("view-sharing")),
                           (k["psnr"], v["psnr"])))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def fig_mae_vs_r(results: dict, path: Path) -> str | None:
    """Mean phenotype MAE against R per k-space method, image bound and mean predictor as horizontal lines."""
    reg = results["regress"]
    curves = {m: {int(k): v for k, v in c.items() if k.isdigit()} for m, c in reg["mae_vs_R"].items()}
    curves = {m: c for m, c in curves.items() if c}
    if not curves:
        return "no k-space regression results"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, c in curves.items():
        rs = sorted(c)
        ax.plot(rs, [c[r] for r in rs], "o-", label=results["labels"]["regress"].get(m, m))
    image = reg["mae_vs_R"].get(IMAGE_BOUND, {}).get("full")
    if image is not None:
        ax.axhline(image, color="k", ls="--", label=f"{results['labels']['regress'].get(IMAGE_BOUND)} (bound)")
    ax.axhline(reg["mean_predictor"]["mean_mae"], color="grey", ls=":", label=MEAN_LABEL)
    ax.set(xscale="log", xlabel="acceleration R", ylabel="mean phenotype MAE", title="Phenotype MAE against R")
    ax.set_xticks(results["run"]["accelerations"], [str(r) for r in results["run"]["accelerations"]])
    ax.minorticks_off()
    ax.legend(fontsize=6)
    _save(fig, path)
    return None


def tsne_perplexity(n: int) -> float:
    """t-SNE perplexity adapted to N subjects: (N − 1) / 3, clipped to [1, 30] (sklearn needs it below N)."""
    return float(min(30.0, max(1.0, (n - 1) / 3)))


def tsne_3d(z: np.ndarray, seed: int = SEED) -> np.ndarray:
    """3-D t-SNE of (N, D) embeddings with :func:`tsne_perplexity`."""
    from sklearn.manifold import TSNE

    init = "pca" if z.shape[1] >= 3 else "random"
    return TSNE(n_components=3, perplexity=tsne_perplexity(len(z)), init=init, random_state=seed).fit_transform(z)


def fig_tsne(cfg: dict, results: dict, path: Path) -> str | None:
    """3-D t-SNE of the k-MTR test embeddings coloured by LVEDV, LVM and RVEDV (three subplots)."""
    src = cfg["dir"] / "report" / "data" / "embeddings.npz"
    if not src.is_file():
        return f"{src.relative_to(cfg['dir'])} not found"
    data = np.load(src, allow_pickle=False)
    z, eids = np.asarray(data["z"], dtype=np.float64), [str(e) for e in data["eid"]]
    if len(z) < 5:
        return f"only {len(z)} embeddings"
    table_path = Path(cfg["cohort"]) / "phenotypes.csv"
    with open(table_path, newline="") as f:
        header = next(csv.reader(f), [])
    if not set(TSNE_PHENOTYPES) <= set(header):
        return f"{table_path} lacks columns {sorted(set(TSNE_PHENOTYPES) - set(header))}"
    table = read_phenotype_table(str(table_path), TSNE_PHENOTYPES)
    colour = np.stack([table.get(e, np.full(len(TSNE_PHENOTYPES), np.nan)) for e in eids])
    xyz = tsne_3d(z)
    results["tsne"] = {"n": len(z), "dim": int(z.shape[1]), "perplexity": tsne_perplexity(len(z))}
    plt = _plt()
    fig = plt.figure(figsize=(13, 4.5))
    for j, name in enumerate(TSNE_PHENOTYPES):
        ax = fig.add_subplot(1, 3, j + 1, projection="3d")
        sc = ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colour[:, j], cmap="viridis", s=8)
        fig.colorbar(sc, ax=ax, shrink=0.6, label=name)
        ax.set_title(f"k-MTR embeddings: {name}", fontsize=9)
    _save(fig, path)
    return None


def bland_altman(pred: np.ndarray, true: np.ndarray) -> dict:
    """Bias (mean of pred − true) and 95 % limits of agreement (bias ± 1.96 SD) over finite pairs."""
    ok = np.isfinite(pred) & np.isfinite(true)
    diff = pred[ok] - true[ok]
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if ok.sum() > 1 else math.nan
    return {"bias": bias, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": int(ok.sum())}


def fig_bland_altman(ctx: dict, results: dict, path: Path) -> str | None:
    """Bland–Altman plots of k-MTR for LVEDV, LVEF and LVM at the default R."""
    d = ctx["regress"].get(KMTR)
    names = [n for n in BA_PHENOTYPES if d is not None and n in d["names"]]
    if not names:
        return "no k-MTR phenotype predictions with LVEDV / LVEF / LVM"
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    results["bland_altman"] = {}
    for ax, n in zip(axes[0], names):
        j = d["names"].index(n)
        p, t = d["pred"][:, j], d["true"][:, j]
        ba = results["bland_altman"][n] = bland_altman(p, t)
        ax.scatter((p + t) / 2, p - t, s=8)
        for y, ls in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
            ax.axhline(y, color="k", ls=ls, lw=0.8)
        ax.set(xlabel=f"mean of k-MTR and reference {n}", ylabel="k-MTR − reference",
               title=f"{n}: bias {ba['bias']:.2f}, LoA [{ba['loa_low']:.2f}, {ba['loa_high']:.2f}]")  # fmt: skip
        ax.title.set_fontsize(8)
    _save(fig, path)
    return None


def fig_roc(ctx: dict, results: dict, path: Path) -> str | None:
    """ROC curves per disease for every classify method at the default R."""
    from sklearn.metrics import roc_curve

    if not ctx["classify"]:
        return "no classification predictions"
    names = results["classify"]["diseases"]
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for j, (ax, n) in enumerate(zip(axes[0], names)):
        for m, d in ctx["classify"].items():
            ok = np.isfinite(d["true"][:, j])
            if np.unique(d["true"][ok, j]).size == 2:
                fpr, tpr, _ = roc_curve(d["true"][ok, j], d["prob"][ok, j])
                auc = results["classify"]["methods"][m]["per_disease"][n]["auc"]
                ax.plot(fpr, tpr, label=f"{results['labels']['classify'][m]} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], "k:", label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=n)
        ax.legend(fontsize=5)
    _save(fig, path)
    return None


def _examples(cfg: dict):
    src = cfg["dir"] / "report" / "data" / "examples.npz"
    return np.load(src, allow_pickle=False) if src.is_file() else None


def _show(ax, img, title: str, seg=None) -> None:
    ax.imshow(np.abs(img), cmap="gray")
    if seg is not None:
        ax.imshow(np.ma.masked_equal(seg, 0), cmap="tab10", vmin=0, vmax=NUM_CLASSES - 1, alpha=0.5,
                  interpolation="nearest")  # fmt: skip
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def fig_examples_recon(cfg: dict, path: Path) -> str | None:
    """Reconstructions of example subjects beside the ground truth and the zero-filled image."""
    ex = _examples(cfg)
    if ex is None or not {"image", "zero_filled", "recon_kmtr"} <= set(ex.files):
        return "report/data/examples.npz with image, zero_filled, recon_kmtr not found"
    cols = [("image", "ground truth"), ("zero_filled", "zero-filled"), ("recon_kmtr", "k-MTR"),
            ("recon_kgin", "k-GIN-style")]  # fmt: skip
    cols = [c for c in cols if c[0] in ex.files]
    return _example_grid(ex, [(ex[k], t, None) for k, t in cols], path)


def fig_examples_seg(cfg: dict, path: Path) -> str | None:
    """Segmentation overlays of example subjects beside the ground truth and the zero-filled image."""
    ex = _examples(cfg)
    if ex is None or not {"image", "zero_filled", "seg_true", "seg_kmtr"} <= set(ex.files):
        return "report/data/examples.npz with image, zero_filled, seg_true, seg_kmtr not found"
    cols = [(ex["zero_filled"], "zero-filled", None), (ex["image"], "ground truth", ex["seg_true"]),
            (ex["image"], "k-MTR", ex["seg_kmtr"])]  # fmt: skip
    if "seg_dynunet_zf" in ex.files:
        cols.append((ex["image"], "DynUNet (zero-filled)", ex["seg_dynunet_zf"]))
    return _example_grid(ex, cols, path)


def _example_grid(ex, cols: list, path: Path) -> str | None:
    n = cols[0][0].shape[0]
    titles = [str(t) for t in ex["titles"]] if "titles" in ex.files else [str(i) for i in range(n)]
    plt = _plt()
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (img, title, seg) in enumerate(cols):
            _show(axes[i, j], img[i], f"{titles[i]}: {title}", None if seg is None else seg[i])
    _save(fig, path)
    return None


def make_figures(cfg: dict, ctx: dict, results: dict, out: Path) -> dict:
    """Draw every figure; ``{name: {"file": png or None, "note": why skipped}}``."""
    jobs = {"mae_vs_R": lambda p: fig_mae_vs_r(results, p), "tsne": lambda p: fig_tsne(cfg, results, p),
            "bland_altman": lambda p: fig_bland_altman(ctx, results, p), "roc": lambda p: fig_roc(ctx, results, p),
            "examples_segmentation": lambda p: fig_examples_seg(cfg, p),
            "examples_reconstruction": lambda p: fig_examples_recon(cfg, p)}  # fmt: skip
    figures = {}
    for name, job in jobs.items():
        note = job(out / f"{name}.png")
        figures[name] = {"file": None if note else f"{name}.png", "note": note}
    return figures


# ----------------------------------------------------------------------------------------------------- markdown
def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _ci(ci, digits: int = 3) -> str:
    return f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def md_stages(results: dict) -> str:
    rows = [[s["name"], s["task"], s["label"], _f(s["minutes"]), ", ".join(s["tests"]) or "–"]
            for s in results["stages"]]  # fmt: skip
    return "## Stages\n\n" + md_table(["stage", "task", "method", "minutes", "tests"], rows)


def md_regress(results: dict) -> str:
    reg = results["regress"]
    ms, mp = reg["methods"], reg["mean_predictor"]
    if not ms:
        return "## Table 1: phenotype regression\n\nNo regression predictions in this run."
    header = ["phenotype", *(v["label"] for v in ms.values()), MEAN_LABEL]
    rows = [[n, *(_f(v["mae"].get(n)) for v in ms.values()), _f(mp["mae"].get(n))] for n in reg["phenotypes"]]
    rows.append(["**mean MAE**", *(_f(v["mean_mae"]) for v in ms.values()), _f(mp["mean_mae"])])
    rows.append(["95 % CI", *(_ci(v["mean_mae_ci"]) for v in ms.values()), _ci(mp["mean_mae_ci"])])
    rows.append(["mean R²", *(_f(v["mean_r2"]) for v in ms.values()), "≤ 0"])
    curves = reg["mae_vs_R"]
    rs = sorted({k for c in curves.values() for k in c}, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))
    by_r = md_table(["method", *(f"R={k}" if k.isdigit() else k for k in rs)],
                    [[results["labels"]["regress"].get(m, m), *(_f(c.get(k)) for k in rs)] for m, c in curves.items()])
    return (f"## Table 1: phenotype regression (MAE, native units, R={reg['R']}; image methods fully sampled)\n\n"
            f"{md_table(header, rows)}\n\nMean MAE per acceleration:\n\n{by_r}")  # fmt: skip


def md_classify(results: dict) -> str:
    cl = results["classify"]
    ms, ref = cl["methods"], cl["reference"]
    if not ms:
        return "## Table 2: disease classification\n\nNo classification predictions in this run."
    header = ["disease", "metric", *(v["label"] for v in ms.values()), CHANCE_LABEL]
    rows = [[n, s, *(_f(v["per_disease"][n][s]) for v in ms.values()), _f(ref[n][s])]
            for n in cl["diseases"] for s in ("auc", "f1", "recall", "precision", "ap")]  # fmt: skip
    rows += [["**mean**", s, *(_f(v["mean"][s]) for v in ms.values()), _f(ref["mean"][s])]
             for s in ("auc", "f1", "recall", "precision", "ap")]  # fmt: skip
    rows.append(["mean AUC", "95 % CI", *(_ci(v["mean_auc_ci"]) for v in ms.values()), "0.5"])
    return f"## Table 2: disease classification (R={cl['R']}; stored thresholds)\n\n{md_table(header, rows)}"


def md_segment(results: dict) -> str:
    seg = results["segment"]
    rows = [[v["label"], k, _f(t["mean_dice"]), *(_f(t["dice"][c]) for c in seg["classes"])]
            for v in seg["methods"].values() for k, t in v["tests"].items()]  # fmt: skip
    body = md_table(["method", "R", "mean Dice", *seg["classes"]], rows) if rows else "No segmentation results."
    return f"## Segmentation (Dice per foreground class)\n\n{body}"


def md_recon(results: dict) -> str:
    rec = results["recon"]
    entries = list(rec["methods"].values()) + list(rec["references"].values())
    rows = [[v["label"], k, _f(t["psnr"], 4), _f(t["ssim"])] for v in entries for k, t in v["tests"].items()]
    body = md_table(["method", "R", "PSNR (dB)", "SSIM"], rows) if rows else "No reconstruction results."
    return f"## Reconstruction\n\n{body}"


def md_coverage(results: dict) -> str:
    rows = [[v["label"], _f(v["coverage"]["mean"]), _f(v["coverage"]["metrics_csv"])]
            for v in results["regress"]["methods"].values()]  # fmt: skip
    body = md_table(["method", "coverage (CSV bounds)", "metrics.csv"], rows) if rows else "No regression results."
    return f"## Conformal interval coverage (test split)\n\n{body}"


def md_pretrain(results: dict) -> str:
    rows = [[name, _f(v["minutes"]), ", ".join(f"{k}={_f(x, 4)}" for k, x in v["metrics"].items()) or "missing"]
            for name, v in results["pretrain"].items()]  # fmt: skip
    return "## Pretraining (validation)\n\n" + (md_table(["stage", "minutes", "metrics"], rows) if rows else "None.")


def md_evidence(results: dict) -> str:
    parts = ["## Evidence (differences with 95 % paired bootstrap intervals over the same test subjects)"]
    for key, title in (("references", "(1) Does every model beat the mean predictor / chance?"),
                       ("kmtr_vs_unaligned", "(2) Does k-MTR beat the unaligned k-space MAE and the scratch encoder?"),
                       ("upper_bound", "(3) Is k-MTR closer to the fully-sampled image bound than zero-filled?"),
                       ("segmentation_recon", "(4, 5) Segmentation against DynUNet (zero-filled); recon against view "
                                              "sharing")):  # fmt: skip
        items = results["evidence"][key]
        parts.append(f"### {title}\n\n" + ("\n".join(f"- {i['text']}" for i in items) or "- not available: inputs "
                                                                                            "missing"))  # fmt: skip
    return "\n\n".join(parts)


def md_figures(results: dict) -> str:
    lines = ["## Figures"]
    for name, f in results["figures"].items():
        lines.append(f"### {name}\n\n![{name}]({f['file']})" if f["file"] else f"### {name}\n\nSkipped: {f['note']}.")
    return "\n\n".join(lines)


def render_markdown(results: dict) -> str:
    run = results["run"]
    head = (f"# k-MTR pipeline report\n\nRun `{run['dir']}`, preset `{run['preset']}`, {run['n_test']} test "
            f"subjects; default R={run['acceleration']}, segmentation R={run['seg_acceleration']}.")  # fmt: skip
    if run["preset"] in SMOKE_PRESETS:
        head += "\n\n" + SMOKE_NOTE
    missing = "## Missing\n\n" + ("\n".join(f"- {m}" for m in results["missing"]) or "Nothing.")
    parts = [head, missing, md_stages(results), md_regress(results), md_classify(results), md_segment(results),
             md_recon(results), md_coverage(results), md_evidence(results), md_pretrain(results), md_figures(results)]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------------ results
def to_json(obj):
    """Nested results → JSON-safe values (numpy → Python, NaN / inf → None)."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


def stage_summary(cfg: dict) -> list[dict]:
    """Name, task, label, minutes and the test folders present of every stage, with their metrics.csv."""
    out = []
    for s in cfg.get("stages", []):
        tests = {k: read_metrics(test_folder(cfg, s, k)) for k in s.get("tests") or {} if test_folder(cfg, s, k)}
        out.append({"name": s["name"], "task": s.get("task"), "method": s.get("method"), "label": label_of(s),
                    "minutes": s.get("minutes"), "tests": tests})  # fmt: skip
    return out


def collect(cfg: dict) -> tuple[dict, dict]:
    """All tables and evidence as a results dict, plus the loaded predictions (context for the figures)."""
    ctx, missing = {"regress": {}, "classify": {}, "segment": {}, "recon": {}}, missing_methods(cfg)
    results = {"run": {"dir": str(cfg["dir"]), "preset": cfg.get("preset"), "cohort": cfg["cohort"],
                       "accelerations": cfg.get("accelerations", []), "acceleration": cfg["acceleration"],
                       "seg_acceleration": cfg.get("seg_acceleration"),
                       "n_test": len(read_datalist(cfg["datalist"], "test")),
                       "bootstrap": {"draws": DRAWS, "seed": SEED, "level": 0.95}}}  # fmt: skip
    results["stages"] = stage_summary(cfg)
    results["labels"] = {t: {method_key(s): label_of(s) for s in stages_of(cfg, t)} for t in METHOD_ORDER}
    results["regress"] = regress_section(cfg, ctx, missing)
    results["classify"] = classify_section(cfg, ctx, missing)
    results["segment"] = segment_section(cfg, ctx, missing)
    results["recon"] = recon_section(cfg, ctx, missing)
    results["pretrain"] = pretrain_section(cfg, missing)
    results["evidence"] = {"references": evidence_references(ctx, results["labels"]),
                           "kmtr_vs_unaligned": evidence_kmtr(ctx), "upper_bound": evidence_upper_bound(ctx),
                           "segmentation_recon": evidence_dense(results, ctx)}  # fmt: skip
    results["missing"] = missing
    return results, ctx


def write_report(run_dir) -> dict:
    """Write ``results.json``, ``report.md`` and the figures under ``run_dir/report/``; return the results."""
    cfg = load_run(run_dir)
    out = cfg["dir"] / "report"
    out.mkdir(parents=True, exist_ok=True)
    results, ctx = collect(cfg)
    results["figures"] = make_figures(cfg, ctx, results, out)
    results["report"] = {"dir": str(out), "markdown": str(out / "report.md"), "json": str(out / "results.json")}
    results = to_json(results)
    (out / "report.md").write_text(render_markdown(results))
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return results


# ------------------------------------------------------------------------------------------------------ summary
def _headline(section: dict) -> str | None:
    ms = section["methods"]
    return KMTR if KMTR in ms else (list(ms)[-1] if ms else None)


def _summary_vector(results: dict) -> list[str]:
    lines, reg, cl = [], results["regress"], results["classify"]
    m = _headline(reg)
    if m:
        v, mp = reg["methods"][m], reg["mean_predictor"]
        lines.append(f"Phenotypes (R={reg['R']}): {v['label']} mean MAE {_f(v['mean_mae'])} {_ci(v['mean_mae_ci'])}, "
                     f"R² {_f(v['mean_r2'])}; mean predictor {_f(mp['mean_mae'])} {_ci(mp['mean_mae_ci'])}")
        lines.append(f"Interval coverage ({v['label']}): {_f(v['coverage']['mean'])}")
    m = _headline(cl)
    if m:
        v = cl["methods"][m]
        lines.append(f"Diseases (R={cl['R']}): {v['label']} mean AUC {_f(v['mean']['auc'])} {_ci(v['mean_auc_ci'])}, "
                     f"F1 {_f(v['mean']['f1'])}; chance AUC 0.5")
    return lines


def _summary_images(results: dict) -> list[str]:
    lines, seg, rec = [], results["segment"], results["recon"]
    parts = [f"{v['label']} {_f(v['tests'][str(seg['R'])]['mean_dice'])}" for v in seg["methods"].values()
             if str(seg["R"]) in v["tests"]]  # fmt: skip
    if parts:
        lines.append(f"Segmentation mean Dice (R={seg['R']}): " + "; ".join(parts))
    r = str(rec["R"])
    parts = [f"{v['label']} {_f(v['tests'][r]['psnr'], 4)} dB" for v in [*rec["methods"].values(),
             *rec["references"].values()] if r in v["tests"]]  # fmt: skip
    if parts:
        lines.append(f"Reconstruction PSNR (R={r}): " + "; ".join(parts))
    return lines


def _summary_evidence(results: dict) -> list[str]:
    ev = results["evidence"]
    refs = ev["references"]
    lines = [f"Evidence: {sum(i['answer'] == 'yes' for i in refs)}/{len(refs)} models beat the mean predictor / chance"]
    items = ev["kmtr_vs_unaligned"] + ev["upper_bound"] + ev["segmentation_recon"]
    shown = [i for i in items if not i["answer"].startswith("not available")]
    lines += [f"  {i['comparison']}: {i['answer'].split(' (')[0]}" for i in shown[:7]]
    if len(shown) < len(items):
        lines.append(f"  {len(items) - len(shown)} comparison(s) not available (inputs missing)")
    return lines


def summary_text(results: dict) -> str:
    """10–20 plain-text lines: the key figure per task with intervals, the evidence answers and the report path."""
    run = results["run"]
    lines = [f"k-MTR pipeline report: preset {run['preset']}, {run['n_test']} test subjects, "
             f"bootstrap 95 % intervals ({run['bootstrap']['draws']} draws)"]  # fmt: skip
    if run["preset"] in SMOKE_PRESETS:
        lines.append(SMOKE_NOTE)
    lines += _summary_vector(results) + _summary_images(results) + _summary_evidence(results)
    if results["missing"]:
        shown = "; ".join(results["missing"][:3]) + ("; ..." if len(results["missing"]) > 3 else "")
        lines.append(f"Missing ({len(results['missing'])}): {shown}")
    skipped = [n for n, f in results["figures"].items() if not f["file"]]
    lines.append(f"Figures: {sum(1 for f in results['figures'].values() if f['file'])} written"
                 + (f", skipped {', '.join(skipped)}" if skipped else ""))  # fmt: skip
    lines.append(f"Report: {results['report']['markdown']} (numbers: {results['report']['json']})")
    return "\n".join(lines[:20])
