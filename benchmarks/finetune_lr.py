"""Stage III learning-rate grid per model family, chosen on the validation split (issue 27, item 3).

For each family (a task bundle plus the pipeline's method overrides) and each learning rate of the grid, the task
bundle trains with the same budget in optimizer steps and the same early stopping the pipeline uses
(``max_steps``, ``early_stop_patience``; ``bundles/common/train.json``), as the exact ``python -m monai.bundle run``
command (:func:`kmtr_monai.bundle.bundle_command`). Each run's ``history.csv`` gives the validation curve; the table
shows the best validation key metric, the epoch and step it was reached at, the validation R² (regress) or AUC
(classify) there, and the minutes. Nothing here reads the test split: the chosen rates go into the preset
(``bundles/presets/<preset>.json``, ``pipeline.overrides``), and the pipeline's test evaluation comes after.

Usage::

    python benchmarks/finetune_lr.py --cohort runs/ev/cohort --preset small --families cnn-image --lrs 3e-4,1e-3,3e-3

A family needing Stage I/II weights takes them from ``--run`` (a pipeline run folder with image-mae/, kspace-mae/,
align/).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import time
from pathlib import Path

from kmtr_monai.bundle import bundle_command
from kmtr_monai.stages import all_stages

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
# the pipeline's Stage III vector methods and their overrides (kmtr_monai.stages): cnn-image, vit-image, kmtr, ...
FAMILIES = {s.method: s.overrides for s in all_stages() if s.task == "regress" and s.kind == "model"}
TASK_BUNDLE = {"regress": ("regress", "val_mean_mae", "val_mean_r2"), "classify": ("classify", "val_mean_auc", None)}


def best_row(history: Path, key: str, lower_is_better: bool) -> dict | None:
    """The history.csv row with the best ``key`` (None when the file or the column is missing)."""
    if not history.is_file():
        return None
    with open(history, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key) not in (None, "")]
    if not rows:
        return None
    return (min if lower_is_better else max)(rows, key=lambda r: float(r[key]))


def run_one(out: Path, cohort: Path, run: Path | None, preset: str, task: str, family: str, lr: float,
            steps: int, patience: int, extra: dict) -> dict:  # fmt: skip
    bundle, key, second = TASK_BUNDLE[task]
    folder = out / f"{task}-{family}" / f"lr{lr:g}"
    over = {"dataset_dir": cohort, "ckpt_dir": folder / "models", "output_dir": folder / "eval",
            "learning_rate": lr, "max_steps": steps, "early_stop_patience": patience, "resume": False,
            **FAMILIES[family], **extra}  # fmt: skip
    if run is not None:
        over |= {"image_mae_ckpt": run / "image-mae/models/model.pt", "stage1_ckpt": run / "kspace-mae/models/model.pt",
                 "align_ckpt": run / "align/models/model.pt"}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.run(bundle_command(BUNDLES / bundle, preset, over), stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise RuntimeError(f"{task} {family} lr={lr:g} failed; log {folder / 'log.txt'}")
    row = best_row(folder / "eval" / "history.csv", key, task == "regress") or {}
    return {"task": task, "family": family, "lr": lr, "best": float(row.get(key, "nan")),
            "second": float(row[second]) if second and row.get(second) else float("nan"),
            "epoch": row.get("epoch", "-"), "step": row.get("iteration", "-"), "minutes": minutes}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True, type=Path)
    ap.add_argument("--run", type=Path, default=None, help="pipeline run with Stage I/II checkpoints")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tasks", default="regress")
    ap.add_argument("--families", default="cnn-image")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more bundle overrides (JSON values)")
    ap.add_argument("--out", type=Path, default=None, help="default: COHORT/../lr_grid")
    args = ap.parse_args(argv)
    import json

    extra = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    out = (args.out or args.cohort.parent / "lr_grid").resolve()
    rows = []
    print("| task | family | lr | best validation key metric | validation R² there | epoch | step | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for family in args.families.split(","):
            for lr in (float(x) for x in args.lrs.split(",")):
                r = run_one(out, args.cohort.resolve(), args.run.resolve() if args.run else None, args.preset, task,
                            family, lr, args.steps, args.patience, extra)  # fmt: skip
                rows.append(r)
                print(f"| {task} | {family} | {lr:g} | {r['best']:.4g} | {r['second']:.3f} | {r['epoch']} | "
                      f"{r['step']} | {r['minutes']:.1f} |", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
