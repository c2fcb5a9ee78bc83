"""Stage I and Stage II levers (issue 25): retrain the k-space MAE or the alignment with one change each and probe
the k-space encoder as the pipeline probes it.

Each lever is the ``kspace-mae`` bundle's own training command (``kmtr_monai.bundle.bundle_command``) with the base
run's overrides (``RUN/kspace-mae/stage.json``), the reference settings every lever was measured against (``PATCH``,
``PATCH_TRAINING``: the small preset's k-space defaults before issue 25 made whole-line hybrid tokens its default and
locked the image encoder in the alignment at CLIP temperature 0.2)
and the lever's own, on the base run's cohort. The reference itself is the lever ``patch``. Outputs go to
``RUN/stage1-levers/<name>/kspace-mae`` (an interrupted lever resumes through the bundle's ``resume: auto``; a
finished one is not retrained). Every encoder, the run's own Stage I included, is then scored with the pipeline's
linear-probe protocol (:func:`kmtr_monai.probes.run_probe`, encoder ``stage1``, regression, R=4): ridge on frozen
features, regularisation chosen on validation, scored on ``test``. Reported per lever and pooling: probe mean R²
over the 12 phenotypes, its gain over ``patch`` with a 95 % paired bootstrap interval, the mean pairwise
cosine and effective rank of the test features, the lever's best ``val_mse`` against view sharing, and minutes.
``scratch`` rows are the same architecture at random initialisation (no training), the reference that says what
the tokenizer alone gives a linear probe.

Equal compute: a lever that changes the cost of a step (``benchmarks/mae_throughput.py --interleave``: patch tokens
2.86×, hybrid (2, 8, 16) 1.12× an image-MAE step) gets the base budget scaled by that ratio (``max_steps``).

Stage II levers (``--align``) retrain ``align`` from a Stage I lever with the base run's overrides
(``RUN/align/stage.json``), ``PATCH_TRAINING`` and the lever's, into ``RUN/stage2-levers/<name>/align``, and probe
the aligned k-space encoder (encoder ``kmtr``). Reported per lever: the probe, its gain over ``clip-patch``, over
its own unaligned Stage I (the issue's "k-MTR − unaligned" target) and over the run's own k-MTR (the pipeline's probe
of it, ``RUN/regress-probe-kmtr-<pooling>``), all with 95 % paired intervals, the spread of
the test features, and the training loss per epoch against its chance level (``kmtr_monai.losses.chance_loss``). A
lever with ``extra_training_subjects`` trains on :func:`extended_cohort` (more training subjects, the same
validation and test subjects).

Usage::

    python benchmarks/kspace_levers.py --run runs/small --preset small --levers hybrid hybrid-invariance
    python benchmarks/kspace_levers.py --run runs/small --preset small --levers hybrid --align siglip-hybrid
    python benchmarks/kspace_levers.py --run runs/small --preset small --tokens 2,8,16/asinh 1,1,48/scale

``--tokens`` prints only what hybrid tokens hold at random init (:func:`token_table`): the x profile of the magnitude
channel they see, and whether the mean of their embeddings still determines it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from kmtr_monai.bundle import bundle_command
from kmtr_monai.probes import POOLINGS

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
# the reference of every lever: the small preset's k-space network and budgets before issue 25's defaults
PATCH = {"tokenizer": "patch", "kspace_patch": [2, 8, 8], "kspace_norm": "asinh"}
PATCH_TRAINING = {"kspace-mae": {"max_steps": 120, "warmup_steps": 20, "profile_weight": 0.0},
                  "align": {"max_steps": 150, "warmup_steps": 20, "freeze_image": False, "temperature": 0.07}}
HYBRID = {**PATCH, "tokenizer": "hybrid", "kspace_patch": [2, 8, 16]}  # cells of 2 frames x 8 ky lines x 16 x
HYBRID_LINE = {**PATCH, "tokenizer": "hybrid", "kspace_patch": [1, 1, 48], "kspace_norm": "scale"}
# name -> (encoder overrides: the network, needed again to probe it; training-only overrides)
LEVERS: dict[str, tuple[dict, dict]] = {
    "patch": (PATCH, {}),  # the reference (the evidence run's Stage I before the defaults changed)
    "hybrid": (HYBRID, {"max_steps": 300}),  # 120 patch steps x 2.86 / 1.12: the base run's compute
    "hybrid-invariance": (HYBRID, {"max_steps": 150, "invariance_weight": 0.1}),  # two draws: twice a step's cost
    "patch-invariance": (PATCH, {"max_steps": 60, "invariance_weight": 0.1}),
    "line-g2x4": ({**PATCH, "tokenizer": "line", "dec_group": [2, 4]}, {"max_steps": 240}),  # 1.43x
    # the image-profile target from fully-sampled data (no parameters, the base's steps and cost)
    "profile": (PATCH, {"profile_weight": 0.1}),
    "profile-w1": (PATCH, {"profile_weight": 1.0}),
    "steps-3x": (PATCH, {"max_steps": 360, "warmup_steps": 60}),  # the base at three times its budget
    # the profile target where the input makes it local: hybrid tokens hold x (half the hybrid lever's compute)
    "hybrid-profile": (HYBRID, {"max_steps": 150, "profile_weight": 1.0}),
    # one token per (view, frame, sampled ky line) in hybrid space, in linear units: the token embedding is injective
    # (4 channels x 48 x samples -> 192), so pooled tokens keep each view's x profile (4.78x: 120 x 2.87 / 4.78 steps)
    "hybrid-line": (HYBRID_LINE, {"max_steps": 72, "warmup_steps": 12}),
    # the same tokens under the default asinh compression, where the MAE objective has something to learn
    "hybrid-line-asinh": ({**HYBRID_LINE, "kspace_norm": "asinh"}, {"max_steps": 72, "warmup_steps": 12}),
    # the image-profile target on tokens that keep the x profile (was it unmet because the tokens lost it?)
    "hybrid-line-profile": (HYBRID_LINE, {"max_steps": 72, "warmup_steps": 12, "profile_weight": 1.0}),
    # the same with a linear head between the cell features and the profiles, so the term can be fitted
    "hybrid-line-profile-head": ({**HYBRID_LINE, "profile_head": True},
                                 {"max_steps": 72, "warmup_steps": 12, "profile_weight": 1.0}),
}
AUX_TERMS = ("invariance", "profile")  # unweighted auxiliary terms of the k-space MAE (history: train_<term>)


# the small preset's alignment budget since issue 25 (bundles/presets/small.json), and align 0.9.0's defaults on it
ALIGN_300 = {"max_steps": 300, "warmup_steps": 40}
LIT_T02 = {**ALIGN_300, "freeze_image": True, "temperature": 0.2}
# name -> (Stage I: a LEVERS name; align overrides)
ALIGN_LEVERS: dict[str, tuple[str, dict]] = {
    "clip-patch": ("patch", {}),  # the reference (the evidence run's k-MTR before the defaults changed)
    "siglip": ("patch", {"contrastive": "siglip", "temperature": 0.1}),  # SigLIP's t = 10
    "clip-hybrid": ("hybrid", {}),
    "siglip-hybrid": ("hybrid", {"contrastive": "siglip", "temperature": 0.1}),
    "clip-profile": ("profile", {}),
    "siglip-profile": ("profile", {"contrastive": "siglip", "temperature": 0.1}),
    "clip-hybrid-line": ("hybrid-line", {}),
    "clip-hybrid-line-2x": ("hybrid-line", ALIGN_300),  # its loss still fell at the end
    "clip-hybrid-line-profile": ("hybrid-line-profile", {}),
    # the small preset's defaults since issue 25 (twice the steps) at three times the reference's steps
    "clip-hybrid-line-profile-3x": ("hybrid-line-profile", {**ALIGN_300, "max_steps": 450}),
    # the defaults with 64 queued negatives beside the batch's 15 (did 3x stall for lack of negatives?)
    "clip-hybrid-line-profile-queue": ("hybrid-line-profile", {**ALIGN_300, "queue_size": 64}),
    "clip-hybrid-line-profile-head": ("hybrid-line-profile-head", {}),
    # the defaults with the image encoder locked (LiT): its projector still learns; does a fixed target stop the
    # image embeddings' early collapse (cosine 0.96-0.98 in epochs 1-2) and the loss's start above chance?
    "clip-hybrid-line-profile-lit": ("hybrid-line-profile", {**ALIGN_300, "freeze_image": True}),
    # LiT with CLIP's temperature at 0.2 instead of 0.07: the untrained loss starts log B + 0.5 above chance at 1/0.07,
    # and the learnable scale only drifts down (14.3 -> 13.5 in 300 steps), so its initial value is in effect fixed
    "clip-hybrid-line-profile-lit-t02": ("hybrid-line-profile", LIT_T02),
    # the defaults since align 0.9.0 (the lever above) at twice the batch for half the steps: the same subjects seen
    # and about the same compute, with 31 negatives per row instead of 15
    "clip-hybrid-line-profile-lit-t02-b32": ("hybrid-line-profile", {**LIT_T02, "max_steps": 150, "warmup_steps": 20,
                                                                     "align_batch_size": 32}),
    # the defaults with 3,000 training subjects instead of 700 (2,300 more, same generator; validation and test
    # unchanged): does the alignment that fits its 700 training pairs (3x: loss 1.77, top-1 10/150) generalise from
    # more pairs at the same steps?
    "clip-hybrid-line-profile-3000": ("hybrid-line-profile", {**ALIGN_300, "extra_training_subjects": 2300}),
}


def _train(run: Path, preset: str, bundle: str, out: Path, overrides: dict, threads: int) -> Path:
    """Train ``bundle`` with the run's own overrides for it plus ``overrides`` into ``out`` unless ``done.json`` is
    there (an interrupted run resumes); returns the checkpoint folder ``out/models``."""
    ckpt = out / "models"
    if (out / "done.json").is_file():
        return ckpt
    out.mkdir(parents=True, exist_ok=True)
    stage = "kspace-mae" if bundle == "kspace-mae" else "align"
    base = json.loads((run / stage / "stage.json").read_text())["fingerprint"]["overrides"]
    overrides = {**base, **PATCH_TRAINING[stage], "ckpt_dir": str(ckpt), "output_dir": str(out / "eval"), **overrides}
    cmd = bundle_command(bundle, preset, {k: json.dumps(v) if isinstance(v, list) else v
                                          for k, v in overrides.items()})  # fmt: skip
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    start = time.perf_counter()
    with open(out / "log.txt", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})  # fmt: skip
    (out / "done.json").write_text(json.dumps({"overrides": overrides, "minutes": (time.perf_counter() - start) / 60}))
    return ckpt


def extended_cohort(run: Path, extra: int, workers: int) -> Path:
    """``RUN/cohort-plus<extra>``: the run's cohort with ``extra`` more training subjects; returns its folder.

    The extra subjects are the run's generator and cohort preset drawn with the next seed (``RUN/extra-<extra>``),
    renamed ``2000001``, ... so that no eid collides. The run's subject folders are linked, and its validation and
    test splits are kept as they are, so the lever's probe is scored on the same held-out subjects."""
    from kmtr_monai.data.datalist import write_datalist
    from kmtr_monai.simulate import simulate_cohort

    out = run / f"cohort-plus{extra}"
    if (out / "datalist.json").is_file():
        return out
    meta = json.loads((run / "cohort" / "cohort.json").read_text())
    drawn = run / f"extra-{extra}"
    if not (drawn / "cohort.json").is_file():
        simulate_cohort(str(drawn), extra, meta["preset"], seed=meta["seed"] + 1, workers=workers)
    extra_list = json.loads(Path(write_datalist(str(drawn), str(drawn / "datalist.json"), val_fraction=0.0,
                                                test_fraction=0.0, check_files=False)).read_text())  # fmt: skip
    datalist = json.loads((run / "cohort" / "datalist.json").read_text())
    out.mkdir(exist_ok=True)
    for sub in (run / "cohort").iterdir():
        if sub.is_dir() and not (out / sub.name).exists():
            (out / sub.name).symlink_to(sub.resolve())
    renamed = []
    for item in extra_list["training"]:
        eid = str(int(item["eid"]) + 1_000_000)
        if not (out / eid).exists():
            (out / eid).symlink_to((drawn / item["eid"]).resolve())
        renamed.append({**item, "eid": eid})
    datalist["training"] = datalist["training"] + renamed
    tmp = out / "datalist.json.tmp"
    tmp.write_text(json.dumps(datalist))
    tmp.replace(out / "datalist.json")
    return out


