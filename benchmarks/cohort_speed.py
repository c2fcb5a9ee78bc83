"""Generation speed of the synthetic cohort (cohort issue, item 5): subjects/s at a preset, end to end (render, NIfTI
write, phenotypes from the written segmentations), plus the split between rendering and writing.

Usage::

    python benchmarks/cohort_speed.py --preset paper --subjects 8 --workers 2

Target: 2,000 paper-size subjects in 30 minutes on 2 CPU cores, i.e. >= 1.1 subjects/s with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from kmtr_monai.presets import COHORT_PRESETS
    from kmtr_monai.simulate import render_subject, sample_subject, simulate_cohort, write_subject

    preset = COHORT_PRESETS[args.preset]
    # single-process split of one subject's time (after a warm-up)
    p = sample_subject(args.seed, 0)
    render_subject(p, preset)
    t0 = time.perf_counter()
    render_subject(p, preset)
    t_render = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="kmtr-speed-")
    try:
        t0 = time.perf_counter()
        write_subject(tmp, p, preset)
        t_write = time.perf_counter() - t0 - t_render
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
    finally:
        shutil.rmtree(tmp)
    print(f"preset {args.preset}: one subject renders in {t_render:.2f} s, NIfTI writing adds ~{t_write:.2f} s, "
          f"{size_mb:.1f} MB on disk")  # fmt: skip

    out = tempfile.mkdtemp(prefix="kmtr-speed-cohort-")
    try:
        t0 = time.perf_counter()
        simulate_cohort(out, subjects=args.subjects, preset=args.preset, seed=args.seed, workers=args.workers)
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(out)
    rate = args.subjects / dt
    print(f"{args.subjects} subjects with {args.workers} workers in {dt:.1f} s: {rate:.2f} subjects/s "
          f"({dt / args.subjects * args.workers:.2f} s per subject per worker); 2,000 subjects ≈ {2000 / rate / 60:.0f} min")  # fmt: skip
    return rate


if __name__ == "__main__":
    main()
