"""PNG montage of one written subject: every view (3 LAX + 3 SAX slices) at ED and ES, without and with labels."""

from __future__ import annotations

import os

import numpy as np

from kmtr_monai.constants import IMAGE_FILES, SEG_FILES

# RGBA per label value (0..3); the overlay shows UK Biobank file labels (SAX: LV, Myo, RV; LAX: LA, RA)
_COLOURS = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.45], [0.2, 1, 0.2, 0.45], [0.3, 0.5, 1, 0.45]], np.float32)


def write_preview(subject_dir: str, out_png: str) -> str:
    """Write a (6 rows × 4 columns) grey-scale montage of ``subject_dir`` to ``out_png``; returns ``out_png``.

    Rows: la_2ch, la_3ch, la_4ch and the SAX slices at 20 %, 50 % and 80 % of the LV extent at ED (base -> apex).
    Columns: ED, ES, ED with labels, ES with labels; ES is the frame of minimum LV blood-pool voxel count in
    ``seg_sa``. Images are shown as stored, voxel axis 0 to the right and axis 1 upwards, windowed on the heart as a
    reader would: white at the 99th percentile of the SAX LV blood pool at ED (brighter fat saturates; before v2.6
    the window was each image's 99.5th percentile, so in obese subjects the fat set it and the heart looked grey).
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
    es = int(np.argmin((seg_sa == 1).sum(axis=(0, 1, 2))))
    lv_slices = np.flatnonzero((seg_sa[..., 0] == 1).any(axis=(0, 1)))
    lo, hi = (lv_slices[0], lv_slices[-1]) if lv_slices.size else (0, sa.shape[2] - 1)
    rows = [(view, load(IMAGE_FILES[view])[:, :, 0], load(SEG_FILES[view])[:, :, 0] if view in SEG_FILES else None)
            for view in ("la_2ch", "la_3ch", "la_4ch")]  # fmt: skip
    for frac in (0.2, 0.5, 0.8):
        k = int(round(lo + frac * (hi - lo)))
        rows.append((f"sa z={k}", sa[:, :, k], seg_sa[:, :, k]))
    cols = [(0, False, "ED"), (es, False, f"ES (frame {es})"), (0, True, "ED + labels"), (es, True, "ES + labels")]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.4 * len(cols), 2.4 * len(rows)), squeeze=False)
    blood = sa[..., 0][seg_sa[..., 0] == 1]
    vmax = float(np.percentile(blood if blood.size else sa, 99.0)) or 1.0
    for r, (name, img, seg) in enumerate(rows):
        for c, (t, overlay, title) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img[..., t].T, cmap="gray", vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
            if overlay and seg is not None:
                ax.imshow(_COLOURS[np.clip(seg[..., t], 0, 3)].transpose(1, 0, 2), origin="lower",
                          interpolation="nearest")  # fmt: skip
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
