"""Stage II levers: retrain ``align`` with one change each and compare it with the run's own alignment.

Each lever is the ``align`` bundle's own training command (``kmtr_monai.bundle.bundle_command``) with the overrides
the lever names, on the base run's cohort and Stage I checkpoints (``RUN/cohort``, ``RUN/image-mae``,
``RUN/kspace-mae``), for the base run's number of align epochs unless the lever says otherwise. Its outputs go to
``RUN/levers/<name>/align`` (log in ``log.txt``; an interrupted lever resumes, a finished one is not retrained).
Each aligned encoder, and the base run's, is then scored by ``alignment_gain.py`` on the held-out ``--split``:
ridge probe R^2 (fit on training), the mean pairwise cosine of its features (collapse), retrieval, and the probe
gain of the lever over the base alignment with a 95 % paired bootstrap interval over the evaluated subjects.

Usage::

    python benchmarks/alignment_levers.py --run runs/small --preset small --levers cell gentle
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from alignment_gain import main as alignment_gain, run_arguments

from kmtr_monai.bundle import bundle_command

LEVERS: dict[str, dict] = {
    "cell": {"cell_align_weight": 1.0},  # token-level alignment of the (view, time) cells next to CLIP
    "queue": {"queue_size": 64},  # the last 4 global batches of 16 as extra negatives
    "longer": {"max_epochs": 20, "warmup_steps": 17},  # twice the small preset's align budget, one epoch of warm-up
    "gentle": {"learning_rate": 1e-4},  # a fifth of the preset's learning rate: less drift from Stage I
    # independent rotations of at most 15° (v2's planning spread) instead of 180° (chosen for cohort v1, whose views
    # were rotated over 360°): neither Stage I encoder saw rotated views, nor does Stage III
    "pose": {"aug_rotation_deg": 15.0},
}

ARRAYS = ("y", "aligned_pred")  # the arrays of an alignment_gain result, kept as tensors in the score cache


def train_lever(run: Path, preset: str, name: str, threads: int) -> Path:
    """Train lever ``name`` into ``run/levers/name`` (skipped when ``align/done.json`` says a run finished; a
    killed run resumes from its last epoch through the bundle's ``resume: auto``); returns that folder."""
    out = run / "levers" / name
    (out / "align").mkdir(parents=True, exist_ok=True)
    for upstream in ("cohort", "image-mae", "kspace-mae"):
        link = out / upstream
        if not link.exists():
            link.symlink_to(run / upstream)
    done = out / "align" / "done.json"
    if done.is_file():
        return out
    base = json.loads((run / "align" / "stage.json").read_text())["fingerprint"]["overrides"]
    overrides = {**base, "ckpt_dir": str(out / "align" / "models"), "output_dir": str(out / "align" / "eval"),
                 **LEVERS[name]}  # fmt: skip
    cmd = bundle_command("align", preset, overrides)
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(out / "align" / "log.txt", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    done.write_text(json.dumps({"overrides": overrides}))
    return out


def score(run: Path, cache: Path, args: list[str], threads: int) -> dict:
    """``alignment_gain`` of ``run`` with ``args``, kept in ``cache`` (reused when made with the same arguments and
    not older than the run's align checkpoint; the thread count does not change the figures)."""
    import torch

    ckpt = run / "align" / "models" / "model.pt"
    if cache.is_file() and cache.stat().st_mtime > ckpt.stat().st_mtime:
        kept = torch.load(cache, weights_only=True)
        if kept["args"] == args:
            return {**kept["result"], **{k: kept[k].numpy() for k in ARRAYS}}
    result = alignment_gain(["--run", str(run), *args, "--threads", str(threads)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: torch.from_numpy(result[k]) for k in ARRAYS}
    torch.save({"args": args, "result": {k: v for k, v in result.items() if k not in ARRAYS}, **arrays}, cache)
    return result


def main(argv=None) -> None:
    from kmtr_monai.metrics import r2_gain_interval

    ap = run_arguments(__doc__)
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--score-only", action="store_true", help="score finished levers, train none")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    common = ["--preset", args.preset, "--split", args.split, "--acceleration", str(args.acceleration)]
    outs = {name: run / "levers" / name if args.score_only else train_lever(run, args.preset, name, args.threads)
            for name in args.levers}  # fmt: skip
    scored = {"base": score(run, run / "levers" / "base_score.pt", common, args.threads)}
    for name, out in outs.items():
        sets = [f"{k}={json.dumps(v)}" for k, v in LEVERS[name].items() if k != "max_epochs"]
        scored[name] = score(out, out / "score.pt", [*common, *(["--set", *sets] if sets else [])], args.threads)
    base = scored["base"]
    print(f"\nalignment levers — run {run}, {args.split} split (N={base['n_eval']}), "
          f"acceleration {args.acceleration}\n")  # fmt: skip
    print("| align | overrides | probe R² (mean of 12) | − base [95 % CI] | mean cosine | top-1 | top-5 |")
    print("|---|---|---|---|---|---|---|")
    for name, res in scored.items():
        r = res["results"]["aligned"]
        if name == "base":
            diff, sets = "—", "the run's own"
        else:
            g = r2_gain_interval(base["y"], base["aligned_pred"], res["aligned_pred"])
            diff, sets = f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]", json.dumps(LEVERS[name])
        print(f"| {name} | `{sets}` | {r['mean_r2']:.3f} | {diff} | {r['mean_cosine']:.3f} | {r['top1']:.3f} | "
              f"{r['top5']:.3f} |")  # fmt: skip
    print(f"Stage I (unaligned) probe R² {base['results']['stage1']['mean_r2']:.3f}, mean cosine "
          f"{base['results']['stage1']['mean_cosine']:.3f}; chance top-1 {1 / base['n_eval']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
