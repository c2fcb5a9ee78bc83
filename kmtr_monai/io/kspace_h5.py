"""HDF5 k-space files on the model's grid: the inference input format of the Stage III bundles.

Format (``format = "kmtr-kspace"``, ``format_version = 1``); every name below is a dataset or a root attribute
(the reader accepts either for the metadata):

=====================  ==========================================  ======================================
key                    dtype / shape                               meaning
=====================  ==========================================  ======================================
``kspace``             complex64 (S, T, H, W) or (C, S, T, H, W)   undersampled k-space, DESIGN §2 FFT
                                                                   convention (centred, orthonormal); ky =
                                                                   H (phase encoding), kx = W (readout);
                                                                   C coils when 5-D
``mask``               bool or uint8 (S, T, H), values 0/1          sampled ky lines per view and frame
``sens_maps``          complex64 (C, S, H, W)                      coil sensitivities; required with coils
``views``              S strings                                   view names in contract order: any of
                                                                   la_2ch, la_3ch, la_4ch, then sax_0..;
                                                                   a subset of the model's views (e.g. a
                                                                   SAX stack alone) is read under
                                                                   ``missing_views="invalid"``
``affine``             float64 (S, 4, 4)                           NIfTI voxel -> world (mm) of each view's
                                                                   (H, W) grid: (X, Y) = (H, W), Z = 1 slice
``pixel_spacing``      float (2,)                                  mm along H and W
``frame_interval_ms``  float scalar                                time between frames
``eid``                string (optional)                           subject id (default: the file stem)
=====================  ==========================================  ======================================

Compound complex datasets with fields (r, i), (real, imag) or (re, im) are accepted; a real array with a
trailing axis of 2 is not (store complex numbers). H and W are the model's grid (its crop size): the file is not
resampled or cropped on reading.

Writing a file from numpy (or write the same keys with any HDF5 tool; h5py stores complex64 as a compound of
fields ``r`` and ``i``)::

    from kmtr_monai.io import write_kspace_h5
    write_kspace_h5("1000001.h5", kspace, mask, views=["la_2ch", "la_4ch", "sax_0", "sax_1"], affine=affines,
                    pixel_spacing=(1.8, 1.8), frame_interval_ms=30.0, eid="1000001")

Validation (:func:`read_kspace_h5`): shapes and dtypes are checked from the HDF5 metadata before any large array
is read; every error is a :class:`KspaceFileError` (a ValueError) naming the file and the key. Values at
unsampled locations (mask 0) are **set to zero with a warning**: a user may pass fully-sampled k-space and a mask
to simulate undersampling, and DESIGN §2 requires that nothing from unsampled locations reaches a k-space model.

Coils (:class:`LoadKspaceH5d`, :func:`combine_coils`): the model was trained on single-coil k-space
``mask · fft2c(x)``. Combining undersampled coil k-space into that is a parallel-imaging problem, because the coil
weighting is a convolution along ky that mixes sampled and unsampled lines. We solve it in the image domain
(CG-SENSE: the x whose coil k-space matches the sampled coil data, a little Tikhonov damping), transform back with
``fft2c`` and mask again, so only sampled data contribute and the output obeys the contract (zeros at unsampled
lines). A one-pass adjoint SENSE combination (``CoilCombine``) is exact only when the maps do not vary along H;
measured with the smooth 8-coil maps of ``SimulateCoils`` on a smooth random 64² object (2 views × 8 frames, VISTA
masks), the relative error at the sampled lines was 15 / 34 / 40 % for adjoint SENSE and 0.01 / 0.4 / 1.4 % for
CG-SENSE with 30 iterations (R = 2 / 4 / 8).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from kmtr_monai.constants import LAX_VIEWS

__all__ = ["KspaceFileError", "FORMAT", "FORMAT_VERSION", "write_kspace_h5", "read_kspace_h5", "check_views",
           "combine_coils", "time_average_max", "LoadKspaceH5d"]  # fmt: skip

FORMAT, FORMAT_VERSION = "kmtr-kspace", 1
H5_SUFFIXES = (".h5", ".hdf5")  # file names taken as this format when the content is not a scanner format
_COMPLEX_FIELDS = (("r", "i"), ("real", "imag"), ("re", "im"))
_SAX = re.compile(r"^sax_(\d+)$")
MISSING_VIEWS = ("fail", "invalid")  # inference policies for a model view the file lacks (LoadKspaceH5d)


class KspaceFileError(ValueError):
    """A bad k-space HDF5 file; the message names the file and the key ("/" when the file itself is unreadable)."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(f"{path}: key {key!r}: {message}")


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing HDF5 k-space files needs h5py: pip install h5py") from err
    return h5py


