"""Clinical outputs of Stage III inference, in files that clinical-research tools read directly.

* ``phenotypes.csv``: ``eid`` + the ukbb_cardiac column names (``"LVEDV (mL)"``, ...) as in the cohort's own
  ``phenotypes.csv``, then ``"<name> lower"`` and ``"<name> upper"`` (the conformal interval) per phenotype.
* ``diseases.csv``: ``eid``, ``<disease>_probability`` per disease, then ``<disease>`` 0/1 (probability >= the
  threshold stored with the model).
* NIfTI per view: ``<out_dir>/<eid>/seg_<view>.nii.gz`` (int16 labels 0-5) or ``recon_<view>.nii.gz`` (float32
  magnitude), (X, Y, 1, T) with that view's affine and pixdim[4] = the frame interval (ms). One file per view
  (``seg_sax_0.nii.gz`` ...) rather than a UK Biobank ``seg_sa.nii.gz`` stack: the model sees a chosen subset of
  SAX slices, and one file per view overlays exactly the input view it came from (load it over ``sa.nii.gz`` in a
  viewer: the world coordinates agree because the view's affine already carries its slice position, see
  :func:`uncrop_affine`).

* NIfTI on the source grid (segmentations of a subject-folder input, ``write_source_niftis``):
  ``<out_dir>/<eid>/seg_sa.nii.gz``, ``seg_la_2ch.nii.gz``, ... named as the UK Biobank segmentation of each input
  file, with that file's shape (X, Y, Z, T) and affine, so it overlays the input exactly. The model's crop is put back
  by nearest-neighbour resampling in world coordinates (``resample_to_source``: undoes the crop and any in-plane
  resampling to the preset's pixel spacing); voxels outside the crop, and SAX slices the model did not see, are 0;
  every source frame takes the labels of the nearest model frame (``frame_indices``). No file for a view file that
  was not given.

Values are written with ``repr``-level precision (``%.6g``); NaN is an empty cell (as pandas writes it).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import ensure_tuple_rep

from kmtr_monai.constants import DISEASES, PHENOTYPES

__all__ = ["write_phenotypes_csv", "write_diseases_csv", "write_view_niftis", "uncrop_affine", "view_nifti_name",
           "resample_to_source", "nearest_frames", "write_source_niftis"]


def _np(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {a.shape}")
    return a


def _fmt(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.6g}"


def _eids(eids: Sequence[Any], n: int) -> list[str]:
    out = [str(e) for e in eids]
    if len(out) != n:
        raise ValueError(f"{len(out)} eids for {n} prediction rows")
    return out


def write_phenotypes_csv(
    path: str, eids: Sequence[Any], pred: Any, lower: Any = None, upper: Any = None, names: Sequence[str] = PHENOTYPES
) -> str:
    """Write ``phenotypes.csv``: pred (N, K) in native units; lower/upper (N, K) interval bounds or None."""
    p = _np(pred, "pred", 2).astype(np.float64)
    n, k = p.shape
    names = list(names)
    if len(names) != k:
        raise ValueError(f"pred has {k} columns but {len(names)} names were given")
    bounds = []
    if (lower is None) != (upper is None):
        raise ValueError("give both lower and upper, or neither")
    if lower is not None:
        lo, hi = _np(lower, "lower", 2).astype(np.float64), _np(upper, "upper", 2).astype(np.float64)
        if lo.shape != p.shape or hi.shape != p.shape:
            raise ValueError(f"lower {lo.shape} and upper {hi.shape} must match pred {p.shape}")
        bounds = [lo, hi]
    header = ["eid", *names]
    if bounds:
        header += [f"{nm} {side}" for nm in names for side in ("lower", "upper")]
    ids = _eids(eids, n)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(n):
            row = [ids[i], *(_fmt(v) for v in p[i])]
            if bounds:
                row += [_fmt(b[i, j]) for j in range(k) for b in bounds]
            w.writerow(row)
    return path


def write_diseases_csv(
    path: str, eids: Sequence[Any], prob: Any, thresholds: Any, names: Sequence[str] = DISEASES
) -> str:
    """Write ``diseases.csv``: prob (N, K) probabilities, thresholds (K,) (``prob >= t`` is 1)."""
    p = _np(prob, "prob", 2).astype(np.float64)
    n, k = p.shape
    t = _np(thresholds, "thresholds").astype(np.float64).reshape(-1)
    names = list(names)
    if t.shape != (k,) or len(names) != k:
        raise ValueError(f"prob has {k} columns; got {t.size} thresholds and {len(names)} names")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("prob must be finite probabilities in [0, 1] (apply the sigmoid to logits first)")
    ids = _eids(eids, n)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["eid", *(f"{nm}_probability" for nm in names), *names])
        for i in range(n):
            w.writerow([ids[i], *(_fmt(v) for v in p[i]), *(int(p[i, j] >= t[j]) for j in range(k))])
    return path


def view_nifti_name(view: str, kind: str) -> str:
    """File name of one view's output: ``seg_<view>.nii.gz`` or ``recon_<view>.nii.gz``."""
    if kind not in ("seg", "recon"):
        raise ValueError(f"kind must be 'seg' or 'recon', got {kind!r}")
    return f"{kind}_{view}.nii.gz"


