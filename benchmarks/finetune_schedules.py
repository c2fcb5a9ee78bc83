"""Stage III fine-tuning schedules: retrain a run's pretrained-encoder models with another schedule and compare.

The small run's end-to-end fine-tuning (2 epochs, 34 steps, raw encoder features into the head) left every
phenotype regressor at the training-mean predictor, although a ridge probe on the frozen image MAE reaches test R²
0.5 for LVEDV and RVEDV. This script
retrains the Stage III stages that start from a pretrained encoder (k-MTR, the unaligned k-space MAE, the image
MAE) with one schedule each, through the pipeline's own stage runner (the same bundle commands, overrides and test
evaluations as ``kmtr pipeline``), on the base run's cohort and Stage I/II checkpoints. Outputs go to
``RUN/schedules/<name>/<stage>/`` (a finished stage is skipped on re-run, as in the pipeline).

For each stage the table gives the test metric at the report's acceleration (fully-sampled for image models), the
difference to the reference (training-mean predictor; AUC 0.5) and to the base run's own model, each with a 95 %
paired bootstrap interval over the test subjects (:mod:`kmtr_monai.report`).

Usage::

    python benchmarks/finetune_schedules.py --run runs/small --schedules frozen
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from kmtr_monai import report
from kmtr_monai.pipeline import PipelineRun, Progress
from kmtr_monai.stages import all_stages

SCHEDULES: dict[str, tuple[dict, int]] = {  # name: (stage overrides, Stage III epochs)
    # the base run's schedule (2 epochs end to end) with the head's batch standardisation of its input features
    "norm": ({"head_input_norm": True}, 2),
    # head only on the fixed pretrained encoder, 15 epochs (255 steps at the small preset), standardised features
    "frozen": ({"freeze_encoder": True, "head_input_norm": True}, 15),
}
METHODS = ("kmtr", "stage1", "imagemae-image")
TASKS = ("regress", "classify")


def train_schedule(run: Path, name: str, stages: list) -> PipelineRun:
    """Run ``stages`` with schedule ``name`` into ``run/schedules/name`` (Stage I/II linked from ``run``)."""
    manifest = json.loads((run / "pipeline.json").read_text())
    out = run / "schedules" / name
    out.mkdir(parents=True, exist_ok=True)
    for upstream in ("image-mae", "kspace-mae", "align"):
        if not (out / upstream).exists():
            (out / upstream).symlink_to(run / upstream)
    overrides, epochs = SCHEDULES[name]
    sched = PipelineRun(out, manifest["preset"], run / manifest["cohort"], manifest["accelerations"],
                        epochs={task: epochs for task in TASKS})  # fmt: skip
    progress = Progress(len(stages))
    for k, stage in enumerate(stages, 1):
        stage = dataclasses.replace(stage, overrides={**stage.overrides, **overrides})
        if sched.is_done(stage):
            progress.done(f"[{k}/{len(stages)}] {name} {stage.name}: done before, skipped")
            continue
        rec = sched.run_stage(stage, k, progress)
        progress.done(f"[{k}/{len(stages)}] {name} {stage.name}: {rec['minutes']:.1f} min")
    return sched


def _test_dir(run_dir: Path, stage_name: str, r: int) -> Path:
    tests = json.loads((run_dir / stage_name / "stage.json").read_text())["tests"]
    return run_dir / tests[str(r) if str(r) in tests else "full"]


def compare(run: Path, schedules: list[str], stages: list) -> list[str]:
    """Markdown rows: one per (stage, schedule), the base run's model first."""
    cfg = report.load_run(run)
    r = cfg["acceleration"]
    train_mean = None
    rows = []
    for stage in stages:
        load = report.load_regress if stage.task == "regress" else report.load_classify
        base = load(_test_dir(run, stage.name, r))
        if stage.task == "regress" and train_mean is None:
            train_mean = report.mean_predictor(cfg, base["names"])["train_mean"]
        for name in ["base", *schedules]:
            d = base if name == "base" else load(_test_dir(run / "schedules" / name, stage.name, r))
            if stage.task == "regress":
                ref = {**d, "pred": np.broadcast_to(np.array([train_mean[n] for n in d["names"]]), d["pred"].shape)}
                value = report.regress_method(d, {})["mean_mae"]
                vs_ref, vs_base = report.mae_diff(d, ref), report.mae_diff(d, base)
            else:
                value = float(report.weighted_mean_auc(d["true"], d["prob"], np.ones((1, len(d["eid"]))))[0])
                vs_ref = report.bootstrap(lambda w, d=d: report.weighted_mean_auc(d["true"], d["prob"], w) - 0.5,
                                          len(d["eid"]))  # fmt: skip
                vs_base = report.auc_diff(d, base)
            cell = lambda s: f"{s['estimate']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]"  # noqa: E731
            rows.append(f"| {stage.name} | {name} | {value:.3f} | {cell(vs_ref)} | "
                        f"{'—' if name == 'base' else cell(vs_base)} |")  # fmt: skip
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="output folder of `kmtr pipeline` with its Stage III stages done")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    stages = [s for s in all_stages() if s.task in args.tasks and s.method in args.methods]
    for name in args.schedules:
        train_schedule(run, name, stages)
    print(f"\nfine-tuning schedules — run {run}, test split; regress: mean MAE over 12 phenotypes (lower is "
          f"better), reference = training-mean predictor; classify: mean AUC, reference = 0.5\n")  # fmt: skip
    print("| stage | schedule | test metric | − reference [95 % CI] | − base [95 % CI] |")
    print("|---|---|---|---|---|")
    print("\n".join(compare(run, args.schedules, stages)))
    for name in args.schedules:
        overrides, epochs = SCHEDULES[name]
        print(f"{name}: overrides {json.dumps(overrides)}, {epochs} epochs")


if __name__ == "__main__":
    main()