def check_views(views: Sequence[str], path: str = "<views>", expected: Sequence[str] | None = None,
                missing_views: str = "fail") -> list[str]:
    """Check view names: known, unique, in contract order (LAX in la_2ch, la_3ch, la_4ch order, then sax_0..
    sax_{n-1} consecutive). With ``expected`` (the model's views): no view outside it, and every one of its views
    present unless ``missing_views="invalid"`` (a subset, e.g. a SAX stack alone; "fail" names the missing views).
    Returns the names as a list of str."""
    if missing_views not in MISSING_VIEWS:
        raise ValueError(f"missing_views must be one of {list(MISSING_VIEWS)}, got {missing_views!r}")
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in views]
    unknown = [v for v in names if v not in LAX_VIEWS and not _SAX.match(v)]
    if unknown:
        raise KspaceFileError(path, "views", f"unknown view name(s) {unknown}; use {list(LAX_VIEWS)} and sax_0, "
                                             f"sax_1, ...")  # fmt: skip
    if len(set(names)) != len(names):
        raise KspaceFileError(path, "views", f"duplicate view names in {names}")
    lax = [v for v in names if v in LAX_VIEWS]
    sax = [v for v in names if _SAX.match(v)]
    order = sorted(lax, key=LAX_VIEWS.index) + [f"sax_{i}" for i in range(len(sax))]
    if names != order:
        raise KspaceFileError(path, "views", f"views {names} are not in contract order {order} (LAX first, "
                                             f"then sax_0..)")  # fmt: skip
    if expected is None:
        return names
    expected = [str(v) for v in expected]
    missing = [v for v in expected if v not in names]
    extra = [v for v in names if v not in expected]
    if missing and missing_views == "fail":
        raise KspaceFileError(path, "views", f"missing view(s) {missing}; the model expects {expected}, file has "
                                             f"{names} (missing_views='fail'; 'invalid' gives a missing view zeros "
                                             f"and flags it invalid)")  # fmt: skip
    if extra:
        raise KspaceFileError(path, "views", f"unexpected view(s) {extra}; the model expects {expected}")
    if names != [v for v in expected if v in names]:
        raise KspaceFileError(path, "views", f"views out of order: {names}; expected {expected}")
    return names


# ------------------------------------------------------------------------------------------------------- writer
def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_kspace_h5(
    path: str,
    kspace: Any,
    mask: Any,
    views: Sequence[str],
    affine: Any,
    pixel_spacing: Sequence[float],
    frame_interval_ms: float,
    eid: str | None = None,
    sens_maps: Any = None,
) -> str:
    """Write a k-space HDF5 file in the format above (k-space stored as given; mask as uint8). Returns ``path``.

    Args:
        kspace: complex (S, T, H, W) or (C, S, T, H, W). mask: (S, T, H) 0/1. views: S names. affine: (S, 4, 4).
        pixel_spacing: (2,) mm. frame_interval_ms: float. eid: optional id. sens_maps: complex (C, S, H, W).
    The arrays are validated by reading the file back (:func:`read_kspace_h5`), so a written file is readable.
    """
    h5py = _h5py()
    k = _np(kspace)
    if not np.iscomplexobj(k):
        raise KspaceFileError(path, "kspace", f"expected a complex array, got dtype {k.dtype}")
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["format_version"] = FORMAT, FORMAT_VERSION
        f.create_dataset("kspace", data=k.astype(np.complex64), chunks=True, compression="gzip", compression_opts=1)
        f.create_dataset("mask", data=(_np(mask) != 0).astype(np.uint8), compression="gzip")
        if sens_maps is not None:
            f.create_dataset("sens_maps", data=_np(sens_maps).astype(np.complex64))
        f.create_dataset("affine", data=_np(affine).astype(np.float64))
        f.attrs["views"] = [str(v) for v in views]
        f.attrs["pixel_spacing"] = np.asarray(pixel_spacing, dtype=np.float64)
        f.attrs["frame_interval_ms"] = float(frame_interval_ms)
        if eid is not None:
            f.attrs["eid"] = str(eid)
    read_kspace_h5(path, check_only=True)
    return path


