"""Stage III figures on the held-out test split, each next to the references measured in the same evaluation.

For every run folder ``RUN/<name>`` holding a trained Stage III bundle (``models/model.pt``), this script runs the
bundle's ``evaluate.json`` on the test split (the exact ``python -m monai.bundle run`` command a user types) and
prints one table:

- regress: mean MAE (native units) and mean R² against the training-mean predictor on the same test subjects, with
  the conformal interval coverage;
- classify: mean AUC / AP / F1 at the stored thresholds against chance (AUC 0.5, AP = test prevalence);
- segment-unetr: mean foreground Dice per decoder;
- recon: PSNR / SSIM against zero-filled and view-sharing reconstructions of the same k-space.

Usage: python benchmarks/stage3_small.py --run RUN --preset small [--runs regress classify seg-query ...]
(``RUN/cohort`` holds the cohort and its datalist; each run folder's bundle is read from ``RUN/<name>/bundle``,
default: the run name with a ``seg-`` prefix meaning ``segment-unetr``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import numpy as np

from kmtr_monai.bundle import bundle_command
from kmtr_monai.data.targets import target_array
from kmtr_monai.evaluation import mean_predictor_mae, prevalence_predictor_metrics


def bundle_of(name: str) -> str:
    return "segment-unetr" if name.startswith("seg") else name.split("-")[0]


def evaluate(run: Path, name: str, preset: str) -> dict[str, float]:
    out = run / name / "test"
    overrides = {"dataset_dir": run / "cohort", "ckpt_dir": run / name / "models", "output_dir": out,
                 "eval_split": "test"}  # fmt: skip
    log = run / name / "test.log"
    with open(log, "w") as f:
        code = subprocess.run(bundle_command(bundle_of(name), preset, overrides, "evaluate"), stdout=f, stderr=f)
    if code.returncode != 0:
        raise RuntimeError(f"evaluation of {name} failed; see {log}")
    with open(out / "metrics.csv") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--runs", nargs="*", default=None)
    args = parser.parse_args()
    datalist = str(args.run / "cohort" / "datalist.json")
    names = args.runs or sorted(p.parent.parent.name for p in args.run.glob("*/models/model.pt"))
    rows = []
    for name in names:
        m = evaluate(args.run, name, args.preset)
        bundle = bundle_of(name)
        if bundle == "regress":
            ref = mean_predictor_mae(target_array(datalist, "training", "phenotypes"),
                                     target_array(datalist, "test", "phenotypes"))  # fmt: skip
            rows.append((name, f"MAE {m['val_mean_mae']:.2f}, R² {m['val_mean_r2']:.3f}, "
                               f"90% interval coverage {m['val_interval_coverage']:.3f}",
                         f"mean predictor MAE {np.nanmean(ref):.2f}, R² ≤ 0"))  # fmt: skip
        elif bundle == "classify":
            ref = prevalence_predictor_metrics(target_array(datalist, "training", "diseases"),
                                               target_array(datalist, "test", "diseases"))  # fmt: skip
            rows.append((name, f"AUC {m['val_mean_auc']:.3f}, AP {m['val_ap']:.3f}, F1 {m['val_f1']:.3f}",
                         f"chance AUC 0.5, AP {ref['mean']['ap']:.3f} (prevalence)"))  # fmt: skip
        elif bundle == "segment-unetr":
            rows.append((name, f"mean foreground Dice {m['val_mean_dice']:.3f}", "all-background 0"))
        else:
            rows.append((name, f"PSNR {m['val_psnr']:.2f} dB, SSIM {m['val_ssim']:.3f}",
                         f"zero-filled {m['val_zero_filled_psnr']:.2f} dB; view sharing "
                         f"{m['val_view_sharing_psnr']:.2f} dB, SSIM {m['val_view_sharing_ssim']:.3f}"))  # fmt: skip
    print(f"test split of {args.run / 'cohort'} ({len(json.load(open(datalist))['test'])} subjects), preset "
          f"{args.preset}")  # fmt: skip
    print("| run | test metrics | references (same test subjects) |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