def write_view_niftis(
    out_dir: str,
    eid: str,
    views: Sequence[str],
    volumes: Any,
    affines: Any,
    frame_interval_ms: float,
    kind: str = "seg",
) -> list[str]:
    """Write one NIfTI per view under ``<out_dir>/<eid>/`` (see module docstring); returns the paths.

    Args:
        volumes: (S, T, H, W) labels (kind "seg") or magnitudes (kind "recon"); H = NIfTI X, W = NIfTI Y.
        affines: (S, 4, 4) voxel -> world of each view's (H, W) grid (e.g. :func:`uncrop_affine` of the source).
        frame_interval_ms: pixdim[4]; time units are ms (``xyzt_units`` mm, msec).
    """
    import nibabel as nib

    vol = _np(volumes, "volumes", 4)
    aff = _np(affines, "affines", 3).astype(np.float64)
    views = [str(v) for v in views]
    if aff.shape != (vol.shape[0], 4, 4) or len(views) != vol.shape[0]:
        raise ValueError(f"volumes {vol.shape} need (S, 4, 4) affines and S view names; got {aff.shape}, {len(views)}")
    if kind == "seg":
        if np.iscomplexobj(vol) or (vol.dtype.kind == "f" and not np.array_equal(vol, np.round(vol))):
            raise ValueError("seg volumes must hold integer labels")
        data = vol.astype(np.int16)
    else:
        data = (np.abs(vol) if np.iscomplexobj(vol) else vol).astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError("volumes contain NaN or Inf")
    folder = os.path.join(out_dir, str(eid))
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, view in enumerate(views):
        arr = np.ascontiguousarray(data[i].transpose(1, 2, 0)[:, :, None, :])  # (T, H, W) -> (X, Y, 1, T)
        img = nib.Nifti1Image(arr, aff[i])
        hdr = img.header
        hdr.set_xyzt_units("mm", "msec")
        zooms = np.sqrt((aff[i, :3, :3] ** 2).sum(0))
        hdr.set_zooms((*zooms, float(frame_interval_ms)))
        img.set_qform(aff[i], code=1)
        img.set_sform(aff[i], code=1)
        p = os.path.join(folder, view_nifti_name(view, kind))
        nib.save(img, p)
        paths.append(p)
    return paths