def stage1(run: Path, preset: str, name: str, threads: int) -> tuple[Path, dict]:
    """(checkpoint folder, encoder overrides) of Stage I lever ``name``, trained if needed."""
    encoder, training = LEVERS[name]
    out = run / "stage1-levers" / name / "kspace-mae"
    ckpt = out / "models"
    return _train(run, preset, "kspace-mae", out, {"stage1_ckpt": str(ckpt / "model.pt"),
                  "kspace_mae_ckpt": str(ckpt / "model.pt"), **encoder, **training}, threads), encoder  # fmt: skip


def probe(run: Path, preset: str, folder: Path, encoder: str, ckpts: dict, overrides: dict, pooling: str) -> dict:
    """The pipeline's probe of one encoder into ``folder``, with its own feature cache there (the run's undersampled
    inputs are linked, not copied)."""
    from kmtr_monai.probes import run_probe

    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for src in (run / "linear_cache").glob("kspace_R4_*.npz"):
        if not (cache / src.name).exists():
            (cache / src.name).symlink_to(src)
    out = folder / f"probe-{encoder}-{pooling}"
    run_probe(run / "cohort", BUNDLES, preset, encoder, pooling, "regress", ckpts, 4, out, cache, overrides=overrides)
    return read_probe(out / "test" / "R4")


