"""Generation speed of the synthetic cohort: subjects/s at a preset, end to end (render, NIfTI write, phenotypes from
the written segmentations), the split between rendering and writing, and optionally the same measurement of another
generator checkout (``--baseline``, e.g. the previous cohort version) run back to back, alternating, in fresh
processes. On a shared, loaded machine the wall-clock rate is noisy; the CPU seconds per subject are not: of a single
process (``time.process_time``, ``workers=1`` renders in-process) and of the ``workers`` run (parent plus worker
processes, ``RUSAGE_CHILDREN``, tuned worker processes included); ``workers / cpu_s`` of the latter estimates the
rate on idle cores.

Usage::

    python benchmarks/cohort_speed.py --preset paper --subjects 8 --workers 2
    git worktree add /tmp/old_gen <old commit>
    python benchmarks/cohort_speed.py --preset paper --subjects 8 --workers 2 --baseline /tmp/old_gen --repeats 2

Target: 2,000 paper-size subjects in 30 minutes on 2 CPU cores, i.e. >= 1.1 subjects/s with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, os, resource, shutil, sys, tempfile, time
import torch
from kmtr_monai.presets import COHORT_PRESETS
from kmtr_monai.simulate import GENERATOR_VERSION, render_subject, sample_subject, simulate_cohort, write_subject
import kmtr_monai
import kmtr_monai.data.phenotypes  # imported before timing, whether or not the writer imports it lazily
preset_name, subjects, workers, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)  # as in the worker processes
preset = COHORT_PRESETS[preset_name]
p = sample_subject(seed, 0)
render_subject(p, preset)
t0 = time.perf_counter(); render_subject(p, preset); t_render = time.perf_counter() - t0
tmp = tempfile.mkdtemp(prefix="kmtr-speed-")
t0 = time.perf_counter(); write_subject(tmp, p, preset); t_write = time.perf_counter() - t0 - t_render
size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
shutil.rmtree(tmp)
out = tempfile.mkdtemp(prefix="kmtr-speed-cohort-")
c0 = time.process_time()  # CPU seconds of this single process: robust to other jobs on a shared machine
simulate_cohort(out, subjects=subjects, preset=preset_name, seed=seed, workers=1)
cpu = (time.process_time() - c0) / subjects
shutil.rmtree(out)
out = tempfile.mkdtemp(prefix="kmtr-speed-cohort-")
cpu_all = lambda: time.process_time() + sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                                            for f in ("ru_utime", "ru_stime"))  # + workers, once joined
t0, c0 = time.perf_counter(), cpu_all()
simulate_cohort(out, subjects=subjects, preset=preset_name, seed=seed, workers=workers)
dt, cpu_pool = time.perf_counter() - t0, (cpu_all() - c0) / subjects
shutil.rmtree(out)
print(json.dumps(dict(version=GENERATOR_VERSION, package=os.path.dirname(kmtr_monai.__file__), render_s=t_render,
                      write_s=t_write, size_mb=size_mb, cohort_s=dt, rate=subjects / dt, cpu_s=cpu,
                      cpu_pool_s=cpu_pool)))
"""


def measure(src_root: str, preset: str, subjects: int, workers: int, seed: int) -> dict:
    """Run one timed generation with the ``kmtr_monai`` package found in ``src_root`` (a fresh process)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src_root))
    res = subprocess.run([sys.executable, "-c", _CHILD, preset, str(subjects), str(workers), str(seed)], env=env,
                         capture_output=True, text=True, cwd=os.path.abspath(src_root))  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"generator in {src_root!r} failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if os.path.realpath(out["package"]) != os.path.realpath(os.path.join(src_root, "kmtr_monai")):
        raise RuntimeError(f"measured {out['package']!r}, not the package in {src_root!r}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default=None, help="checkout of another generator version to time alternately")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {"current": []} | ({"baseline": []} if args.baseline else {})
    for _ in range(args.repeats):
        for name in runs:
            root = here if name == "current" else args.baseline
            r = measure(root, args.preset, args.subjects, args.workers, args.seed)
            runs[name].append(r)
            print(f"{name} (v{r['version']}): one subject renders in {r['render_s']:.2f} s, NIfTI writing adds "
                  f"~{r['write_s']:.2f} s, {r['size_mb']:.1f} MB; {r['cpu_s']:.2f} CPU s per subject end to end "
                  f"(1 process); {args.subjects} subjects with {args.workers} workers in {r['cohort_s']:.1f} s: "
                  f"{r['rate']:.2f} subjects/s, {r['cpu_pool_s']:.2f} CPU s per subject", flush=True)  # fmt: skip
    best = {name: max(r["rate"] for r in rs) for name, rs in runs.items()}
    cpu = {name: min(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    pool = {name: min(r["cpu_pool_s"] for r in rs) for name, rs in runs.items()}
    rate = best["current"]
    print(f"\npreset {args.preset}: current {rate:.2f} subjects/s wall (best of {args.repeats}); 2,000 subjects ≈ "
          f"{2000 / rate / 60:.0f} min; {cpu['current']:.2f} CPU s per subject in 1 process, {pool['current']:.2f} "
          f"with {args.workers} workers, i.e. ≈ {args.workers / pool['current']:.2f} subjects/s on {args.workers} idle "
          "cores; target >= 1.1 subjects/s")  # fmt: skip
    if args.baseline:
        print(f"baseline {best['baseline']:.2f} subjects/s wall, {cpu['baseline']:.2f} CPU s per subject in 1 process, "
              f"{pool['baseline']:.2f} with {args.workers} workers; current / baseline speed = "
              f"{best['current'] / best['baseline']:.2f} (wall), {cpu['baseline'] / cpu['current']:.2f} (CPU, 1 "
              f"process), {pool['baseline'] / pool['current']:.2f} (CPU, {args.workers} workers)")  # fmt: skip
    return best, cpu, pool


if __name__ == "__main__":
    main()
