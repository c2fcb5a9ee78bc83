"""No-network floors on a cohort: what a linear model reads from the models' own inputs (issue 27, item 1).

Runs :func:`kmtr_monai.floors.run_floor` for the three inputs (fully-sampled pixels, zero-filled pixels at R, the
sampled k-space values at R) and both tasks, exactly as the pipeline's floor stages do (same cache layout, so a
second call reads the cache), and prints the test-split table: mean R² and mean AUC with 95 % bootstrap intervals
over the test subjects (:mod:`kmtr_monai.report.stats`), LVEDV / LVM / RVEDV / LVEF R², and the minutes.

``--phase-check`` adds one diagnostic row: the same ridge on the real and imaginary parts of the complex zero-filled
image, a unitary (per-frame inverse FFT) transform of the sampled k-space values. A ridge on it can read no more
than the k-space floor does; the magnitude zero-filled floor differs from it only by the modulus, which removes the
per-subject smooth phase.

Usage::

    python benchmarks/floors.py --cohort runs/ev/cohort --preset small --out runs/ev/floors [--phase-check]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.floors import FLOOR_INPUTS, run_floor
from kmtr_monai.linear_eval import SPLITS, linear_eval, reduce_features, split_inputs
from kmtr_monai.report.run import load_classify, load_regress
from kmtr_monai.report.stats import auc_of, bootstrap, r2_of

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SHOWN = ("LVEDV (mL)", "LVM (g)", "RVEDV (mL)", "LVEF (%)")


def _r2_columns(d: dict) -> list[float]:
    from sklearn.metrics import r2_score

    out = []
    for n in SHOWN:
        j = d["names"].index(n)
        ok = np.isfinite(d["true"][:, j])
        out.append(float(r2_score(d["true"][ok, j], d["pred"][ok, j])))
    return out


def complex_zero_filled_r2(cohort: Path, preset: str, r: int, cache: Path) -> tuple[float, float]:
    """(validation, test) mean R² of the ridge on [real, imag] of ifft2c(mask·K), 2×2 pooled (the phase check)."""
    from kmtr_monai.transforms.fft import ifft2c

    def feats(a: dict) -> np.ndarray:
        k = torch.as_tensor(a["kspace"], dtype=torch.float32)
        k = torch.complex(k[:, 0], k[:, 1]) * torch.as_tensor(a["mask"], dtype=torch.float32)[..., None]
        z = ifft2c(k)
        x = torch.stack([z.real, z.imag], 1)
        return torch.nn.functional.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), 2).reshape(x.shape[0], -1).numpy()

    arrays = {s: split_inputs(cohort, BUNDLES, preset, "kspace", r, s, cache) for s in SPLITS}
    red = reduce_features(*(feats(arrays[s]) for s in SPLITS))
    res = linear_eval({}, {s: arrays[s]["phenotypes"] for s in SPLITS}, "regress", reduced=red)
    return res["metrics"]["validation"]["val_mean_r2"], res["metrics"]["test"]["val_mean_r2"]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True, type=Path, help="cohort folder with datalist.json")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--acceleration", type=int, default=4)
    ap.add_argument("--out", required=True, type=Path, help="output folder (floor folders and linear_cache/)")
    ap.add_argument("--phase-check", action="store_true")
    args = ap.parse_args(argv)
    cohort, out = args.cohort.resolve(), args.out.resolve()
    cache = out / "linear_cache"
    rows = []
    print("| input | test mean R² [95 % CI] | LVEDV | LVM | RVEDV | LVEF | test mean AUC [95 % CI] | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for inp in FLOOR_INPUTS:
        start = time.perf_counter()
        recs = {task: run_floor(cohort, BUNDLES, args.preset, inp, args.acceleration, task,
                                out / f"{task}-floor-{inp}", cache) for task in ("regress", "classify")}  # fmt: skip
        reg = load_regress(out / next(iter(recs["regress"]["tests"].values())))
        cls = load_classify(out / next(iter(recs["classify"]["tests"].values())))
        r2 = bootstrap(lambda w: r2_of(reg, w), len(reg["eid"]))
        auc = bootstrap(lambda w: auc_of(cls, w), len(cls["eid"]))
        row = {"input": inp, "r2": r2, "auc": auc, "columns": _r2_columns(reg),
               "minutes": (time.perf_counter() - start) / 60}  # fmt: skip
        rows.append(row)
        cols = " | ".join(f"{v:.2f}" for v in row["columns"])
        print(f"| {inp} | {r2['estimate']:.3f} [{r2['ci'][0]:.3f}, {r2['ci'][1]:.3f}] | {cols} | "
              f"{auc['estimate']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}] | {row['minutes']:.1f} |", flush=True)
    if args.phase_check:
        val, test = complex_zero_filled_r2(cohort, args.preset, args.acceleration, cache)
        print(f"| zero-filled complex [real, imag] (phase check) | {test:.3f} (validation {val:.3f}) | | | | | | |")
    return rows


if __name__ == "__main__":
    main()
