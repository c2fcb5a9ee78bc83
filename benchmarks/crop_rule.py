"""Effect of the crop rule (issue 13): how much of the labelled heart falls inside the loader's in-plane crop.

Rules compared, on the views and frames the loader uses (``DATA_PRESETS``: SAX slices from ``sax_start``, frames
from ``frame_indices``, the labelled LAX views 2ch and 4ch):

- ``label``: the old training rule, crop centred on the labelled heart voxels at frame 0 of the file (needs
  labels, so inference could not use it);
- ``image``: crop centred on the image (label-free; ``crop_centre="image"``);
- ``motion``: crop centred on the centroid of the cine's temporal SD (label-free; ``crop_centre="motion"``, the
  loader's default for training, evaluation and inference: ``kmtr_monai.data.cohort.motion_centre``);
- ``motion+jitter``: the motion-centred crop shifted by a training jitter (uniform in [−j, j] per axis, j =
  crop // 8), averaged over 8 draws per file.

Per rule: the fraction of labelled voxels inside the crop (mean and minimum over views of all subjects), and the
share of views that keep at least 99 % of their labelled voxels.

Usage::

    python benchmarks/crop_rule.py                              # simulate 48 tiny + 48 small subjects, seed 0
    python benchmarks/crop_rule.py --subjects 48 --presets tiny small --root /tmp/crop  # keep the cohorts
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from kmtr_monai.constants import SEG_FILES
from kmtr_monai.constants import IMAGE_FILES
from kmtr_monai.data.cohort import frame_indices, motion_centre, sax_start
from kmtr_monai.data.layout import list_subjects, read_nifti
from kmtr_monai.presets import DATA_PRESETS


def inside_fraction(heart: np.ndarray, centre: tuple[int, int], crop: int) -> float:
    """Fraction of True voxels of ``heart`` (..., X, Y) inside the crop×crop window centred at ``centre``."""
    x0, y0 = centre[0] - crop // 2, centre[1] - crop // 2
    total = heart.sum()
    kept = heart[..., max(x0, 0) : max(x0 + crop, 0), max(y0, 0) : max(y0 + crop, 0)].sum()
    return float(kept / total) if total else float("nan")


def view_masks(root: str, eid: str, n_sax: int, n_frames: int):
    """{view: (heart masks (n, K, X, Y) of the loader's SAX selection or LAX view, motion centre of the image)}."""
    out = {}
    for view in ("sa", "la_2ch", "la_4ch"):
        seg, _ = read_nifti(os.path.join(root, eid, SEG_FILES[view]), eid)
        image, _ = read_nifti(os.path.join(root, eid, IMAGE_FILES[view]), eid)
        if view == "sa":
            start = sax_start((seg[:, :, :, 0] == 1).any(axis=(0, 1)), n_sax)
            seg = seg[:, :, start : start + n_sax]
        seg = seg[..., frame_indices(seg.shape[3], n_frames)]
        out[view] = np.transpose(seg > 0, (2, 3, 0, 1)), motion_centre(image)  # (n, K, X, Y), (x, y)
    return out


def measure(root: str, preset: str, draws: int = 8, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{rule: {"sax"|"lax": per-view inside fractions}} over all subjects under ``root``."""
    cfg = DATA_PRESETS[preset]
    crop, jitter = cfg["crop"], cfg["crop"] // 8
    rng = np.random.default_rng(seed)
    res = {rule: {"sax": [], "lax": []} for rule in ("label", "image", "motion", "motion+jitter")}
    for eid in list_subjects(root):
        for view, (heart, motion) in view_masks(root, eid, cfg["n_sax"], cfg["n_frames"]).items():
            group = "sax" if view == "sa" else "lax"
            at_ed = heart[:, 0].any(axis=0)
            xs, ys = np.nonzero(at_ed)
            label_centre = (int(round(xs.mean())), int(round(ys.mean()))) if xs.size else None
            image_centre = (heart.shape[-2] // 2, heart.shape[-1] // 2)
            shifts = rng.integers(-jitter, jitter + 1, size=(draws, 2))
            for s in range(heart.shape[0]):  # per view (SAX slices separately)
                h = heart[s]
                if not h.any():
                    continue
                lc = label_centre or image_centre
                res["label"][group].append(inside_fraction(h, lc, crop))
                res["image"][group].append(inside_fraction(h, image_centre, crop))
                res["motion"][group].append(inside_fraction(h, motion, crop))
                jittered = [inside_fraction(h, (motion[0] + dx, motion[1] + dy), crop) for dx, dy in shifts]
                res["motion+jitter"][group].append(float(np.mean(jittered)))
    return {r: {g: np.array(v) for g, v in groups.items()} for r, groups in res.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="folder for the cohorts (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from kmtr_monai.simulate import simulate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        base = args.root or tmp
        print(f"crop rule: labelled heart voxels inside the crop ({args.subjects} subjects, seed {args.seed})")
        print(f"{'preset':<7}{'matrix→crop':>12}  {'rule':<13}{'views':>6}  {'mean':>7}{'min':>7}{'≥99 %':>8}")
        for preset in args.presets:
            root = os.path.join(base, f"{preset}_{args.subjects}_{args.seed}")
            if not os.path.isdir(root):
                simulate_cohort(root, subjects=args.subjects, preset=preset, seed=args.seed, workers=args.workers)
            res = measure(root, preset, seed=args.seed)
            cfg = DATA_PRESETS[preset]
            matrix = read_nifti(os.path.join(root, list_subjects(root)[0], "sa.nii.gz"), "")[0].shape[0]
            sizes = f"{matrix}→{cfg['crop']}"
            for rule, groups in res.items():
                for group, v in groups.items():
                    print(f"{preset:<7}{sizes:>12}  {rule:<13}{group:>6}  {v.mean():7.4f}"
                          f"{v.min():7.4f}{(v >= 0.99).mean():8.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
