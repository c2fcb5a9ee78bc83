"""Stage I levers (issue 25): retrain the k-space MAE with one change each and probe it as the pipeline probes.

Each lever is the ``kspace-mae`` bundle's own training command (``kmtr_monai.bundle.bundle_command``) with the base
run's overrides (``RUN/kspace-mae/stage.json``) plus the lever's, on the base run's cohort. Outputs go to
``RUN/stage1-levers/<name>/kspace-mae`` (an interrupted lever resumes through the bundle's ``resume: auto``; a
finished one is not retrained). Every encoder, the base run's Stage I included, is then scored with the pipeline's
linear-probe protocol (:func:`kmtr_monai.probes.run_probe`, encoder ``stage1``, regression, R=4): ridge on frozen
features, regularisation chosen on validation, scored on ``test``. Reported per lever and pooling: probe mean R²
over the 12 phenotypes, its gain over the base Stage I with a 95 % paired bootstrap interval, the mean pairwise
cosine and effective rank of the test features, the lever's best ``val_mse`` against view sharing, and minutes.
``scratch`` rows are the same architecture at random initialisation (no training), the reference that says what
the tokenizer alone gives a linear probe.

Equal compute: a lever that changes the cost of a step (``benchmarks/mae_throughput.py --interleave``: patch tokens
2.86×, hybrid (2, 8, 16) 1.12× an image-MAE step) gets the base budget scaled by that ratio (``max_steps``).

Usage::

    python benchmarks/stage1_levers.py --run runs/small --preset small --levers hybrid hybrid-invariance
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from kmtr_monai.bundle import bundle_command

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
HYBRID = {"tokenizer": "hybrid", "kspace_patch": [2, 8, 16]}  # cells of 2 frames x 8 ky lines x 16 x samples
# name -> (encoder overrides: the network, needed again to probe it; training-only overrides)
LEVERS: dict[str, tuple[dict, dict]] = {
    "hybrid": (HYBRID, {"max_steps": 300}),  # 120 patch steps x 2.86 / 1.12: the base run's compute
    "hybrid-invariance": (HYBRID, {"max_steps": 150, "invariance_weight": 0.1}),  # two draws: twice a step's cost
    "patch-invariance": ({}, {"max_steps": 60, "invariance_weight": 0.1}),
    "line-g2x4": ({"tokenizer": "line", "dec_group": [2, 4]}, {"max_steps": 240}),  # 1.43x
}
POOLINGS = ("mean", "layout")


def train_lever(run: Path, preset: str, name: str, threads: int) -> Path:
    """Train lever ``name`` into ``run/stage1-levers/name/kspace-mae`` unless ``done.json`` is there; returns the
    checkpoint folder."""
    out = run / "stage1-levers" / name / "kspace-mae"
    ckpt = out / "models"
    if (out / "done.json").is_file():
        return ckpt
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads((run / "kspace-mae" / "stage.json").read_text())["fingerprint"]["overrides"]
    encoder, training = LEVERS[name]
    overrides = {**base, "ckpt_dir": str(ckpt), "output_dir": str(out / "eval"), "stage1_ckpt": str(ckpt / "model.pt"),
                 "kspace_mae_ckpt": str(ckpt / "model.pt"), **encoder, **training}  # fmt: skip
    cmd = bundle_command("kspace-mae", preset, {k: json.dumps(v) if isinstance(v, list) else v
                                                for k, v in overrides.items()})  # fmt: skip
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    start = time.perf_counter()
    with open(out / "log.txt", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})  # fmt: skip
    (out / "done.json").write_text(json.dumps({"overrides": overrides, "minutes": (time.perf_counter() - start) / 60}))
    return ckpt


def best_validation(eval_dir: Path) -> dict[str, float]:
    """The epoch with the lowest ``val_mse`` in ``history.csv``: its val_mse and the view-sharing reference."""
    import csv

    rows = list(csv.DictReader(open(eval_dir / "history.csv")))
    best = min(rows, key=lambda r: float(r["val_mse"]))
    return {k: float(best[k]) for k in ("val_mse", "val_view_sharing_mse")}


def probe(run: Path, preset: str, name: str, encoder: str, ckpt: Path | None, overrides: dict, pooling: str) -> dict:
    """The pipeline's probe of one encoder; per-lever cache (the run's undersampled inputs are linked, not copied)."""
    from kmtr_monai.probes import run_probe

    folder = run / "stage1-levers" / name
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for src in (run / "linear_cache").glob("kspace_R4_*.npz"):
        if not (cache / src.name).exists():
            (cache / src.name).symlink_to(src)
    out = folder / f"probe-{encoder}-{pooling}"
    run_probe(run / "cohort", BUNDLES, preset, encoder, pooling, "regress", {"stage1": ckpt / "model.pt"} if ckpt else {},
              4, out, cache, overrides=overrides)  # fmt: skip
    return read_probe(out / "test" / "R4")


def read_probe(folder: Path) -> dict:
    """Test predictions, targets and metrics of a probe folder written by ``finish_run``."""
    import csv

    def table(f):
        rows = list(csv.reader(open(folder / f)))
        return np.array([[float(v) if v not in ("", "nan") else np.nan for v in r[1:]] for r in rows[1:]])

    metrics = {k: float(v) for k, v in csv.reader(open(folder / "metrics.csv"))}  # name,value rows, no header
    return {"pred": table("phenotypes.csv"), "y": table("targets.csv"), "metrics": metrics}


def main(argv=None) -> None:
    from kmtr_monai.metrics import r2_gain_interval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="output folder of `kmtr pipeline` (cohort/, kspace-mae/, linear_cache/)")
    ap.add_argument("--preset", default="small", choices=("tiny", "small"))
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    rows = []  # (label, pooling, probe, validation, minutes)
    base_val = best_validation(run / "kspace-mae" / "eval")
    base_min = json.loads((run / "kspace-mae" / "stage.json").read_text())["minutes"]
    for pooling in POOLINGS:
        rows.append(("base (patch, run's Stage I)", pooling, read_probe(run / f"regress-probe-stage1-{pooling}" / "test" / "R4"),
                     base_val, base_min))  # fmt: skip
        rows.append(("scratch, patch", pooling, probe(run, args.preset, "scratch-patch", "scratch", None, {}, pooling),
                     None, 0.0))  # fmt: skip
    tokenizers_seen = set()
    for name in args.levers:
        encoder, _ = LEVERS[name]
        key = json.dumps(encoder, sort_keys=True)
        ckpt = train_lever(run, args.preset, name, args.threads)
        done = json.loads((ckpt.parent / "done.json").read_text())
        for pooling in POOLINGS:
            if encoder and key not in tokenizers_seen:
                rows.append((f"scratch, {name.split('-')[0]}", pooling,
                             probe(run, args.preset, f"scratch-{name}", "scratch", None, encoder, pooling), None, 0.0))
            rows.append((name, pooling, probe(run, args.preset, name, "stage1", ckpt, encoder, pooling),
                         best_validation(ckpt.parent / "eval"), done["minutes"]))  # fmt: skip
        tokenizers_seen.add(key)
    base = {p: r for label, p, r, *_ in rows if label.startswith("base")}
    print(f"\nStage I levers — run {run}, test split, R=4, ridge probe of 12 phenotypes\n")
    print("| Stage I | pooling | probe mean R² | − base [95 % CI] | mean cosine | eff. rank | val_mse (view sharing) "
          "| minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, pooling, res, val, minutes in rows:
        m = res["metrics"]
        if label.startswith("base"):
            diff = "—"
        else:
            g = r2_gain_interval(res["y"], base[pooling]["pred"], res["pred"])
            diff = f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
        v = f"{val['val_mse']:.4f} ({val['val_view_sharing_mse']:.4f})" if val else "—"
        print(f"| {label} | {pooling} | {m['val_mean_r2']:.3f} | {diff} | {m['mean_cosine']:.3f} | "
              f"{m['effective_rank']:.1f} | {v} | {minutes:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