# ------------------------------------------------------------------------------------------------------- reader
def _get(f, path: str, key: str, required: bool = True, ctx: list | None = None):
    """A dataset or root attribute named ``key`` (dataset first), or None when optional and absent."""
    if ctx is not None:
        ctx[0] = key
    if key in f:
        return f[key]
    if key in f.attrs:
        return f.attrs[key]
    if required:
        raise KspaceFileError(path, key, f"missing (a dataset or root attribute is required; file has datasets "
                                         f"{sorted(f.keys())} and attributes {sorted(f.attrs.keys())})")  # fmt: skip
    return None


def _read_array(obj, path: str, key: str) -> np.ndarray:
    try:
        return np.asarray(obj[()]) if isinstance(obj, _h5py().Dataset) else np.asarray(obj)
    except (OSError, RuntimeError, ValueError) as err:  # truncated or corrupt chunks
        raise KspaceFileError(path, key, f"cannot read the data (corrupt or truncated file?): {err}") from err


def _complex_kind(dtype: np.dtype) -> str | None:
    """'c' for a complex dtype, 'compound' for a (real, imag) compound, else None."""
    if dtype.kind == "c":
        return "c"
    if dtype.names and len(dtype.names) == 2 and tuple(n.lower() for n in dtype.names) in _COMPLEX_FIELDS:
        return "compound"
    return None


