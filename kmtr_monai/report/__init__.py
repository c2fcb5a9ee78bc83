"""The report of the one-command pipeline (``kmtr pipeline``): tables, evidence and figures from a run folder.

``write_report(DIR)`` reads what a pipeline run left in ``DIR`` and writes, under ``DIR/report/``:
``results.json`` (every number shown, nested dict, NaN → null), ``report.md`` and the PNG figures it references;
it returns the results dict. ``summary_text(results)`` is the short plain-text summary for the terminal. The report
reads only ``DIR`` (its ``pipeline.json`` and the files it names) and the cohort's ``datalist.json`` and
``phenotypes.csv``, so it works on a run folder copied elsewhere; it knows nothing of the pipeline's stage table.

Modules: :mod:`.run` (reading the manifest and test folders), :mod:`.stats` (bootstrap, weighted metrics),
:mod:`.tables` (Table 1 and 2, floors, probes, Dice, PSNR), :mod:`.evidence` (paired comparisons, headline),
:mod:`.figures`, :mod:`.markdown` (report.md and the terminal summary).

Input contract
--------------
``DIR/pipeline.json`` (written by :func:`kmtr_monai.pipeline.write_manifest`)::

    {"version": 2, "preset": "small", "bundles": "/abs/path/bundles",
     "cohort": "cohort",           # relative to DIR when inside it, else absolute
     "accelerations": [2, 4, 8, 16],
     "acceleration": 4,            # default R of the vector tasks (regress, classify)
     "seg_acceleration": 8,        # R of the segmentation comparison
     "stages": [                   # every stage, in the paper's order: the report's column order and labels
       {"name": "regress-kmtr", "task": "regress", "method": "kmtr", "label": "k-MTR", "kind": "model",
        "bundle": "regress", "status": "done", "done": true, "minutes": 3.2, "upstream": ["align"],
        "input": "kspace",         # model entries of Stage III: image | zero_filled | kspace
        "overrides": {"dataset_dir": "cohort", "ckpt_dir": "regress-kmtr/models", "init": "aligned", ...},
        "paths": ["ckpt_dir", "dataset_dir", ...],   # the overrides that are paths (relative to DIR when inside)
        "outputs": {"ckpt": "regress-kmtr/models/model.pt", "eval": "regress-kmtr/eval",
                    "history": "regress-kmtr/eval/history.csv", "log": "regress-kmtr/log.txt",
                    "tests": {"2": "regress-kmtr/test/R2", "4": "regress-kmtr/test/R4"}}}, ...]}

``task`` is one of ``regress``, ``classify``, ``segment``, ``recon``, ``pretrain``. ``kind`` is ``model`` (a
trained bundle), ``floor`` (a linear model on the raw input: methods ``floor-image`` on the fully-sampled pixels,
test key ``"full"``; ``floor-zf`` and ``floor-kspace``, test keys per R) or ``probe`` (a linear model on frozen
features, with extra fields ``encoder``, e.g. ``kmtr``, ``stage1``, ``scratch``, ``imagemae``, and ``pooling``, e.g.
``mean``, ``layout``); floors and probes are of task ``regress`` or ``classify``. ``done`` is the pipeline's
resume check (status done, same fingerprint, outputs present); an entry that is not done is listed as missing and
not shown (an entry without ``done`` counts as done: its files decide). ``outputs.tests`` maps R (a string) to a
test folder relative to ``DIR``; an image-domain method has one entry, under ``"full"`` (a top-level ``tests`` is
read too). Each test folder holds ``metrics.csv`` (``name,value`` rows) and

- regress: ``phenotypes.csv`` (eid, predictions, ``"<name> lower"`` / ``"<name> upper"`` interval bounds,
  optional) and ``targets.csv`` (eid, true values), as :class:`kmtr_monai.engines.predictions.SavePredictions`
  writes them; metrics ``val_mean_mae``, ``val_mean_r2``, ``val_interval_coverage``;
- classify: ``diseases.csv`` (eid, ``<disease>_probability``, ``<disease>`` 0/1 at the stored threshold) and
  ``targets.csv``;
- probe, optional in ``metrics.csv``: ``mean_cosine`` and ``effective_rank`` of the test features;
- segment: metrics ``val_mean_dice`` and ``val_dice_<class>`` per foreground class;
- recon: metrics ``val_psnr``, ``val_ssim``, ``val_zero_filled_psnr``, ``val_view_sharing_psnr``,
  ``val_view_sharing_ssim`` (``val_zero_filled_ssim`` optional);
- segment and recon, optional: ``<metric>_raw.csv`` per-subject rows (``filename`` = eid, one column per class,
  ``mean``), as MONAI's ``MetricsSaver`` writes metric details (``bundles/common/evaluate.json``).

``cohort`` holds ``datalist.json`` (``training`` / ``validation`` / ``test`` lists of items with ``eid``,
``phenotypes`` and ``diseases``) and ``phenotypes.csv`` (ukbb_cardiac columns). A ``pretrain`` stage (image-mae,
kspace-mae, align) has only validation metrics in ``outputs.eval``/``metrics.csv``. ``outputs.history``, optional:
a CSV per epoch with ``epoch``, ``train_loss`` and ``val_*`` columns (the training curves). Optional:
``DIR/report/data/embeddings.npz`` (``z`` (N, D) k-MTR embeddings of test subjects, ``eid`` (N,)) and
``DIR/report/data/examples.npz`` (``image``, ``zero_filled``, ``recon_kmtr``, ``recon_kgin`` (optional),
``seg_true``, ``seg_kmtr``, ``seg_dynunet_zf`` (optional), each (E, H, W), and ``titles`` (E,)), written by
:mod:`kmtr_monai.report_data`.

Any stage or file may be missing (a partial run): what exists is rendered and what is missing is listed.

Output
------
Table 1 and Table 2 hold the model columns in the manifest's order, then the floors (at the default R;
floor-image fully sampled) beside the training-mean predictor / chance; Table 1 shows every column's mean R² with
its interval. The linear-probe table has one row per (encoder, pooling) and the paired differences k-MTR −
unaligned, − scratch and − the k-space floor per pooling. The evidence starts with (i) every model against the
floor of its input. The headline (top of report.md, first lines of the summary; ``results["headline"]``) says
whether the run can rank methods: only when a fully-sampled image model beats floor-image on mean R² (interval
above 0); it says so when the floors are absent. ``curves.png`` draws every ``outputs.history``.

Intervals are 95 % percentile bootstrap intervals over test subjects (2,000 draws, seed 0; rows in the datalist's
test order, so all columns share the same draws); comparisons between methods are paired (the same resampled
subjects for both, aligned by eid). Segmentation and reconstruction comparisons use the per-subject rows (Dice: the
subject's mean over its foreground classes); a folder without them gives a point estimate of the means. The F1 /
recall / precision of a classifier are those of its stored 0/1 labels (made at the thresholds the model stored on
validation). A disease with one label value in the test split has no AUC / AP: the report notes it (``notes``).
"""

