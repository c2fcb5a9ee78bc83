"""What do the Stage I and Stage II embeddings encode: the subject's anatomy, or how the scan looks?

Contrastive alignment rewards any feature that the undersampled k-space and the fully-sampled image of one
subject share and that differs between subjects. In the synthetic cohort the cheapest such features are properties
of the acquisition, not of the heart: the noise level (in k-space it fills the whole periphery) and the tissue
signal levels. This script measures how much of each latent factor of the cohort generator a ridge probe recovers
from each encoder's pooled features, so a run that "aligns" through such a shortcut is visible.

The latent factors are read from ``RUN/cohort/cohort.json`` (written by ``kmtr simulate``): so this only works on
the synthetic cohort. Probe: ``kmtr_monai.metrics.linear_probe_r2`` fitted on the training split, scored on
``--split``; features as in ``alignment_gain.py`` (the bundle's pooling, validation preprocessing at R=4).

Usage::

    python benchmarks/alignment_shortcuts.py --run /tmp/run --preset small
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from alignment_gain import (
    BUNDLES, batched, image_pooled, kspace_pooled, load_split, make_parser, open_run, run_arguments, stage1_encoder,
)  # fmt: skip

# (label, kind, function of one subject's latent dict)
FACTORS = (
    ("noise level (noise_sigma)", "acquisition", lambda s: s["noise_sigma"]),
    ("blood signal", "acquisition", lambda s: s["blood"]),
    ("myocardium signal", "acquisition", lambda s: s["myocardium"]),
    ("fat signal", "acquisition", lambda s: s["fat"]),
    ("bias-field strength", "acquisition", lambda s: s["bias_strength"]),
    ("SAX in-plane angle, cos", "pose", lambda s: math.cos(math.radians(s["inplane_rot_deg"][0]))),
    ("SAX in-plane angle, sin", "pose", lambda s: math.sin(math.radians(s["inplane_rot_deg"][0]))),
    ("body surface area", "anatomy", lambda s: s["bsa"]),
    ("LV end-diastolic volume", "anatomy", lambda s: s["lv_edv_ml"]),
    ("LV mass", "anatomy", lambda s: s["lv_mass_g"]),
    ("RV end-diastolic volume", "anatomy", lambda s: s["rv_edv_ml"]),
)


def latent_factors(cohort: Path, eids: list[str]) -> np.ndarray:
    """(N, len(FACTORS)) latent values of the subjects ``eids`` from ``cohort/cohort.json``."""
    meta = cohort / "cohort.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: latent factors exist only for a cohort made by `kmtr simulate`")
    subjects = {s["eid"]: s for s in json.loads(meta.read_text())["subjects"]}
    missing = [e for e in eids if e not in subjects]
    if missing:
        raise KeyError(f"{meta} has no latent parameters for eids {missing[:5]}")
    return np.array([[fn(subjects[e]) for _, _, fn in FACTORS] for e in eids], dtype=np.float64)


def main(argv=None) -> dict:
    args, run = open_run(run_arguments(__doc__), argv)
    start = time.perf_counter()
    from kmtr_monai.metrics import linear_probe_r2

    parser = make_parser(run, args.preset, args.acceleration, BUNDLES)
    pooling, bs = parser.get_parsed_content("pooling"), parser.get_parsed_content("batch_size")
    splits = {"train": load_split(parser, "training"), "eval": load_split(parser, args.split)}
    stage1_k, stage1_i = stage1_encoder(parser, "kspace"), stage1_encoder(parser, "image")
    dual = parser.get_parsed_content("network_def", lazy=False)
    dual.load_state_dict(torch.load(run / "align" / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    encoders = {
        "k-space Stage I": (kspace_pooled(stage1_k, pooling), ("kspace", "mask")),
        "k-space aligned": (kspace_pooled(dual.kspace_encoder.eval(), pooling), ("kspace", "mask")),
        "image Stage I": (image_pooled(stage1_i, pooling), ("image",)),
        "image aligned": (image_pooled(dual.image_encoder.eval(), pooling), ("image",)),
    }
    feats = {name: {s: batched(fn, *(d[k] for k in keys), batch_size=bs, device="cpu").numpy()
                    for s, d in splits.items()} for name, (fn, keys) in encoders.items()}  # fmt: skip
    y = {s: latent_factors(run / "cohort", d["eid"]) for s, d in splits.items()}
    r2 = {name: linear_probe_r2(f["train"], y["train"], f["eval"], y["eval"])["r2"] for name, f in feats.items()}

    n_tr, n_ev = len(splits["train"]["eid"]), len(splits["eval"]["eid"])
    print(f"\nlatent factors recovered by a ridge probe — run {run}, fitted on training (N={n_tr}), scored on "
          f"{args.split} (N={n_ev}), R={args.acceleration}, pooling {pooling!r}\n")  # fmt: skip
    print("| latent factor | kind | " + " | ".join(f"R² {n}" for n in encoders) + " |")
    print("|---|---|" + "---|" * len(encoders))
    for j, (label, kind, _) in enumerate(FACTORS):
        print(f"| {label} | {kind} | " + " | ".join(f"{r2[n][j]:.2f}" for n in encoders) + " |")
    print(f"runtime {time.perf_counter() - start:.0f} s")
    return {n: dict(zip((f[0] for f in FACTORS), v.tolist())) for n, v in r2.items()}


if __name__ == "__main__":
    main()