def read_probe(folder: Path) -> dict:
    """Test predictions, targets and metrics of a probe folder written by ``finish_run``."""
    def table(f):
        rows = list(csv.reader(open(folder / f)))
        return np.array([[float(v) if v not in ("", "nan") else np.nan for v in r[1:]] for r in rows[1:]])

    metrics = {k: float(v) for k, v in csv.reader(open(folder / "metrics.csv"))}  # name,value rows, no header
    return {"pred": table("phenotypes.csv"), "y": table("targets.csv"), "metrics": metrics}


def history(eval_dir: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(eval_dir / "history.csv"))]


def gain(base: dict, res: dict) -> str:
    from kmtr_monai.metrics import r2_gain_interval

    g = r2_gain_interval(res["y"], base["pred"], res["pred"])
    return f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"


def phase_free_features(kspace: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """No-network summaries of the sampled k-space that the smooth simulated phase cannot scramble.

    kspace (N, 2, S, T, H, W) real/imag (H = ky, W = kx), mask (N, S, T, H) → ``"energy"``: Σ|k|² over the sampled
    lines of each (view, frame) (N, S·T); ``"x_profile"``: Σ over the sampled ky lines of |ifft1c_kx(k)|², the
    energy of each image column x (Parseval along y: the column's energy, from 1/R of its lines), averaged over
    frames (N, S·W)."""
    from kmtr_monai.transforms import ifft1c

    k = (kspace[:, 0] + 1j * kspace[:, 1]) * mask[..., None]
    if kind == "energy":
        return (np.abs(k) ** 2).sum((-2, -1)).reshape(len(k), -1)
    hybrid = ifft1c(k, dim=-1)  # x along the last axis; ky lines untouched
    return (np.abs(hybrid) ** 2).sum(-2).mean(2).reshape(len(k), -1)


def reference_rows(run: Path) -> list[tuple[str, dict]]:
    """The phase-free summaries above under the same ridge protocol, on the run's cached R=4 inputs."""
    from kmtr_monai.linear_eval import SPLITS, linear_eval

    data = {s: np.load(run / "linear_cache" / f"kspace_R4_{s}.npz") for s in SPLITS}
    rows = []
    for kind, label in (("energy", "no network: sampled energy per (view, frame)"),
                        ("x_profile", "no network: column energies of the sampled hybrid k-space")):  # fmt: skip
        res = linear_eval({s: phase_free_features(data[s]["kspace"], data[s]["mask"], kind) for s in SPLITS},
                          {s: data[s]["phenotypes"] for s in SPLITS}, "regress")  # fmt: skip
        rows.append((label, {"pred": res["pred"]["test"], "y": data["test"]["phenotypes"],
                             "metrics": {**res["metrics"]["test"], "mean_cosine": np.nan, "effective_rank": np.nan}}))
    return rows


def stage1_table(run: Path, preset: str, names: list[str], threads: int) -> None:
    rows = [(label, "—", res, None, 0.0) for label, res in reference_rows(run)]  # (label, pooling, probe, val, min)
    best = lambda d: min(history(d), key=lambda r: r["val_mse"])  # noqa: E731
    scratch: dict[str, Path] = {}  # encoder overrides -> folder of its random-init probes
    for name in ["patch"] + [n for n in names if n != "patch"]:
        ckpt, encoder = stage1(run, preset, name, threads)
        key = json.dumps(encoder, sort_keys=True)
        first = key not in scratch  # the random-init reference of each new encoder architecture
        scratch.setdefault(key, run / "stage1-levers" / f"scratch-{name}")
        minutes = json.loads((ckpt.parent / "done.json").read_text())["minutes"]
        for pooling in POOLINGS:
            if first:
                rows.append((f"scratch, {name}'s encoder", pooling,
                             probe(run, preset, scratch[key], "scratch", {}, encoder, pooling), None, 0.0))
            rows.append((name, pooling, probe(run, preset, ckpt.parent.parent, "stage1", {"stage1": ckpt / "model.pt"},
                                              encoder, pooling), best(ckpt.parent / "eval"), minutes))  # fmt: skip
    own = run / "kspace-mae"
    for pooling in POOLINGS:
        res = probe(run, preset, run / "stage1-levers" / "run", "stage1", {"stage1": own / "models" / "model.pt"}, {},
                    pooling)  # fmt: skip
        rows.append(("the run's Stage I (the preset's defaults)", pooling, res, best(own / "eval"),
                     json.loads((own / "stage.json").read_text())["minutes"]))  # fmt: skip
    base = {p: r for label, p, r, *_ in rows if label == "patch"}
    base["—"] = base["mean"]
    print(f"\nStage I levers — run {run}, test split, R=4, ridge probe of 12 phenotypes\n")
    print("| Stage I | pooling | probe mean R² | − patch [95 % CI] | mean cosine | eff. rank | best val_mse "
          "(view sharing) | auxiliary term per epoch | minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for label, pooling, res, val, minutes in rows:
        m = res["metrics"]
        diff = "—" if label == "patch" else gain(base[pooling], res)
        v = f"{val['val_mse']:.4f} ({val['val_view_sharing_mse']:.4f})" if val else "—"
        aux = aux_terms(run / "stage1-levers" / label / "kspace-mae" / "eval") if label in LEVERS else ""
        print(f"| {label} | {pooling} | {m['val_mean_r2']:.3f} | {diff} | {m['mean_cosine']:.3f} | "
              f"{m['effective_rank']:.1f} | {v} | {aux} | {minutes:.1f} |")  # fmt: skip


def aux_terms(eval_dir: Path) -> str:
    """``term: v1, v2, ...`` of each auxiliary term the run's history recorded (``MetricHistory``), per epoch."""
    rows = history(eval_dir)
    return "; ".join(f"{t}: " + ", ".join(f"{r[f'train_{t}']:.3f}" for r in rows)
                     for t in AUX_TERMS if rows and f"train_{t}" in rows[0])  # fmt: skip


def align_table(run: Path, preset: str, names: list[str], threads: int) -> None:
    from kmtr_monai.losses import chance_loss

    poolings = ("mean", "view_time")
    preset_batch = json.loads((BUNDLES / "presets" / f"{preset}.json").read_text())["align_batch_size"]
    base = {}  # pooling -> probe of the reference alignment (clip-patch)
    print(f"\nStage II levers — run {run}, test split, R=4, ridge probe of 12 phenotypes\n")
    print("| align | Stage I | pooling | probe mean R² | − clip-patch [95 % CI] | − its unaligned Stage I "
          "[95 % CI] | − the run's k-MTR [95 % CI] | mean cosine | training loss per epoch (chance) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ["clip-patch"] + [n for n in names if n != "clip-patch"]:
        source, overrides = ALIGN_LEVERS[name]
        s1_ckpt, encoder = stage1(run, preset, source, threads)
        out = run / "stage2-levers" / name / "align"
        if "extra_training_subjects" in overrides:
            overrides = dict(overrides)
            overrides["dataset_dir"] = str(extended_cohort(run, overrides.pop("extra_training_subjects"), threads))
        ckpt = _train(run, preset, "align", out, {"kspace_mae_ckpt": str(s1_ckpt / "model.pt"),
                                                  "stage1_ckpt": str(s1_ckpt / "model.pt"), **encoder, **overrides},
                      threads)  # fmt: skip
        losses = ", ".join(f"{r['train_loss']:.2f}" for r in history(out / "eval"))
        # each row's candidates: the batch and, once it is full, the queue of negatives (CLIP only)
        batch = overrides.get("align_batch_size", preset_batch)
        chance = chance_loss(overrides.get("contrastive", "clip"), batch + overrides.get("queue_size", 0))
        minutes = json.loads((out / "done.json").read_text())["minutes"]
        for pooling in poolings:
            res = probe(run, preset, out.parent, "kmtr", {"align": ckpt / "model.pt"}, encoder, pooling)
            base.setdefault(pooling, res)
            unaligned = read_probe(run / "stage1-levers" / source / f"probe-stage1-{pooling}" / "test" / "R4")
            own = run / f"regress-probe-kmtr-{pooling}" / "test" / "R4"  # the pipeline's probe of its own k-MTR
            print(f"| {name} | {source} | {pooling} | {res['metrics']['val_mean_r2']:.3f} | "
                  f"{'—' if name == 'clip-patch' else gain(base[pooling], res)} | {gain(unaligned, res)} | "
                  f"{gain(read_probe(own), res) if own.is_dir() else '—'} | {res['metrics']['mean_cosine']:.3f} | "
                  f"{losses} ({chance:.2f}) | {minutes:.1f} |")  # fmt: skip


def token_table(run: Path, preset: str, specs: list[str]) -> None:
    """What hybrid tokens can hold before any training: per ``"pt,ph,px/norm"`` spec, a random-init hybrid
    ``KspaceMAE`` (seed 0) on the run's cached R=4 inputs, under the same ridge protocol (test mean R²):

    * the magnitude channel the tokens see, averaged over each view's sampled lines and frames (N, S·W): the x
      profile in the tokens' units, no network;
    * the token embedding (``tokenizer`` output minus its position code), averaged over the valid cells of each
      (view, x segment) (N, S·W/px·dim): whether a mean of the tokens still determines that profile."""
    import torch

    from kmtr_monai.linear_eval import SPLITS, linear_eval
    from kmtr_monai.networks.mae import build_kspace_mae

    data = {s: np.load(run / "linear_cache" / f"kspace_R4_{s}.npz") for s in SPLITS}
    print(f"\nHybrid tokens at random init — run {run}, test split, R=4, ridge probe of 12 phenotypes\n")
    print("| patch (pt, ph, px) | norm | magnitude profile: features, probe mean R² | token embedding per (view, x "
          "segment): features, probe mean R² |")  # fmt: skip
    print("|---|---|---|---|")
    for spec in specs:
        patch, norm = spec.split("/")
        torch.manual_seed(0)
        net = build_kspace_mae(preset, tokenizer="hybrid", patch=[int(v) for v in patch.split(",")], norm=norm).eval()
        s_, t_, h_, w_ = net.tokenizer.grid
        feats: dict[str, dict[str, np.ndarray]] = {"profile": {}, "embedding": {}}
        with torch.no_grad():
            for split in SPLITS:
                out = {"profile": [], "embedding": []}
                for i in range(0, len(data[split]["mask"]), 25):
                    k = torch.as_tensor(data[split]["kspace"][i : i + 25]).float()
                    m = torch.as_tensor(data[split]["mask"][i : i + 25]).bool()
                    y, _ = net._normalise_input(k, m)
                    mag = net.magnitude(y)[:, 0]  # (B, S, T, H, W)
                    lines = m[..., None].float()
                    out["profile"].append(((mag * lines).sum((2, 3)) / lines.sum((2, 3)).clamp_min(1)).flatten(1))
                    ht = net.tokenizer(torch.cat([y, mag[:, None]], dim=1), m)
                    emb = torch.where(ht.valid[..., None], ht.tokens - net.tokenizer.pos[ht.index], 0.0)
                    grid = net._to_grid(torch.cat([emb[:, :1], emb], 1), ht.index, ht.valid)[:, 1:]
                    grid = grid.reshape(len(k), s_, t_ * h_, w_, -1)
                    w = ht.cells.reshape(len(k), s_, t_ * h_, w_, 1).float()
                    out["embedding"].append(((grid * w).sum(2) / w.sum(2).clamp_min(1)).flatten(1))
                for name, chunks in out.items():
                    feats[name][split] = torch.cat(chunks).double().numpy()
        cells = []
        for name in ("profile", "embedding"):
            res = linear_eval(feats[name], {s: data[s]["phenotypes"] for s in SPLITS}, "regress")
            cells.append(f"{feats[name]['test'].shape[1]:,}, {res['metrics']['test']['val_mean_r2']:.3f}")
        print(f"| ({patch.replace(',', ', ')}) | {norm} | {cells[0]} | {cells[1]} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="output folder of `kmtr pipeline` (cohort/, kspace-mae/, linear_cache/)")
    ap.add_argument("--preset", default="small", choices=("tiny", "small"))
    ap.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS), help="Stage I levers")
    ap.add_argument("--align", nargs="*", default=[], choices=list(ALIGN_LEVERS), help="Stage II levers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", nargs="*", default=[], metavar="PT,PH,PX/NORM",
                    help="print only the random-init hybrid-token table for these specs (token_table)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    if args.tokens:
        return token_table(run, args.preset, args.tokens)
    stage1_table(run, args.preset, args.levers, args.threads)
    if args.align:
        align_table(run, args.preset, args.align, args.threads)


if __name__ == "__main__":
    main()
