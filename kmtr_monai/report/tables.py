"""The report's tables: Table 1 (phenotype regression), Table 2 (disease classification), their floors and
reference columns, the linear probes, Dice, PSNR / SSIM, coverage, pretraining and the stage list.

Each ``*_section(cfg, ctx, missing, notes)`` returns the JSON-ready numbers of one section, puts the predictions it
loaded into ``ctx`` (for the evidence and the figures), appends what it could not find to ``missing`` and the
expected warnings it met (a metric undefined on this test split) to ``notes``.
"""

from __future__ import annotations

import math

import numpy as np

from kmtr_monai.capture import expected_warnings
from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.evaluation import (
    FOREGROUND,
    classification_metrics,
    interval_coverage,
    mean_predictor_mae,
    prevalence_predictor_metrics,
    regression_metrics,
)
from kmtr_monai.report.run import (
    VECTOR_TASKS,
    is_done,
    kind_of,
    label_of,
    load_regress,
    load_test,
    method_key,
    output_path,
    read_metrics,
    read_subject_rows,
    split_targets,
    stages_of,
    test_folder,
    tests_of,
)
from kmtr_monai.report.stats import abs_err, auc_of, bootstrap, paired_diff, r2_of, weighted_mae

MEAN_LABEL, CHANCE_LABEL = "Training-mean predictor", "Chance / prevalence"
KMTR, IMAGE_BOUND, ZF_BASELINE = "kmtr", "cnn-image", "cnn-zf"
FLOORS = ("floor-image", "floor-zf", "floor-kspace")  # the linear models on each input, as their methods are named
FLOOR_OF_INPUT = {"image": "floor-image", "zero_filled": "floor-zf", "kspace": "floor-kspace"}
PROBE_PHENOTYPES = ("LVEDV (mL)", "LVM (g)", "RVEDV (mL)", "LVEF (%)")
PROBE_REFERENCES = (("stage1", "unaligned (stage1)"), ("scratch", "scratch"), ("floor-kspace", "k-space floor"))
SINGLE_LABEL = r"single label value"  # evaluation.classification_metrics on a test split with one class


def new_context() -> dict:
    """Where the sections put what they loaded: models by task and method, floors by task and method, probes by
    task and (encoder, pooling), per-subject Dice / PSNR rows."""
    return {"regress": {}, "classify": {}, "segment": {}, "recon": {}, "floors": {"regress": {}, "classify": {}},
            "probes": {"regress": {}, "classify": {}}}  # fmt: skip


# --------------------------------------------------------------------------------------------------- regression
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
    """Per-phenotype MAE / R², means, bootstrap intervals of the mean MAE and mean R², and coverage of one column."""
    reg = regression_metrics(d["true"], d["pred"], d["names"])
    n = len(d["eid"])
    mae, r2 = bootstrap(lambda w: weighted_mae(abs_err(d), w), n), bootstrap(lambda w: r2_of(d, w), n)
    return {"mae": {k: reg[k]["mae"] for k in d["names"]}, "r2": {k: reg[k]["r2"] for k in d["names"]},
            "mean_mae": reg["mean"]["mae"], "mean_r2": reg["mean"]["r2"], "mean_mae_ci": mae["ci"],
            "mean_r2_ci": r2["ci"], "n": n, "coverage": coverage_of(d, metrics), "metrics_csv": metrics}  # fmt: skip


def mean_predictor_data(cfg: dict, names: list[str]) -> dict:
    """The training-mean predictor as a loaded regress folder over the datalist's test split."""
    train = split_targets(cfg, "training", "phenotypes", names)
    true = split_targets(cfg, "test", "phenotypes", names)
    pred = np.broadcast_to(np.nanmean(train, axis=0), true.shape)
    return {"eid": list(cfg["test_eids"]), "names": list(names), "true": true, "pred": pred, "train": train}


def mean_predictor(cfg: dict, names: list[str]) -> dict:
    """The training-mean predictor on the test split: per-phenotype MAE, mean MAE and mean R² with intervals."""
    d = mean_predictor_data(cfg, names)
    mae = mean_predictor_mae(d["train"], d["true"])
    n = len(d["eid"])
    mae_ci, r2 = bootstrap(lambda w: weighted_mae(abs_err(d), w), n), bootstrap(lambda w: r2_of(d, w), n)
    return {"mae": dict(zip(names, mae.tolist())), "mean_mae": float(np.nanmean(mae)), "mean_mae_ci": mae_ci["ci"],
            "mean_r2": r2["estimate"], "mean_r2_ci": r2["ci"], "label": MEAN_LABEL,
            "train_mean": dict(zip(names, np.nanmean(d["train"], axis=0).tolist())), "n": n}  # fmt: skip


def mae_vs_r(cfg: dict) -> dict:
    """``{method: {R: mean MAE}}`` over every test folder of every regress model (CSV, else metrics.csv)."""
    out = {}
    for stage in stages_of(cfg, "regress"):
        curve = {}
        for key in tests_of(stage):
            folder = test_folder(cfg, stage, key)
            d = load_regress(folder)
            value = regression_metrics(d["true"], d["pred"], d["names"])["mean"]["mae"] if d else \
                read_metrics(folder).get("val_mean_mae")  # fmt: skip
            if value is not None:
                curve[key] = value
        if curve:
            out[method_key(stage)] = curve
    return out


