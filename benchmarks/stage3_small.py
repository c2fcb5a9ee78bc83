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
(``RUN/cohort`` holds the cohort and its datalist; the bundle of run ``<name>`` is the name before its first ``-``,
with ``seg`` meaning ``segment-unetr``; ``RUN/<name>.overrides.json``, when present, holds the config overrides the
run was trained with, e.g. ``{"decoder": "query"}``, which evaluation must repeat to build the same network).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import numpy as np

from kmtr_monai.bundle import bundle_command
from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.data.targets import target_array
from kmtr_monai.evaluation import mean_predictor_mae, prevalence_predictor_metrics


def bundle_of(name: str) -> str:
    return "segment-unetr" if name.startswith("seg") else name.split("-")[0]


def evaluate(run: Path, name: str, preset: str) -> dict[str, float]:
    out = run / name / "test"
    trained_with = run / f"{name}.overrides.json"
    overrides = json.loads(trained_with.read_text()) if trained_with.is_file() else {}
    overrides.update(dataset_dir=run / "cohort", ckpt_dir=run / name / "models", output_dir=out, eval_split="test")
    log = run / name / "test.log"
    with open(log, "w") as f:
        code = subprocess.run(bundle_command(bundle_of(name), preset, overrides, "evaluate"), stdout=f, stderr=f)
    if code.returncode != 0:
        raise RuntimeError(f"evaluation of {name} failed; see {log}")
    with open(out / "metrics.csv") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}


def read_csv_columns(path: Path, names) -> np.ndarray:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[n]) if r[n] != "" else np.nan for n in names] for r in rows])


def bootstrap_interval(stat, n: int, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(rows)`` over subjects resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(draws)]
    return tuple(np.nanpercentile(values, [2.5, 97.5]))


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
            pred = read_csv_columns(args.run / name / "test" / "phenotypes.csv", PHENOTYPES)
            true = read_csv_columns(args.run / name / "test" / "targets.csv", PHENOTYPES)
            mean = np.nanmean(target_array(datalist, "training", "phenotypes"), axis=0)
            gap = bootstrap_interval(lambda i: np.nanmean(np.abs(pred[i] - true[i])) - np.nanmean(np.abs(mean - true[i])),
                                     len(true))  # fmt: skip
            rows.append((name, f"MAE {m['val_mean_mae']:.2f}, R² {m['val_mean_r2']:.3f}, "
                               f"90% interval coverage {m['val_interval_coverage']:.3f}",
                         f"mean predictor MAE {np.nanmean(ref):.2f}, R² ≤ 0; MAE difference 95% interval "
                         f"[{gap[0]:+.2f}, {gap[1]:+.2f}]"))  # fmt: skip
        elif bundle == "classify":
            ref = prevalence_predictor_metrics(target_array(datalist, "training", "diseases"),
                                               target_array(datalist, "test", "diseases"))  # fmt: skip
            from sklearn.metrics import roc_auc_score

            prob = read_csv_columns(args.run / name / "test" / "diseases.csv", [f"{d}_probability" for d in DISEASES])
            true = read_csv_columns(args.run / name / "test" / "targets.csv", DISEASES)

            def mean_auc(i):
                aucs = [roc_auc_score(true[i, k], prob[i, k]) for k in range(true.shape[1]) if len(set(true[i, k])) == 2]
                return np.mean(aucs) if aucs else np.nan

            lo, hi = bootstrap_interval(mean_auc, len(true))
            rows.append((name, f"AUC {m['val_mean_auc']:.3f} (95% interval [{lo:.3f}, {hi:.3f}]), AP {m['val_ap']:.3f}, "
                               f"F1 {m['val_f1']:.3f}",
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
