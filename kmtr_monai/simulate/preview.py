"""PNG montage of one written subject: every view (3 LAX + 3 SAX slices) × 4 frames, segmentation overlaid."""

from __future__ import annotations

import os

import numpy as np

from kmtr_monai.constants import IMAGE_FILES, SEG_FILES

_COLOURS = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.45], [0.2, 1, 0.2, 0.45], [0.3, 0.5, 1, 0.45]], np.float32)


def write_preview(subject_dir: str, out_png: str, n_frames: int = 4) -> str:
    """Write a (views × ``n_frames``) grey-scale montage with label overlays of ``subject_dir`` to ``out_png``.

    SAX rows are the slices at 25 %, 50 % and 75 % of the LV extent at ED. Returns ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    def load(name):
        path = os.path.join(subject_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"preview: missing {path}")
        return np.asanyarray(nib.load(path).dataobj)

    sa, seg_sa = load(IMAGE_FILES["sa"]), load(SEG_FILES["sa"])
    lv_slices = np.flatnonzero((seg_sa[..., 0] == 1).any(axis=(0, 1)))
    lo, hi = (lv_slices[0], lv_slices[-1]) if lv_slices.size else (0, sa.shape[2] - 1)
    rows = [(view, load(IMAGE_FILES[view])[:, :, 0], load(SEG_FILES[view])[:, :, 0] if view in SEG_FILES else None)
            for view in ("la_2ch", "la_3ch", "la_4ch")]  # fmt: skip
    for frac in (0.25, 0.5, 0.75):
        k = int(round(lo + frac * (hi - lo)))
        rows.append((f"sa z={k}", sa[:, :, k], seg_sa[:, :, k]))
    frames = np.unique(np.round(np.linspace(0, sa.shape[-1] - 1, n_frames + 1)[:-1]).astype(int))
    fig, axes = plt.subplots(len(rows), len(frames), figsize=(2.2 * len(frames), 2.2 * len(rows)), squeeze=False)
    for r, (name, img, seg) in enumerate(rows):
        vmax = float(np.percentile(img, 99.5)) or 1.0
        for c, t in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(img[..., t].T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            if seg is not None:
                ax.imshow(_COLOURS[np.clip(seg[..., t], 0, 3)].transpose(1, 0, 2), origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