def _columns(cfg: dict, store: dict, missing: list[str], task: str, kind: str, summarise) -> dict:
    """``{method: {label, test, **summarise(predictions, metrics)}}`` of the ``kind`` entries of one vector task at
    the default R; the loaded predictions go to ``store`` and an entry without them to ``missing``."""
    r, columns = cfg["acceleration"], {}
    for stage in stages_of(cfg, task, kind):
        key, folder, d = load_test(cfg, stage, r)
        if d is None:
            missing.append(f"{task} {stage['name']}: no predictions at R={r}")
            continue
        store[method_key(stage)] = d
        columns[method_key(stage)] = {"label": label_of(stage), "test": key, "stage": stage["name"],
                                      **summarise(d, read_metrics(folder))}  # fmt: skip
    return columns


def regress_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """Table 1 at the default R: model columns, floor columns and the training-mean predictor."""
    methods = _columns(cfg, ctx["regress"], missing, "regress", "model", regress_method)
    floors = _columns(cfg, ctx["floors"]["regress"], missing, "regress", "floor", regress_method)
    loaded = [*ctx["regress"].values(), *ctx["floors"]["regress"].values()]
    names = loaded[0]["names"] if loaded else list(PHENOTYPES)
    ctx["mean_predictor"] = mean_predictor(cfg, names)
    ctx["mean_predictor_data"] = mean_predictor_data(cfg, names)
    return {"R": cfg["acceleration"], "phenotypes": names, "methods": methods, "floors": floors,
            "mean_predictor": ctx["mean_predictor"], "mae_vs_R": mae_vs_r(cfg)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- classification
def classify_method(d: dict, metrics: dict, notes: list[str] | None = None) -> dict:
    """AUC, AP, F1, recall, precision per disease and mean, with the bootstrap interval of the mean AUC. A disease
    with one label value in the test split has no AUC / AP (a note, not a warning)."""
    half = np.full(len(d["names"]), 0.5)
    with expected_warnings(SINGLE_LABEL, notes):
        res = classification_metrics(d["true"], d["prob"], half, d["names"])  # AUC and AP: threshold-free
        stored = classification_metrics(d["true"], d["labels"].astype(float), half, d["names"])
    for name in [*d["names"], "mean"]:  # F1, recall, precision of the stored 0/1 labels
        res[name].update({k: stored[name][k] for k in ("f1", "recall", "precision")})
    boot = bootstrap(lambda w: auc_of(d, w), len(d["eid"]))
    return {"per_disease": {n: res[n] for n in d["names"]}, "mean": res["mean"], "mean_auc_ci": boot["ci"],
            "n": boot["n"], "metrics_csv": metrics}  # fmt: skip


def classify_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """Table 2 at the default R: model columns, floor columns and the prevalence (chance) reference."""
    summarise = lambda d, m: classify_method(d, m, notes)  # noqa: E731
    methods = _columns(cfg, ctx["classify"], missing, "classify", "model", summarise)
    floors = _columns(cfg, ctx["floors"]["classify"], missing, "classify", "floor", summarise)
    loaded = [*ctx["classify"].values(), *ctx["floors"]["classify"].values()]
    names = loaded[0]["names"] if loaded else list(DISEASES)
    with expected_warnings(SINGLE_LABEL, notes):
        ref = prevalence_predictor_metrics(split_targets(cfg, "training", "diseases", names),
                                           split_targets(cfg, "test", "diseases", names), names)  # fmt: skip
    return {"R": cfg["acceleration"], "diseases": names, "methods": methods, "floors": floors, "reference": ref}


# ------------------------------------------------------------------------------------------------ linear probes
def _feature_stat(metrics: dict, name: str) -> float:
    return metrics.get(name, metrics.get(f"val_{name}", math.nan))


def probe_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """One row per probe (encoder, pooling) at the default R: mean R² and its interval, R² of the
    :data:`PROBE_PHENOTYPES`, mean AUC and its interval, the test features' mean cosine and effective rank; and per
    pooling the paired differences k-MTR − unaligned, k-MTR − scratch and k-MTR − the k-space floor."""
    rows, r = {}, cfg["acceleration"]
    for stage in stages_of(cfg, kind="probe"):
        if stage.get("task") not in VECTOR_TASKS:
            continue
        task, enc, pool = stage["task"], str(stage.get("encoder")), str(stage.get("pooling"))
        row = rows.setdefault(f"{enc}/{pool}", {"encoder": enc, "pooling": pool, "label": label_of(stage),
                                                "stages": [], "mean_cosine": math.nan,
                                                "effective_rank": math.nan})  # fmt: skip
        row["stages"].append(stage["name"])
        key, folder, d = load_test(cfg, stage, r)
        if d is None:
            missing.append(f"{task} {stage['name']}: no predictions at R={r}")
            continue
        ctx["probes"][task][(enc, pool)] = d
        metrics, n = read_metrics(folder), len(d["eid"])
        for stat in ("mean_cosine", "effective_rank"):
            if not math.isfinite(row[stat]):
                row[stat] = _feature_stat(metrics, stat)
        if task == "regress":
            boot, per = bootstrap(lambda w: r2_of(d, w), n), regression_metrics(d["true"], d["pred"], d["names"])
            row |= {"mean_r2": per["mean"]["r2"], "mean_r2_ci": boot["ci"], "n_regress": n, "test": key,
                    "r2": {p: per[p]["r2"] if p in per else math.nan for p in PROBE_PHENOTYPES}}  # fmt: skip
        else:
            row |= {"mean_auc_ci": bootstrap(lambda w: auc_of(d, w), n)["ci"], "n_classify": n,
                    "mean_auc": classify_method(d, metrics, notes)["mean"]["auc"]}  # fmt: skip
    return {"R": r, "rows": list(rows.values()), "phenotypes": list(PROBE_PHENOTYPES),
            "differences": probe_differences(ctx)}  # fmt: skip


def probe_differences(ctx: dict) -> list[dict]:
    """Per pooling: k-MTR probe − the unaligned and scratch probes and − the k-space floor (mean R², mean AUC)."""
    out = []
    poolings = dict.fromkeys(p for t in VECTOR_TASKS for (e, p) in ctx["probes"][t] if e == KMTR)
    for pool in poolings:
        for other, what in PROBE_REFERENCES:
            item = {"pooling": pool, "other": other, "comparison": f"k-MTR − {what} ({pool} pooling)"}
            for task, of, stat in (("regress", r2_of, "mean_r2"), ("classify", auc_of, "mean_auc")):
                mine = ctx["probes"][task].get((KMTR, pool))
                ref = ctx["floors"][task].get(other) if other.startswith("floor") else \
                    ctx["probes"][task].get((other, pool))  # fmt: skip
                item[stat] = paired_diff(of, mine, ref) if mine is not None and ref is not None else None
            out.append(item)
    return out


# ------------------------------------------------------------------------------------ segmentation, recon, pretrain
def segment_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """Dice per foreground class for every test folder of every segment model; per-subject mean Dice at the
    segmentation R into ``ctx["segment"]``."""
    methods, seg_r = {}, str(cfg.get("seg_acceleration"))
    for stage in stages_of(cfg, "segment"):
        per_r = {}
        for key in tests_of(stage):
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


def recon_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """PSNR / SSIM per recon model and R, with the zero-filled and view-sharing references of the k-MTR folders;
    per-subject PSNRs at the default R (methods and references) into ``ctx["recon"]``."""
    methods, refs = {}, {name: {"label": RECON_LABELS[name], "tests": {}} for name in RECON_REFERENCES}
    r = str(cfg["acceleration"])
    for stage in stages_of(cfg, "recon"):
        per_r = {}
        for key in tests_of(stage):
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


def pretrain_section(cfg: dict, ctx: dict, missing: list[str], notes: list[str]) -> dict:
    """Validation metrics of the pretraining stages (``outputs.eval``, else ``DIR/<name>/eval``)."""
    out = {}
    for stage in stages_of(cfg, "pretrain"):
        m = read_metrics(output_path(cfg, stage, "eval") or cfg["dir"] / stage["name"] / "eval")
        if not m:
            missing.append(f"pretrain {stage['name']}: no eval/metrics.csv")
        out[stage["name"]] = {"label": label_of(stage), "minutes": stage.get("minutes"), "metrics": m}
    return out


# ------------------------------------------------------------------------------------------------ stage list
def stage_summary(cfg: dict) -> list[dict]:
    """Every manifest entry: name, task, kind, method, label, status, done, minutes and the metrics.csv of each of
    its test folders that exists."""
    out = []
    for s in cfg.get("stages", []):
        tests = {k: read_metrics(test_folder(cfg, s, k)) for k in tests_of(s) if test_folder(cfg, s, k)}
        out.append({"name": s["name"], "task": s.get("task"), "kind": kind_of(s), "method": s.get("method"),
                    "label": label_of(s), "status": s.get("status"), "done": is_done(s), "minutes": s.get("minutes"),
                    "tests": tests})  # fmt: skip
    return out


def not_done(cfg: dict) -> list[str]:
    """The manifest's entries that are not done (never run, failed, interrupted or stale), with their status."""
    return [f"{s.get('task')} {s['name']}: not done (status: {s.get('status') or 'unknown'})"
            for s in stages_of(cfg, kind=None, done=False) if not is_done(s)]  # fmt: skip


def labels_by_task(cfg: dict) -> dict:
    """``{task: {method: label}}`` of the model entries, in the manifest's order."""
    out: dict = {}
    for s in stages_of(cfg, kind="model", done=False):
        out.setdefault(s.get("task"), {})[method_key(s)] = label_of(s)
    return out