def uncrop_affine(
    affine_full: Any, full_shape: Sequence[int], crop: int | Sequence[int], centre: Sequence[int] | None = None,
    z: int = 0,
) -> np.ndarray:
    """Affine (4, 4) of a ``crop``×``crop`` (or ``crop`` = (h, w): h×w) window cut from an (X, Y) image with
    voxel->world ``affine_full``.

    The window starts at (x0, y0) = centre - (h // 2, w // 2) (the rule of ``kmtr_monai.data.cohort.crop_centred``;
    pass the centre the loader used, e.g. its ``motion_centre``; default: the image centre (X // 2, Y // 2)), and
    at slice ``z`` of the source stack (a SAX view). Crop voxel (i, j, 0) then has the world position of source voxel
    (x0 + i, y0 + j, z), so a prediction on the crop overlays the source image in a viewer.
    """
    a = _np(affine_full, "affine_full").astype(np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine_full must be (4, 4), got {a.shape}")
    if len(full_shape) < 2:
        raise ValueError(f"full_shape must give (X, Y), got {full_shape}")
    cx, cy = (int(full_shape[0]) // 2, int(full_shape[1]) // 2) if centre is None else (int(centre[0]), int(centre[1]))
    shift = np.eye(4)
    h, w = map(int, ensure_tuple_rep(crop, 2))
    shift[:3, 3] = (cx - h // 2, cy - w // 2, int(z))
    return a @ shift


def resample_to_source(pred: Any, view_affine: Any, source_affine: Any, source_shape: Sequence[int]) -> np.ndarray:
    """Label maps on one view's crop grid, put on the source grid by nearest-neighbour resampling in world space.

    Args:
        pred: (K, H, W) labels on the crop grid whose voxel (i, j, 0) -> world is ``view_affine`` (4, 4).
        source_affine: (4, 4) voxel -> world of the source file; ``source_shape``: its (X, Y, Z).
    Returns: (X, Y, Z, K) int16; 0 wherever the crop does not reach (other slices, outside the window). Uses
    ``monai.transforms.SpatialResample`` (exact for a crop of the source grid: whole-voxel offsets).
    """
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    p = _np(pred, "pred", 3)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(p[..., None], dtype=np.float32)),
                     affine=torch.as_tensor(_np(view_affine, "view_affine", 2).astype(np.float64)))  # fmt: skip
    out = SpatialResample(mode="nearest", padding_mode="zeros")(
        img, dst_affine=torch.as_tensor(_np(source_affine, "source_affine", 2).astype(np.float64)),
        spatial_size=tuple(int(v) for v in source_shape[:3]))  # fmt: skip
    return np.rint(np.moveaxis(out.numpy(), 0, 3)).astype(np.int16)


def nearest_frames(n_source: int, n_model: int) -> np.ndarray:
    """(n_source,) int64: for each source frame, the model frame whose source index (``frame_indices``) is nearest
    (the earlier one on a tie)."""
    from kmtr_monai.data.layout import frame_indices

    taken = frame_indices(n_source, n_model)
    return np.abs(np.arange(n_source)[:, None] - taken[None, :]).argmin(axis=1)


def write_source_niftis(
    out_dir: str,
    eid: str,
    views: Sequence[str],
    volumes: Any,
    view_affines: Any,
    subject_dir: str,
    view_valid: Any = None,
) -> list[str]:
    """Write segmentations on the grid of the input files under ``<out_dir>/<eid>/`` (module docstring); returns
    the paths.

    Args:
        volumes: (S, K, H, W) labels on the model grid, views in ``views`` order.
        view_affines: (S, 4, 4) voxel -> world of each view's crop (the loader's ``view_affine``).
        subject_dir: the input subject folder; each output copies the shape, affine and header of its input file.
        view_valid: (S,) 0 for a view whose file was not given (no output for it); default all given.
    """
    import nibabel as nib

    from kmtr_monai.constants import IMAGE_FILES, is_lax

    vol = _np(volumes, "volumes", 4)
    aff = _np(view_affines, "view_affines", 3).astype(np.float64)
    views = [str(v) for v in views]
    valid = np.ones(len(views)) if view_valid is None else _np(view_valid, "view_valid", 1)
    if aff.shape != (vol.shape[0], 4, 4) or len(views) != vol.shape[0] or valid.shape != (len(views),):
        raise ValueError(f"volumes {vol.shape} need (S, 4, 4) affines, S view names and (S,) view_valid; got "
                         f"{aff.shape}, {len(views)}, {valid.shape}")  # fmt: skip
    if np.iscomplexobj(vol) or (vol.dtype.kind == "f" and not np.array_equal(vol, np.round(vol))):
        raise ValueError("seg volumes must hold integer labels")
    folder = os.path.join(out_dir, str(eid))
    os.makedirs(folder, exist_ok=True)
    paths = []
    for key in dict.fromkeys("sa" if not is_lax(v) else v for v in views):  # input files, contract order
        rows = [i for i, v in enumerate(views) if (v if is_lax(v) else "sa") == key and valid[i] > 0]
        if not rows:
            continue  # the view file was not given: no output
        src = nib.load(os.path.join(subject_dir, IMAGE_FILES[key]))
        shape = tuple(src.shape) + (1,) * (4 - len(src.shape))  # (X, Y, Z, T); a 3-D file is one frame
        out = np.zeros(shape[:3] + (vol.shape[1],), dtype=np.int16)  # (X, Y, Z, K)
        for i in rows:
            placed = resample_to_source(vol[i], aff[i], src.affine, shape[:3])
            out = np.where(placed > 0, placed, out)
        data = out[..., nearest_frames(shape[3], vol.shape[1])]  # (X, Y, Z, T)
        if len(src.shape) == 3:
            data = data[..., 0]
        img = nib.Nifti1Image(np.ascontiguousarray(data), src.affine, header=src.header.copy())
        img.set_data_dtype(np.int16)
        img.header.set_slope_inter(1, 0)
        img.set_qform(*src.get_qform(coded=True))
        img.set_sform(*src.get_sform(coded=True))
        path = os.path.join(folder, f"seg_{key}.nii.gz")
        nib.save(img, path)
        paths.append(path)
    return paths
