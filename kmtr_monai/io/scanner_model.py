"""A read scanner file (:class:`~kmtr_monai.io.scanner.ScannerKspace`) → the model's input: coil combination
(:func:`to_model_kspace`) and a ``kmtr-kspace`` item on the model's grid (:func:`to_kspace_item`). Which input the
model takes, and why, is in :mod:`kmtr_monai.io.scanner_prep`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kmtr_monai.io.scanner import ScannerFileError, ScannerKspace
from kmtr_monai.io.scanner_prep import estimate_sens_maps, svd_coil_compression
from kmtr_monai.transforms.fft import fft1c, ifft1c

__all__ = ["to_model_kspace", "to_kspace_item"]


def to_model_kspace(scan: ScannerKspace, n_virtual: int | None = None, sens_maps: np.ndarray | None = None,
                    method: str = "cg-sense", n_iter: int = 30) -> dict[str, Any]:  # fmt: skip
    """A read scanner file → single-coil-equivalent k-space on the scanner grid (the model's input kind).

    Pre-whitens and removes readout oversampling when the reader did not; ``n_virtual`` compresses the coils first
    (estimated on the calibration lines, else on the sampled lines); maps are ``sens_maps`` (C, S, H, W) when given
    (on the whitened/compressed coils) or estimated from the calibration lines, else from the fully-sampled
    time-averaged centre of the imaging lines; the combination is ``combine_coils(method=...)``.

    Returns ``{"kspace": complex64 (S, T, H, W) = mask · fft2c(x), "mask": bool (S, T, H), "sens_maps": (C', S, H, W),
    "compression": CoilCompression or None}``; single-coil files are only masked.
    """
    from kmtr_monai.io.kspace_h5 import combine_coils

    scan = scan.preprocessed()
    k, m = scan.kspace, scan.mask
    calib, cmask = (scan.calib, scan.calib_mask) if scan.calib is not None else (k, m)
    comp = None
    if n_virtual is not None and n_virtual < k.shape[0]:
        comp = svd_coil_compression(calib, cmask, n_virtual=n_virtual)
        k, calib = comp.apply(k), comp.apply(calib)
    if k.shape[0] == 1 and sens_maps is None:
        return {"kspace": (k[0] * m[..., None]).astype(np.complex64), "mask": m, "sens_maps": None,
                "compression": comp}  # fmt: skip
    if sens_maps is None:
        try:
            sens_maps = estimate_sens_maps(calib, cmask)
        except ValueError as err:

            field = "calibration lines" if scan.calib is not None else "mask"
            raise ScannerFileError(scan.path, field, f"cannot estimate coil maps: {err}; pass sens_maps") from err
    out = combine_coils(k, m, sens_maps, method=method, n_iter=n_iter).numpy()
    return {"kspace": out, "mask": m, "sens_maps": np.asarray(sens_maps), "compression": comp}


def _frame_indices(n_in: int, n_out: int) -> list[int]:
    """The loader's frame subsampling ``round(i (T−1) / (K−1))`` (DESIGN §2)."""
    if n_out == 1:
        return [0]
    return [int(round(i * (n_in - 1) / (n_out - 1))) for i in range(n_out)]


def _fit_ky(k: np.ndarray, m: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """ky (axis −2 of k, −1 of m) to h lines around the centre: central lines kept (h smaller: same FOV, coarser
    pixels) or unsampled zero lines added (h larger: finer pixels, mask 0 there)."""
    n = k.shape[-2]
    if n == h:
        return k, m
    if n > h:
        s = n // 2 - h // 2
        return k[..., s : s + h, :], m[..., s : s + h]
    s = h // 2 - n // 2
    pk = [(0, 0)] * (k.ndim - 2) + [(s, h - n - s), (0, 0)]
    pm = [(0, 0)] * (m.ndim - 1) + [(s, h - n - s)]
    return np.pad(k, pk), np.pad(m, pm)


def to_kspace_item(scan: ScannerKspace, grid: Sequence[int], n_frames: int | None = None,
                   slices: Sequence[int] | None = None, views: Sequence[str] | None = None, eid: str | None = None,
                   readout_centre_mm: float = 0.0, frame_interval_ms: float | None = None,
                   pixel_spacing: Sequence[float] | None = None, scale_max: float | None = math.sqrt(2),
                   **combine: Any) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of :func:`~kmtr_monai.io.kspace_h5.write_kspace_h5` (a ``kmtr-kspace`` item) for the
    model grid ``grid`` = (H, W), ``n_frames`` frames and the chosen ``slices`` named ``views``.

    Steps: :func:`to_model_kspace` (``combine`` passed on) on the scanner grid; frames subsampled as the loader does;
    readout **cropped** to W in hybrid space around ``readout_centre_mm`` (exact: a crop of the prescribed FOV along
    kx, pixel size kept); ky **fitted** to H (central lines kept, or unsampled zero lines added: the FOV along
    phase-encode cannot be cropped in k-space, DESIGN §16, so the pixel size along H becomes FOV_y / H). The affine
    (LPS → RAS, NIfTI axes (H, W, slice)) is rebuilt for that grid; geometry missing from the file
    (``pixel_spacing`` (dy, dx) mm, ``frame_interval_ms`` between the file's frames) must be passed; the item's frame
    interval is that times the mean frame step (T_file − 1) / (n_frames − 1), as for image inputs. Views default to
    ``sax_0..``.
    ``scale_max`` (default √2, the training scale of ``RandSmoothPhase``) rescales the k-space so that the image
    maximum estimated from the time-averaged k-space (``time_average_max``) is that value (whitened data are on the
    noise scale); None keeps the scale.

    Returns ``{"kspace": complex64 (S, T, H, W), "mask": bool (S, T, H), "views", "affine" (S, 4, 4),
    "pixel_spacing" (2,), "frame_interval_ms", "eid"}``: ``write_kspace_h5(path, **item)`` writes it.
    """

    h, w = (int(v) for v in grid)
    res = to_model_kspace(scan, **combine)
    k, m = res["kspace"], res["mask"]  # (S, T, Hs, Ws)
    s_idx = list(range(k.shape[0])) if slices is None else [int(v) for v in slices]
    t_idx = list(range(k.shape[1])) if n_frames is None else _frame_indices(k.shape[1], int(n_frames))
    frame_step = (k.shape[1] - 1) / (len(t_idx) - 1) if len(t_idx) > 1 and k.shape[1] > 1 else 1.0
    k, m = k[s_idx][:, t_idx], m[s_idx][:, t_idx]
    spacing = scan.pixel_spacing if pixel_spacing is None else tuple(float(v) for v in pixel_spacing)
    if spacing is None:
        raise ScannerFileError(scan.path, "pixel_spacing", "not in the file; pass pixel_spacing=(dy, dx) in mm")
    interval = scan.frame_interval_ms if frame_interval_ms is None else float(frame_interval_ms)
    if interval is None:
        raise ScannerFileError(scan.path, "frame_interval_ms", "not in the file; pass frame_interval_ms")
    n_h, n_w = k.shape[-2:]
    if w > n_w:
        raise ScannerFileError(scan.path, "kspace", f"the readout has {n_w} samples after oversampling removal; "
                                                    f"cannot crop to W = {w}")  # fmt: skip
    shift_px = int(round(readout_centre_mm / spacing[1]))
    start = n_w // 2 + shift_px - w // 2
    if start < 0 or start + w > n_w:
        raise ValueError(f"readout_centre_mm {readout_centre_mm} puts the {w}-pixel crop outside the FOV")
    k = fft1c(ifft1c(k, -1)[..., start : start + w], -1)
    k, m = _fit_ky(k, m, h)
    k = (k * m[..., None]).astype(np.complex64)
    if scale_max is not None:
        from kmtr_monai.io.kspace_h5 import time_average_max

        peak = time_average_max(k, m)
        if not peak > 0:
            raise ScannerFileError(scan.path, "kspace", "all sampled values are zero on the model grid")
        k = (k * (float(scale_max) / peak)).astype(np.complex64)
    dy = spacing[0] * n_h / h
    affine = scan.affine_for_grid((h, w), (dy, spacing[1]), readout_shift_px=shift_px)[s_idx]
    if views is None:
        views = [f"sax_{i}" for i in range(len(s_idx))]
    return {"kspace": k, "mask": m, "views": list(views), "affine": affine,
            "pixel_spacing": np.array([dy, spacing[1]], dtype=np.float64),
            "frame_interval_ms": float(interval) * frame_step, "eid": eid if eid is not None else scan.eid}  # fmt: skip
