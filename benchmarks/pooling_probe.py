"""What a linear probe can read from pooled Stage I features, per pooling, against two no-learning references.

The Stage II validation metric and ``alignment_gain.py`` probe the phenotypes linearly from pooled encoder features,
so the pooling sets the ceiling of what alignment can show. For the Stage I image and k-space encoders of a run this
prints the ridge-probe R² (``kmtr_monai.metrics.linear_probe_r2``: fitted on ``training``, scored on ``--split``)
of the class token, the mean of all tokens and the per-(view, time step) means (``view_time``), plus two features
that need no network:

* image intensity sums: Σ pixels of each (view, frame) of the fully-sampled image (rotation-invariant, so they
  survive the cohort's random in-plane angles);
* view-shared k-space energy: Σ|k|² of each (view, frame) of the view-shared undersampled k-space
  (``kmtr_monai.view_sharing``, sampled lines only), by Parseval the energy of the image it stands for.

Data: the ``align`` bundle's validation preprocessing (``eid``-seeded phase and mask at ``--acceleration``).

Usage::

    python benchmarks/pooling_probe.py --run RUN --preset small   # RUN as for alignment_gain.py (no align needed)
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from alignment_gain import (
    BUNDLES, SHOWN, batched, image_pooled, kspace_pooled, load_split, make_parser, open_run, probe, run_arguments,
    stage1_encoder,
)  # fmt: skip
from kmtr_monai.constants import PHENOTYPES

POOLINGS = ("cls", "mean", "view_time")


def intensity_sums(image: torch.Tensor) -> torch.Tensor:
    """image (B, S, T, H, W) -> (B, S·T) pixel sums per view and frame."""
    return image.sum((-2, -1)).flatten(1)


def view_shared_energy(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """kspace (B, 2, S, T, H, W), mask (B, S, T, H) -> (B, S·T) energy of the view-shared k-space per view and frame."""
    from kmtr_monai.view_sharing import view_share

    return view_share(kspace, mask > 0).square().sum((1, -2, -1)).flatten(1)


def main(argv=None) -> dict:
    args, run = open_run(run_arguments(__doc__), argv, align=False)
    start = time.perf_counter()
    parser = make_parser(run, args.preset, args.acceleration, BUNDLES)
    bs = parser.get_parsed_content("batch_size")
    splits = {"train": load_split(parser, "training"), "eval": load_split(parser, args.split)}
    image_enc, kspace_enc = stage1_encoder(parser, "image"), stage1_encoder(parser, "kspace")

    rows = {"image intensity sums per (view, frame) (no network)": (intensity_sums, ("image",)),
            "view-shared k-space energy per (view, frame) (no network)": (view_shared_energy, ("kspace", "mask"))}  # fmt: skip
    for pooling in POOLINGS:
        rows[f"image Stage I, {pooling}"] = (image_pooled(image_enc, pooling), ("image",))
    for pooling in POOLINGS:
        rows[f"k-space Stage I, {pooling}"] = (kspace_pooled(kspace_enc, pooling), ("kspace", "mask"))

    y = {s: d["phenotypes"].double().numpy() for s, d in splits.items()}
    results = {}
    for name, (fn, keys) in rows.items():
        x = {s: batched(fn, *(d[k] for k in keys), batch_size=bs, device="cpu").numpy() for s, d in splits.items()}
        r2, _, _ = probe(x["train"], y["train"], x["eval"], y["eval"])
        results[name] = {"width": x["train"].shape[1], "mean_r2": float(np.nanmean(r2)), "r2": dict(zip(PHENOTYPES, r2))}

    def f(v):
        return "—" if v is None or math.isnan(v) else f"{v:.3f}"

    n_tr, n_ev = len(y["train"]), len(y["eval"])
    print(f"\nlinear-probe R² by pooling — run {run}, fitted on training (N={n_tr}), scored on {args.split} (N={n_ev}), "
          f"R={args.acceleration}\n")  # fmt: skip
    cols = ["features", "width", "probe R² (mean of 12)", *[f"R² {p.split(' ')[0]}" for p in SHOWN]]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, r in results.items():
        print(f"| {name} | {r['width']} | {f(r['mean_r2'])} | " + " | ".join(f(r["r2"][p]) for p in SHOWN) + " |")
    print(f"runtime {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