def _complex(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "c":
        return a.astype(np.complex64, copy=False)
    re_, im_ = a.dtype.names
    return (a[re_].astype(np.float32) + 1j * a[im_].astype(np.float32)).astype(np.complex64)


def _shape_dtype(obj) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return tuple(obj.shape), np.dtype(obj.dtype)
    a = np.asarray(obj)
    return a.shape, a.dtype


def _finite(a: np.ndarray, path: str, key: str) -> None:
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise KspaceFileError(path, key, f"contains NaN or Inf (first at index {bad})")


def _scalar_float(obj, path: str, key: str, positive: bool = True) -> float:
    a = np.asarray(_read_array(obj, path, key))
    if a.size != 1 or a.dtype.kind not in "iuf":
        raise KspaceFileError(path, key, f"expected one number, got {a.dtype} shape {a.shape}")
    v = float(a.reshape(-1)[0])
    if not np.isfinite(v) or (positive and v <= 0):
        raise KspaceFileError(path, key, f"expected a positive finite number, got {v}")
    return v


def read_kspace_h5(
    path: str,
    expected_views: Sequence[str] | None = None,
    expected_shape: Sequence[int] | None = None,
    check_only: bool = False,
    missing_views: str = "fail",
) -> dict[str, Any]:
    """Read and validate a k-space HDF5 file (format in the module docstring).

    Args:
        expected_views: the model's views; the file must hold these, in this order (:func:`check_views`).
        expected_shape: the model's (S, T, H, W) (k-space shape without the coil axis); with ``expected_views``,
            S is checked through the view names.
        check_only: validate metadata and values, return without the arrays (used after writing).
        missing_views: "fail" (default): every expected view must be in the file; "invalid": the file may hold a
            subset of them (the arrays are returned as stored; :class:`LoadKspaceH5d` places them).

    Returns:
        ``{"kspace": complex64 (S, T, H, W) or (C, S, T, H, W), "mask": bool (S, T, H), "sens_maps": complex64
        (C, S, H, W) or None, "views": [str], "affine": float64 (S, 4, 4), "pixel_spacing": float64 (2,),
        "frame_interval_ms": float, "eid": str, "path": str}``; k-space is zero where the mask is 0.

    Raises:
        FileNotFoundError for a missing file; :class:`KspaceFileError` (ValueError) naming the file and key for
        anything else: not HDF5 / empty / truncated, missing key, real or mis-shaped k-space, mask mismatch,
        missing/unknown/out-of-order views, NaN/Inf, wrong affine shape, no sampled line in a frame.
    """
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: k-space HDF5 file does not exist")
    if os.path.getsize(path) == 0:
        raise KspaceFileError(path, "/", "the file is empty (0 bytes); expected an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise KspaceFileError(path, "/", f"not a readable HDF5 file (corrupt or truncated?): {err}") from err
    ctx = ["kspace"]  # the key being checked, for errors h5py raises on a damaged file
    try:
        with f:
            # ---- metadata first: shapes and dtypes, before reading any large array
            kobj = _get(f, path, "kspace", ctx=ctx)
            kshape, kdtype = _shape_dtype(kobj)
            if _complex_kind(kdtype) is None:
                hint = " (real and imaginary parts as a trailing axis are not accepted: store complex64)" if (
                    kshape and kshape[-1] == 2) else ""  # fmt: skip
                msg = f"expected complex64 k-space, got real-valued dtype {kdtype}{hint}"
                raise KspaceFileError(path, "kspace", msg)
            if len(kshape) not in (4, 5) or 0 in kshape:
                raise KspaceFileError(path, "kspace", f"expected shape (S, T, H, W) or (C, S, T, H, W), got {kshape}")
            coils = len(kshape) == 5
            s, t, h, w = kshape[-4:]
            first = 0 if expected_views is None else 1  # with the model's views, S is checked by their names
            if expected_shape is not None and kshape[-4 + first :] != tuple(int(v) for v in expected_shape)[first:]:
                raise KspaceFileError(path, "kspace", f"shape (S, T, H, W) = {tuple(kshape[-4:])} does not match the "
                                                      f"model's grid {tuple(expected_shape)}")  # fmt: skip
            mobj = _get(f, path, "mask", ctx=ctx)
            mshape, mdtype = _shape_dtype(mobj)
            if mshape != (s, t, h):
                raise KspaceFileError(path, "mask", f"expected shape (S, T, H) = {(s, t, h)} to match kspace {kshape}, "
                                                    f"got {mshape}")  # fmt: skip
            if mdtype.kind not in "biuf":
                raise KspaceFileError(path, "mask", f"expected bool or uint8 0/1 values, got dtype {mdtype}")
            sobj = _get(f, path, "sens_maps", required=coils, ctx=ctx)
            if coils:
                sshape, sdtype = _shape_dtype(sobj)
                if _complex_kind(sdtype) is None or sshape != (kshape[0], s, h, w):
                    msg = f"expected complex (C, S, H, W) = {(kshape[0], s, h, w)} for coil k-space {kshape}, got "
                    raise KspaceFileError(path, "sens_maps", msg + f"{sdtype} {sshape}")
            elif sobj is not None:
                raise KspaceFileError(path, "sens_maps", f"given, but kspace {kshape} has no coil axis (C, S, T, H, W)")
            aobj = _get(f, path, "affine", ctx=ctx)
            ashape, _ = _shape_dtype(aobj)
            if ashape != (s, 4, 4):
                raise KspaceFileError(path, "affine", f"expected one 4x4 voxel-to-world matrix per view, (S, 4, 4) = "
                                                      f"{(s, 4, 4)}, got {ashape}")  # fmt: skip
            vobj = _get(f, path, "views", ctx=ctx)
            views = np.asarray(_read_array(vobj, path, "views")).reshape(-1).tolist()
            if len(views) != s:
                raise KspaceFileError(path, "views", f"{len(views)} view names for {s} views (S) in kspace {kshape}")
            views = check_views(views, path, expected_views, missing_views)
            spacing = _read_array(_get(f, path, "pixel_spacing", ctx=ctx), path, "pixel_spacing")
            try:
                spacing = np.asarray(spacing, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise KspaceFileError(path, "pixel_spacing", f"expected 2 numbers (mm), got {spacing!r}") from err
            if spacing.shape != (2,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
                raise KspaceFileError(path, "pixel_spacing", f"expected 2 positive mm values, got {spacing.tolist()}")
            interval = _scalar_float(_get(f, path, "frame_interval_ms", ctx=ctx), path, "frame_interval_ms")
            eobj = _get(f, path, "eid", required=False)
            if eobj is None:
                eid = os.path.basename(path).split(".")[0]
            else:
                e = np.asarray(_read_array(eobj, path, "eid")).reshape(-1)
                if e.size != 1:
                    raise KspaceFileError(path, "eid", f"expected one string, got shape {e.shape}")
                eid = e[0].decode() if isinstance(e[0], bytes) else str(e[0])

            # ---- values
            affine = np.asarray(_read_array(aobj, path, "affine"), dtype=np.float64)
            _finite(affine, path, "affine")
            if np.any(np.abs(np.linalg.det(affine[:, :3, :3])) < 1e-12) or not np.allclose(affine[:, 3], [0, 0, 0, 1]):
                raise KspaceFileError(path, "affine", "each affine must be invertible with last row (0, 0, 0, 1)")
            col = np.sqrt((affine[:, :3, :2] ** 2).sum(1))  # (S, 2) voxel size along H and W per view
            if not np.allclose(col, spacing, rtol=0.01):
                warnings.warn(f"{path}: key 'affine': voxel sizes {col.round(3).tolist()} differ from pixel_spacing "
                              f"{spacing.tolist()}; the affine is used for output geometry", stacklevel=2)  # fmt: skip
            mask = _read_array(mobj, path, "mask")
            if not np.isin(mask, (0, 1)).all():
                raise KspaceFileError(path, "mask", f"values must be 0/1, got {np.unique(mask)[:6].tolist()}")
            mask = mask.astype(bool)
            empty = np.argwhere(~mask.any(-1))
            if empty.size:
                v, fr = empty[0].tolist()
                raise KspaceFileError(path, "mask", f"view {views[v]!r} frame {fr} has no sampled ky line")
            kspace = _complex(_read_array(kobj, path, "kspace"))
            _finite(kspace, path, "kspace")
            sens = None
            if coils:
                sens = _complex(_read_array(sobj, path, "sens_maps"))
                _finite(sens, path, "sens_maps")
                if not (np.abs(sens) ** 2).sum(0).min() > 0:
                    raise KspaceFileError(path, "sens_maps", "some pixel has zero sensitivity in every coil")
            outside = ~mask[..., None]  # (S, T, H, 1), broadcast over coils and W
            if np.any((kspace != 0) & outside):
                warnings.warn(f"{path}: key 'kspace': nonzero values where 'mask' is 0; they are set to zero (only "
                              f"sampled ky lines may reach the model)", stacklevel=2)  # fmt: skip
                kspace = np.where(outside, np.complex64(0), kspace)
    except (OSError, RuntimeError, KeyError) as err:
        raise KspaceFileError(path, ctx[0], f"cannot read (corrupt or truncated file?): {err}") from err
    if check_only:
        return {"views": views, "eid": eid, "path": path}
    return {"kspace": kspace, "mask": mask, "sens_maps": sens, "views": views, "affine": affine,
            "pixel_spacing": spacing, "frame_interval_ms": interval, "eid": eid, "path": path}  # fmt: skip


def combine_coils(kspace: Any, mask: Any, sens_maps: Any, method: str = "cg-sense", n_iter: int = 30,
                  lam: float = 1e-4) -> torch.Tensor:  # fmt: skip
    """Coil k-space (C, S, T, H, W) -> single-coil-equivalent k-space (S, T, H, W) complex64 (see module notes).

    Args:
        kspace: (C, S, T, H, W) coil k-space (values where ``mask`` is 0 are ignored). mask: (S, T, H).
        sens_maps: (C, S, H, W) coil sensitivities.
        method: "adjoint": ``CoilCombine("sense")`` of the zero-filled coil images (one pass; exact only for maps
            constant along H); "cg-sense" (default): the image x minimising Σ_c ||M·fft2c(S_c x) - k_c||² +
            lam·||x||², by ``n_iter`` conjugate-gradient steps per view, started from "adjoint".
    Either way the output is ``mask · fft2c(x)``: only sampled coil data enter, zeros at unsampled lines.
    Written here because MONAI has no multi-coil SENSE solver with per-frame ky-t masks.
    """
    from kmtr_monai.transforms import CoilCombine, fft2c, ifft2c

    if method not in ("adjoint", "cg-sense"):
        raise ValueError(f"method must be 'adjoint' or 'cg-sense', got {method!r}")
    k, m, s = (torch.as_tensor(np.array(_np(v))) for v in (kspace, mask, sens_maps))
    m = m.to(torch.float32)[..., None]  # (S, T, H, 1)
    k = k.to(torch.complex64) * m
    x = CoilCombine("sense")(k, s[:, :, None])  # maps (C, S, 1, H, W) broadcast over frames -> (S, T, H, W)
    if method == "cg-sense":
        for v in range(x.shape[0]):  # one view at a time keeps the coil images small
            sv, mv = s[:, v, None].to(torch.complex64), m[v]  # (C, 1, H, W), (T, H, 1)

            def normal(z, sv=sv, mv=mv):  # A^H A z + lam z
                return (sv.conj() * ifft2c(mv * fft2c(sv * z))).sum(0) + lam * z

            b = (sv.conj() * ifft2c(k[:, v])).sum(0)  # A^H k
            xv = x[v]
            r = b - normal(xv)
            p, rr = r.clone(), torch.vdot(r.flatten(), r.flatten()).real
            for _ in range(int(n_iter)):
                if rr <= 1e-20 * max(float(torch.vdot(b.flatten(), b.flatten()).real), 1e-30):
                    break
                ap = normal(p)
                alpha = rr / torch.vdot(p.flatten(), ap.flatten()).real
                xv = xv + alpha * p
                r = r - alpha * ap
                rr_new = torch.vdot(r.flatten(), r.flatten()).real
                p, rr = r + (rr_new / rr) * p, rr_new
            x[v] = xv
    return (fft2c(x) * m).to(torch.complex64)


def time_average_max(kspace: Any, mask: Any) -> float:
    """Estimate of a subject's image magnitude maximum from undersampled k-space (S, T, H, W) and mask (S, T, H).

    Each ky line is averaged over the frames that sampled it (VISTA samples every line in some frame); the
    maximum magnitude of ``ifft2c`` of that time-averaged k-space, over views, is returned. Measured on 12
    simulated subjects (small preset, VISTA): estimate / true maximum = 1.02 ± 0.03 at R = 4 and 1.06 ± 0.05 at
    R = 8 (the zero-filled maximum gives 0.89 and 0.60).
    """
    from kmtr_monai.transforms import ifft2c

    k, m = torch.as_tensor(np.array(_np(kspace))), torch.as_tensor(np.array(_np(mask))).to(torch.float32)
    avg = (k * m[..., None]).sum(1) / m.sum(1).clamp_min(1)[..., None]  # (S, H, W)
    return float(ifft2c(avg).abs().amax())


class LoadKspaceH5d(MapTransform):
    """Load a k-space HDF5 file named by ``d[keys]`` (a path) for inference.

    Writes ``kspace`` complex64 (S, T, H, W) (coil-combined by :func:`combine_coils` when the file has coils),
    ``mask`` float32 (S, T, H), ``view_valid`` float32 (S,), ``eid`` (str) and ``kspace_meta_dict`` = {"affine"
    float64 (S, 4, 4), "views", "pixel_spacing" (2,), "frame_interval_ms", "filename_or_obj", "n_coils", "scale"}.
    ``expected_views`` / ``expected_shape`` (the model's (S, T, H, W)) are checked by :func:`read_kspace_h5`.

    Missing views (``missing_views``, as for image inputs): with ``expected_views``, S is the model's view count and
    the file's views are placed at their rows. A model view the file lacks is an error naming the file and the view
    under ``"fail"`` (default); under ``"invalid"`` it gets zero k-space, ``view_valid`` 0, a NaN affine and, here,
    an all-zero mask (the inference config then gives it the image path's mask,
    :class:`kmtr_monai.inference.MissingViewMaskd`). A file holding every view reads as it always did.

    Scale: models are trained on k-space of images whose magnitude spans [0, √2] per subject (``RandSmoothPhase``
    default). ``normalize_max`` (e.g. ``math.sqrt(2)``) multiplies the k-space by ``normalize_max /
    time_average_max(kspace, mask)`` so data of any scanner scale match that; None (default) keeps the file's scale
    (for files written on the training scale). The factor applied is ``meta["scale"]``.
    """

    def __init__(self, keys: KeysCollection = "path", expected_views: Sequence[str] | None = None,
                 expected_shape: Sequence[int] | None = None, normalize_max: float | None = None,
                 missing_views: str = "fail", kspace_key: str = "kspace", mask_key: str = "mask",
                 eid_key: str = "eid", meta_key: str = "kspace_meta_dict", valid_key: str = "view_valid",
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.expected_views = None if expected_views is None else [str(v) for v in expected_views]
        self.expected_shape = None if expected_shape is None else tuple(int(v) for v in expected_shape)
        if normalize_max is not None and not normalize_max > 0:
            raise ValueError(f"normalize_max must be > 0 or None, got {normalize_max}")
        self.normalize_max, self.missing_views = normalize_max, missing_views  # checked by check_views
        self.kspace_key, self.mask_key, self.eid_key, self.meta_key = kspace_key, mask_key, eid_key, meta_key
        self.valid_key = valid_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            r = read_kspace_h5(str(d[key]), self.expected_views, self.expected_shape, missing_views=self.missing_views)
            k = torch.from_numpy(r["kspace"])
            n_coils = 1
            if r["sens_maps"] is not None:
                n_coils = k.shape[0]
                k = combine_coils(k, r["mask"], r["sens_maps"])
            scale = 1.0
            if self.normalize_max is not None:
                peak = time_average_max(k, r["mask"])
                if not peak > 0:
                    raise KspaceFileError(r["path"], "kspace", "all sampled values are zero; cannot normalise")
                scale = self.normalize_max / peak
                k = k * scale
            views = self.expected_views or r["views"]
            valid = torch.tensor([v in r["views"] for v in views])  # (S,) the file's views, in model order

            def place(a: torch.Tensor, fill: float) -> torch.Tensor:  # the file's rows at the model's views
                if valid.all():
                    return a
                out = torch.full((len(views), *a.shape[1:]), fill, dtype=a.dtype)
                out[valid] = a
                return out

            d[self.kspace_key] = place(k.to(torch.complex64), 0.0)
            d[self.mask_key] = place(torch.from_numpy(r["mask"].astype(np.float32)), 0.0)
            d[self.valid_key] = valid.to(torch.float32)
            d[self.eid_key] = r["eid"]
            d[self.meta_key] = {"affine": place(torch.from_numpy(r["affine"]), float("nan")), "views": views,
                                "pixel_spacing": torch.from_numpy(r["pixel_spacing"]),
                                "frame_interval_ms": r["frame_interval_ms"], "filename_or_obj": r["path"],
                                "n_coils": n_coils, "scale": scale}  # fmt: skip
        return d