from __future__ import annotations

import json
import math

import numpy as np

from kmtr_monai.report.evidence import evidence, headline
from kmtr_monai.report.figures import make_figures, training_curves
from kmtr_monai.report.markdown import render_markdown, summary_text
from kmtr_monai.report.run import load_classify, load_regress, load_run, stages_of
from kmtr_monai.report.stats import (
    DRAWS,
    LEVEL,
    SEED,
    auc_diff,
    bootstrap,
    bootstrap_weights,
    mae_diff,
    r2_diff,
    weighted_auc,
    weighted_mae,
    weighted_mean_auc,
    weighted_r2,
)
from kmtr_monai.report.tables import (
    classify_section,
    labels_by_task,
    mean_predictor,
    new_context,
    not_done,
    pretrain_section,
    probe_section,
    recon_section,
    regress_method,
    regress_section,
    segment_section,
    stage_summary,
)

__all__ = ["write_report", "summary_text", "collect", "load_run", "load_regress", "load_classify", "stages_of",
           "mean_predictor", "regress_method", "bootstrap", "bootstrap_weights", "weighted_auc", "weighted_mae",
           "weighted_mean_auc", "weighted_r2", "mae_diff", "r2_diff", "auc_diff"]  # fmt: skip


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


def collect(cfg: dict) -> tuple[dict, dict]:
    """All tables and evidence as a results dict, plus the loaded predictions (context for the figures)."""
    ctx, missing, notes = new_context(), not_done(cfg), []
    results = {"run": {"dir": str(cfg["dir"]), "preset": cfg.get("preset"), "cohort": cfg["cohort"],
                       "accelerations": cfg.get("accelerations", []), "acceleration": cfg["acceleration"],
                       "seg_acceleration": cfg.get("seg_acceleration"), "n_test": len(cfg["test_eids"]),
                       "settings": cfg.get("settings") or {},
                       "bootstrap": {"draws": DRAWS, "seed": SEED, "level": LEVEL}}}  # fmt: skip
    results["stages"] = stage_summary(cfg)
    results["labels"] = labels_by_task(cfg)
    for name, section in (("regress", regress_section), ("classify", classify_section), ("probes", probe_section),
                          ("segment", segment_section), ("recon", recon_section), ("pretrain", pretrain_section)):
        results[name] = section(cfg, ctx, missing, notes)
    results["evidence"] = evidence(cfg, results, ctx)
    results["headline"] = headline(ctx, results["evidence"]["floors"])
    results["curves"] = training_curves(cfg)
    results["missing"], results["notes"] = missing, notes
    return results, ctx


def write_report(run_dir) -> dict:
    """Write ``results.json``, ``report.md`` and the figures under ``run_dir/report/``; return the results.

    Its numerical work is small (bootstrap products of (2,000 × n) by (n × K), a t-SNE of n test subjects), and
    thread pools only slow it on busy cores: measured with other jobs on the two cores, one thread against the
    default two takes 0.1 ms against 12 ms per bootstrap product (n = 24) and 0.2 s against 8 s per t-SNE (n = 24;
    1.4 s against 26 s at n = 120). So BLAS and OpenMP run one thread meanwhile."""
    from threadpoolctl import threadpool_limits

    cfg = load_run(run_dir)
    out = cfg["dir"] / "report"
    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1):
        results, ctx = collect(cfg)
        results["figures"] = make_figures(cfg, ctx, results, out)
    results["report"] = {"dir": str(out), "markdown": str(out / "report.md"), "json": str(out / "results.json")}
    results = to_json(results)
    (out / "report.md").write_text(render_markdown(results))
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return results
