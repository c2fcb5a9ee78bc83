"""Scanner k-space files: ISMRMRD, fastMRI-style HDF5 and CMRxRecon ``.mat`` v7.3, read by one function into one
structure (:class:`ScannerKspace`). DESIGN §16 has the format facts; :mod:`kmtr_monai.io.scanner_prep` prepares the
arrays and :mod:`kmtr_monai.io.scanner_model` turns the result into the model's coil-combined input and into a
``kmtr-kspace`` item on the model's grid.

``read_scanner_kspace(path)`` detects the format from the file's content:

=================  ========================================================================================
format             what is read (everything else is dropped, and counted in ``dropped``)
=================  ========================================================================================
``ismrmrd``        group ``dataset``: ``xml`` header (encoding 0: ``encodedSpace`` / ``reconSpace`` matrix
                   and FOV, ``encodingLimits``, ``trajectory`` must be ``cartesian``;
                   ``acquisitionSystemInformation.receiverChannels``) and ``data`` acquisitions. Flags
                   (bit numbers from 1): noise (19) → noise samples; parallel calibration (20) →
                   calibration only; calibration and imaging (21) → both; reverse (22) → readout flipped;
                   navigation, phase correction, dummy scan, feedback, surface-coil correction and
                   phase-stabilisation lines → dropped. Placement: ``idx.kspace_encode_step_1`` (relative
                   to ``encodingLimits.kspace_encoding_step_1.center``), ``idx.slice``, ``idx.phase``
                   (frame), ``center_sample`` (readout); repeated lines (``idx.average``) are averaged.
                   Geometry: ``position``, ``read_dir``, ``phase_dir``, ``slice_dir`` of each slice's first
                   imaging line (patient LPS, mm).
``fastmri``        ``kspace`` complex (slices, coils, kx, ky) as fastMRI stores it (readout first, phase
                   encoding last; 3-D: single coil; 5-D: (slices, frames, coils, kx, ky)), ``ismrmrd_header``
                   (matrix, FOV, oversampling), optional ``mask`` (ky,), (frames, ky) or (slices, frames, ky)
                   (else: the lines holding nonzero data), optional attribute ``num_low_frequency`` (the
                   calibration width). No noise scan, no slice positions.
``cmrxrecon``      MATLAB v7.3 (HDF5 with a MATLAB user block): the first of ``kspace``, ``kspace_full``,
                   ``kspace_sub*``, ``kspace*`` (a compound of ``real``/``imag``, h5py order (time, slice,
                   coil, ky, kx); 4-D: single coil); the mask from ``mask_path`` (a ``mask*`` key, (ky, kx),
                   (time, ky, kx) or (ky,)) or the nonzero lines. No header: FOV, spacing, oversampling
                   (``readout_oversampling``) and frame interval are unknown unless given.
=================  ========================================================================================

Result (:class:`ScannerKspace`): ``kspace`` complex64 (C, S, T, H, W) with H = ky (phase encoding) and W = kx
(readout), DESIGN §2 centred convention (the k-space centre at index H // 2, W // 2), zeros at unsampled lines;
``mask`` bool (S, T, H) the **imaging** lines (calibration-only lines are not in it); ``calib`` / ``calib_mask``
the calibration lines (ISMRMRD flags 20 and 21; fastMRI/CMRxRecon: the centre block sampled in every frame, which
are imaging lines too) or None; ``noise`` (C, N) noise samples or None; header geometry (matrix, FOV, spacing, slice
positions and direction vectors, frame count and interval, encoding limits, oversampling).

By default the reader pre-whitens the coils with the noise scans (Cholesky factor of the noise covariance) and
removes readout oversampling (``encodedSpace.matrixSize.x / reconSpace.matrixSize.x``, exact in hybrid space).

Every bad input is a :class:`ScannerFileError` (a :class:`~kmtr_monai.io.kspace_h5.KspaceFileError`, a ValueError)
naming the file and the field, in one line: unknown format, non-Cartesian trajectories, 3-D encoding, several
encodings, repetitions/contrasts/sets, missing header fields, inconsistent line counts, lengths or coil counts, line
indices beyond the encoded matrix, a frame with no line, a mask that does not fit, NaN/Inf.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmtr_monai.io.kspace_h5 import KspaceFileError, _complex, _complex_kind
from kmtr_monai.io.scanner_prep import (
    calibration_block,
    noise_covariance,
    prewhiten,
    remove_readout_oversampling,
    whitening_matrix,
)

__all__ = ["ScannerFileError", "ScannerKspace", "detect_format", "read_scanner_kspace", "FORMATS"]

FORMATS = ("ismrmrd", "fastmri", "cmrxrecon")
_MAT_KEYS = ("kspace", "kspace_full")
# ISMRMRD flag bit numbers (from 1) of lines that are neither imaging nor calibration nor noise
_DROPPED = {"navigation": 23, "phase correction": 24, "dummy scan": 27, "hp feedback": 26, "rt feedback": 28,
            "surface coil correction": 29, "phase stabilisation": 31, "phase stabilisation reference": 30}  # fmt: skip


class ScannerFileError(KspaceFileError):
    """A bad scanner k-space file: ``"<file>: field '<field>': <reason>"`` (``field`` "/" for the file itself)."""

    def __init__(self, path: str, field: str, message: str) -> None:
        self.path, self.key, self.field = str(path), field, field
        ValueError.__init__(self, f"{path}: field {field!r}: {message}")


@dataclass
class ScannerKspace:
    """One scanner file, read. Arrays: ``kspace`` complex64 (C, S, T, H, W), ``mask`` bool (S, T, H), ``calib``
    complex64 (C, S, T, H, W) or None, ``calib_mask`` bool (S, T, H) or None, ``noise`` complex64 (C, N) or None.

    Geometry: ``matrix`` (H, W) of the arrays; ``encoded_matrix`` / ``recon_matrix`` (ky, kx) from the header;
    ``fov_mm`` (ky, kx, slice) of the encoded space (None when unknown); ``pixel_spacing`` (dy, dx) mm;
    ``slice_thickness_mm``; ``position``, ``read_dir``, ``phase_dir``, ``slice_dir`` (S, 3) patient LPS or None;
    ``frame_interval_ms`` or None; ``encoding_limits`` {name: (min, max, centre)}; ``oversampling`` the readout
    oversampling factor of the file and ``oversampling_removed``; ``whitened``; ``noise_dwell_ratio``;
    ``dropped`` {reason: acquisitions}; ``n_noise_acquisitions``.
    """

    path: str
    format: str
    kspace: np.ndarray
    mask: np.ndarray
    calib: np.ndarray | None = None
    calib_mask: np.ndarray | None = None
    calib_only_lines: int = 0
    noise: np.ndarray | None = None
    n_noise_acquisitions: int = 0
    noise_dwell_ratio: float = 1.0
    whitened: bool = False
    oversampling: float = 1.0
    oversampling_removed: bool = False
    encoded_matrix: tuple[int, int] | None = None
    recon_matrix: tuple[int, int] | None = None
    fov_mm: tuple[float, float, float] | None = None
    slice_thickness_mm: float | None = None
    position: np.ndarray | None = None
    read_dir: np.ndarray | None = None
    phase_dir: np.ndarray | None = None
    slice_dir: np.ndarray | None = None
    frame_interval_ms: float | None = None
    encoding_limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    receiver_channels: int | None = None

    # ---- shapes
    @property
    def n_coils(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def n_frames(self) -> int:
        return int(self.kspace.shape[2])

    @property
    def matrix(self) -> tuple[int, int]:
        return int(self.kspace.shape[3]), int(self.kspace.shape[4])

    @property
    def eid(self) -> str:
        return os.path.basename(self.path).split(".")[0]

    @property
    def acceleration(self) -> np.ndarray:
        """R per slice and frame (S, T): ky lines of the matrix / sampled imaging lines."""
        return self.matrix[0] / np.maximum(self.mask.sum(-1), 1)

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """(dy, dx) mm of the arrays' grid: encoded FOV / encoded matrix (readout oversampling changes both)."""
        if self.fov_mm is None or self.encoded_matrix is None:
            return None
        return self.fov_mm[0] / self.encoded_matrix[0], self.fov_mm[1] / self.encoded_matrix[1]

    # ---- processing
    def prewhitened(self) -> ScannerKspace:
        """Coils whitened with the noise scans (unchanged without noise samples or when already whitened)."""
        if self.whitened or self.noise is None:
            return self
        try:
            white = whitening_matrix(noise_covariance(self.noise, self.noise_dwell_ratio))
        except ValueError as err:
            raise ScannerFileError(self.path, "noise", str(err)) from err
        return dataclasses.replace(
            self, kspace=prewhiten(self.kspace, white), noise=prewhiten(self.noise, white),
            calib=None if self.calib is None else prewhiten(self.calib, white), whitened=True)  # fmt: skip

    def without_oversampling(self) -> ScannerKspace:
        """Readout oversampling removed (exact; unchanged when the factor is 1 or it was removed)."""
        if self.oversampling_removed or self.oversampling == 1:
            return self
        try:
            k = remove_readout_oversampling(self.kspace, self.oversampling)
        except ValueError as err:
            raise ScannerFileError(self.path, "encodedSpace.matrixSize.x", str(err)) from err
        calib = None if self.calib is None else remove_readout_oversampling(self.calib, self.oversampling)
        return dataclasses.replace(self, kspace=k, calib=calib, oversampling_removed=True)

    def preprocessed(self) -> ScannerKspace:
        """:meth:`prewhitened` then :meth:`without_oversampling`."""
        return self.prewhitened().without_oversampling()

    def affine_for_grid(self, grid: Sequence[int], spacing: Sequence[float], readout_shift_px: int = 0) -> np.ndarray:
        """NIfTI voxel → world (RAS, mm) affines (S, 4, 4) of an (H, W) = (ky, kx) grid with ``spacing`` (dy, dx)
        centred on each slice's position (moved ``readout_shift_px`` pixels along the readout).

        Convention: ISMRMRD ``position`` (the centre of the slice's FOV) and ``read_dir`` / ``phase_dir`` /
        ``slice_dir`` are in patient LPS (x to the patient's left, y posterior, z superior; mm); NIfTI world is RAS,
        so RAS = diag(−1, −1, 1) · LPS. Voxel (i, j, k) — i along H (phase encoding), j along W (readout), k across
        the slice — sits at LPS ``position + (i − H//2)·dy·phase_dir + (j − W//2 + readout_shift_px)·dx·read_dir +
        k·dz·slice_dir`` (dz the slice thickness): the centred FFT (DESIGN §2) puts the FOV centre at index n//2.
        The direction signs are taken as written; acquisition-consistent geometry is not checked here. Without
        slice geometry in the file (fastMRI-style, CMRxRecon): diag(dy, dx, dz), an identity orientation with slice
        s at z = s·dz."""
        h, w = (int(v) for v in grid)
        dy, dx = (float(v) for v in spacing)
        dz = float(self.slice_thickness_mm or 1.0)
        out = np.zeros((self.n_slices, 4, 4))
        for s in range(self.n_slices):
            if self.position is None:
                out[s] = np.diag([dy, dx, dz, 1.0])
                out[s, 2, 3] = s * dz
                continue
            cols = np.stack([self.phase_dir[s] * dy, self.read_dir[s] * dx, self.slice_dir[s] * dz], 1)
            centre = self.position[s] + self.read_dir[s] * dx * readout_shift_px
            a = np.eye(4)
            a[:3, :3] = cols
            a[:3, 3] = centre - cols[:, 0] * (h // 2) - cols[:, 1] * (w // 2)
            out[s] = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a  # LPS -> RAS
        return out

    def summary(self, n_virtual: int | None = None) -> str:
        """The ``kmtr kspace-info`` text: what was read."""
        from kmtr_monai.io.scanner_prep import svd_coil_compression

        h, w = self.matrix
        lines = [f"file: {self.path}", f"format: {self.format}"]
        coils = f"coils: {self.n_coils}" + (" (pre-whitened)" if self.whitened else "")
        if n_virtual is not None and self.n_coils > 1:
            data, m = (self.calib, self.calib_mask) if self.calib is not None else (self.kspace, self.mask)
            comp = svd_coil_compression(data, m, n_virtual=min(int(n_virtual), self.n_coils))
            on = "calibration" if self.calib is not None else "sampled"
            coils += (f"; {comp.n_virtual} virtual coils keep {100 * comp.energy.min():.2f}% of the {on} lines' "
                      f"energy (SVD, worst slice)")  # fmt: skip
        lines.append(coils)
        enc = "x".join(map(str, self.encoded_matrix)) if self.encoded_matrix else "unknown"
        rec = "x".join(map(str, self.recon_matrix)) if self.recon_matrix else "unknown"
        lines.append(f"matrix (ky x kx): {h} x {w} (encoded {enc}, recon {rec})")
        fov = "unknown" if self.fov_mm is None else " x ".join(f"{v:g}" for v in self.fov_mm)
        lines.append(f"FOV (mm, phase x readout x slice, encoded): {fov}")
        sp = self.pixel_spacing
        th = "unknown" if self.slice_thickness_mm is None else f"{self.slice_thickness_mm:g}"
        lines.append(f"pixel spacing (mm, ky x kx): {'unknown' if sp is None else f'{sp[0]:g} x {sp[1]:g}'}; "
                     f"slice thickness (mm): {th}")  # fmt: skip
        fi = "unknown" if self.frame_interval_ms is None else f"{self.frame_interval_ms:g} ms"
        lines.append(f"slices: {self.n_slices}; frames: {self.n_frames} (interval {fi})")
        lines.append("slice positions (mm, LPS): " + ("unknown" if self.position is None else
                     "; ".join(" ".join(f"{v:.1f}" for v in p) for p in self.position)))  # fmt: skip
        r = self.acceleration
        for s in range(self.n_slices):
            lines.append(f"R per frame, slice {s}: " + " ".join(f"{v:.2f}" for v in r[s]))
        if self.calib_mask is None:
            lines.append("calibration lines: none (coil maps from the time-averaged centre)")
        else:
            per = self.calib_mask.any(1).sum(-1)
            lines.append(f"calibration lines: {int(per.max())} per slice ({self.calib_only_lines} calibration-only "
                         f"acquisitions, not in the imaging mask)")  # fmt: skip
        os_ = f"{self.oversampling:g}x" + (" (removed)" if self.oversampling_removed and self.oversampling != 1 else "")
        lines.append(f"readout oversampling: {os_}")
        if self.noise is None:
            lines.append("noise scans: none (no pre-whitening)")
        else:
            lines.append(f"noise scans: {self.n_noise_acquisitions} acquisitions, {self.noise.shape[1]} samples per "
                         f"coil" + ("; coils pre-whitened" if self.whitened else ""))  # fmt: skip
        if self.encoding_limits:
            lims = ", ".join(f"{k} {v[0]}..{v[1]} (centre {v[2]})" for k, v in self.encoding_limits.items())
            lines.append(f"encoding limits: {lims}")
        dropped = {k: v for k, v in self.dropped.items() if v}
        lines.append("dropped acquisitions: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- detection
def _h5py():
    import h5py

    return h5py


def detect_format(path: str) -> str:
    """``"ismrmrd"``, ``"fastmri"`` or ``"cmrxrecon"`` from the file's content; ScannerFileError otherwise."""
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: scanner k-space file does not exist")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB") and not h5py.is_hdf5(path):
        raise ScannerFileError(path, "/", "a MATLAB .mat file older than v7.3 (not HDF5); save it with "
                                          "save(..., '-v7.3')")  # fmt: skip
    if not h5py.is_hdf5(path):
        raise ScannerFileError(path, "/", "not an HDF5 file; expected ISMRMRD, fastMRI-style HDF5 or CMRxRecon "
                                          ".mat v7.3")  # fmt: skip
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ScannerFileError(path, "/", f"cannot open the HDF5 file (corrupt or truncated?): {err}") from err
    with f:
        if head.startswith(b"MATLAB"):
            return "cmrxrecon"
        groups = [k for k in f if isinstance(f[k], h5py.Group) and "xml" in f[k] and "data" in f[k]]
        if groups:
            return "ismrmrd"
        if "kspace" in f and "ismrmrd_header" in f:
            return "fastmri"
        if f.attrs.get("format") == "kmtr-kspace":
            raise ScannerFileError(path, "format", "a kmtr-kspace file on the model grid: read it with "
                                                   "kmtr_monai.io.read_kspace_h5 (kmtr infer takes it directly)")
        if "kspace" in f:
            raise ScannerFileError(path, "ismrmrd_header", "a 'kspace' dataset without the fastMRI "
                                                           "'ismrmrd_header' (matrix, FOV, oversampling)")
        raise ScannerFileError(path, "/", f"no ISMRMRD group (xml + data), fastMRI 'kspace' + 'ismrmrd_header' or "
                                          f"MATLAB k-space; the file has {sorted(f.keys())}")  # fmt: skip


def read_scanner_kspace(path: str, prewhiten: bool = True, remove_oversampling: bool = True,
                        mask_path: str | None = None, readout_oversampling: float | None = None) -> ScannerKspace:
    """Read an ISMRMRD, fastMRI-style or CMRxRecon file (format detected; see the module docstring).

    Args:
        prewhiten: whiten the coils with the file's noise scans (when it has any).
        remove_oversampling: remove readout oversampling (exact).
        mask_path: CMRxRecon mask ``.mat`` (an error for the other formats, which carry their mask).
        readout_oversampling: the factor when the file has no header (CMRxRecon; default 1); for files with a
            header it must agree with it.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    if mask_path is not None and fmt != "cmrxrecon":
        raise ScannerFileError(path, "mask_path", f"a separate mask file is for CMRxRecon; this is {fmt}")
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if fmt == "ismrmrd":
                scan = _read_ismrmrd(path, f)
            elif fmt == "fastmri":
                scan = _read_fastmri(path, f)
            else:
                scan = _read_cmrxrecon(path, f, mask_path, readout_oversampling)
    except (OSError, RuntimeError, KeyError) as err:
        raise ScannerFileError(path, "/", f"cannot read (corrupt or truncated file?): {err}") from err
    if readout_oversampling is not None and fmt != "cmrxrecon" and abs(readout_oversampling - scan.oversampling) > 1e-6:
        raise ScannerFileError(path, "encodedSpace.matrixSize.x", f"the header says {scan.oversampling:g}x readout "
                                                                  f"oversampling, not {readout_oversampling:g}x")
    if prewhiten:
        scan = scan.prewhitened()
    if remove_oversampling:
        scan = scan.without_oversampling()
    return scan


# --------------------------------------------------------------------------------------------------- helpers
def _attr(path: str, obj: Any, dotted: str, base: str = "") -> Any:
    """``obj.a.b.c`` for ``dotted`` = "a.b.c"; ScannerFileError naming the field when a part is missing."""
    cur = obj
    for part in dotted.split("."):
        cur = getattr(cur, part, None)
        if cur is None:
            raise ScannerFileError(path, f"{base}{dotted}", "missing from the header")
    return cur


def _parse_header(path: str, xml: Any, field_name: str):
    from ismrmrd.xsd import CreateFromDocument

    if isinstance(xml, np.ndarray):
        xml = xml.reshape(-1)[0]
    if isinstance(xml, str):
        xml = xml.encode()
    try:
        return CreateFromDocument(bytes(xml))
    except Exception as err:  # noqa: BLE001 - xsdata raises several parser error types
        msg = " ".join(str(err).split())
        missing = re.search(r"(\w+?)(?:Type)?\.__init__\(\) missing .*?'(\w+)'", msg)
        if missing:  # xsdata names the element whose required child is absent
            raise ScannerFileError(path, f"{field_name}:{missing.group(1)}.{missing.group(2)}",
                                   "missing from the header") from err
        raise ScannerFileError(path, field_name, f"not a valid ISMRMRD XML header: {msg}") from err


def _header_geometry(path: str, hdr: Any, prefix: str) -> dict[str, Any]:
    """Encoding 0 of a parsed header → matrix, FOV, oversampling, limits, channels (errors name the field)."""
    if not getattr(hdr, "encoding", None):
        raise ScannerFileError(path, f"{prefix}encoding", "missing from the header")
    enc = hdr.encoding[0]
    traj = getattr(getattr(enc, "trajectory", None), "value", getattr(enc, "trajectory", None))
    if traj is None:
        raise ScannerFileError(path, f"{prefix}encoding.trajectory", "missing from the header")
    if str(traj).lower() != "cartesian":
        raise ScannerFileError(path, f"{prefix}encoding.trajectory", f"{traj!s} trajectories are not supported "
                                                                     f"(Cartesian only)")  # fmt: skip
    p = f"{prefix}encoding."
    ex, ey, ez = (int(_attr(path, enc, f"encodedSpace.matrixSize.{a}", p)) for a in "xyz")
    rx, ry = (int(_attr(path, enc, f"reconSpace.matrixSize.{a}", p)) for a in "xy")
    fx, fy, fz = (float(_attr(path, enc, f"encodedSpace.fieldOfView_mm.{a}", p)) for a in "xyz")
    if ez > 1:
        raise ScannerFileError(path, f"{p}encodedSpace.matrixSize.z", f"3-D encoding ({ez} partitions) is not "
                                                                      f"supported (2-D cine only)")  # fmt: skip
    if min(ex, ey, rx, ry) < 1 or min(fx, fy) <= 0:
        raise ScannerFileError(path, f"{p}encodedSpace", f"matrix {ex}x{ey} / recon {rx}x{ry} / FOV {fx}x{fy} mm "
                                                         f"must be positive")  # fmt: skip
    if ex < rx:
        raise ScannerFileError(path, f"{p}encodedSpace.matrixSize.x", f"encoded readout {ex} < recon {rx}")
    limits = {}
    lim = getattr(enc, "encodingLimits", None)
    for name in ("kspace_encoding_step_1", "slice", "phase", "average", "repetition", "contrast", "set"):
        v = getattr(lim, name, None) if lim is not None else None
        if v is not None and v.maximum is not None:
            limits[name] = (int(v.minimum or 0), int(v.maximum), int(v.center or 0))
    sysinfo = getattr(hdr, "acquisitionSystemInformation", None)
    channels = getattr(sysinfo, "receiverChannels", None) if sysinfo is not None else None
    return {"encoded": (ey, ex), "recon": (ry, rx), "fov": (fy, fx, fz), "oversampling": ex / rx, "limits": limits,
            "channels": None if channels is None else int(channels), "n_encodings": len(hdr.encoding)}  # fmt: skip


def _finish(path: str, key: str, k: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """k (C, S, T, H, W) complex64 and mask (S, T, H) (None: the lines with nonzero data): finite, every frame
    sampled, zeros at unsampled lines (a warning when there were values)."""
    if not np.isfinite(k).all():
        first = np.argwhere(~np.isfinite(k))[0].tolist()
        raise ScannerFileError(path, key, f"contains NaN or Inf (first at index {first})")
    if mask is None:
        mask = (k != 0).any(axis=(0, 4))
    outside = ~mask[None, ..., None]
    if np.any((k != 0) & outside):
        warnings.warn(f"{path}: field {key!r}: nonzero values at lines the mask leaves out; they are set to zero",
                      stacklevel=3)  # fmt: skip
        k = np.where(outside, np.complex64(0), k)
    empty = np.argwhere(~mask.any(-1))
    if empty.size:
        s, t = empty[0].tolist()
        raise ScannerFileError(path, key, f"slice {s} frame {t} has no sampled ky line")
    return k, mask


def _centre_calib(k: np.ndarray, mask: np.ndarray, width: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Calibration = the centre block sampled in every frame (optionally at most ``width`` lines): lines that are
    imaging lines too."""
    block = calibration_block(mask, frames_all=True)  # (S, H)
    if width:
        h = mask.shape[-1]
        keep = np.zeros(h, bool)
        keep[h // 2 - width // 2 : h // 2 - width // 2 + width] = True
        block &= keep
    if block.sum(-1).min() < 2:
        return None, None
    cm = mask & block[:, None, :]
    return np.where(cm[None, ..., None], k, np.complex64(0)), cm


def _read_complex(path: str, ds: Any, key: str) -> np.ndarray:
    if _complex_kind(np.dtype(ds.dtype)) is None:
        raise ScannerFileError(path, key, f"expected complex k-space (complex or a real/imag compound), got dtype "
                                          f"{ds.dtype}")  # fmt: skip
    try:
        return _complex(np.asarray(ds[()]))
    except (OSError, RuntimeError, ValueError) as err:
        raise ScannerFileError(path, key, f"cannot read the data (corrupt or truncated file?): {err}") from err


# --------------------------------------------------------------------------------------------------- ISMRMRD
def _read_ismrmrd(path: str, f: Any) -> ScannerKspace:
    import h5py

    group = "dataset" if "dataset" in f else next(k for k in f if isinstance(f[k], h5py.Group) and "xml" in f[k])
    g = f[group]
    hdr = _parse_header(path, g["xml"][()], f"{group}/xml")
    geo = _header_geometry(path, hdr, "")
    acq = g["data"][()]
    if acq.size == 0:
        raise ScannerFileError(path, f"{group}/data", "no acquisitions")
    head = acq["head"]
    flags = head["flags"].astype(np.uint64)

    def flag(bit: int) -> np.ndarray:
        return ((flags >> np.uint64(bit - 1)) & np.uint64(1)).astype(bool)

    noise, cal, cal_img, rev = flag(19), flag(20), flag(21), flag(22)
    drop = np.zeros_like(noise)
    dropped = {}
    for name, bit in _DROPPED.items():
        b = flag(bit) & ~noise
        dropped[name] = int(b.sum())
        drop |= b
    imaging = ~noise & ~cal & ~drop
    calib = (cal | cal_img) & ~noise & ~drop
    used = imaging | calib
    if not imaging.any():
        raise ScannerFileError(path, f"{group}/data", "no imaging acquisitions (only noise/calibration/navigator)")
    idx = head["idx"]
    first = np.flatnonzero(used)

    def bad(mask_: np.ndarray) -> int:
        return int(np.flatnonzero(mask_)[0])

    if (head["trajectory_dimensions"][used] > 0).any():
        i = first[bad(head["trajectory_dimensions"][used] > 0)]
        raise ScannerFileError(path, "trajectory_dimensions", f"acquisition {i} carries a trajectory (non-Cartesian "
                                                              f"data are not supported)")  # fmt: skip
    if (head["encoding_space_ref"][used] != 0).any():
        raise ScannerFileError(path, "encoding_space_ref", f"acquisitions of {geo['n_encodings']} encodings; only "
                                                           f"encoding 0 is supported")  # fmt: skip
    if (idx["kspace_encode_step_2"][used] != 0).any():
        raise ScannerFileError(path, "idx.kspace_encode_step_2", "nonzero: 3-D encoding is not supported")
    for name in ("repetition", "contrast", "set"):
        vals = np.unique(idx[name][imaging])
        if vals.size > 1:
            raise ScannerFileError(path, f"idx.{name}", f"{vals.size} values {vals[:6].tolist()}: one {name} per "
                                                        f"file is supported; split the file first")  # fmt: skip
    for name in ("active_channels", "number_of_samples", "center_sample"):
        vals = np.unique(head[name][used])
        if vals.size > 1:
            raise ScannerFileError(path, name, f"inconsistent across imaging/calibration lines: {vals[:6].tolist()}")
    n_c, n_samp, c_samp = (int(head[n][first[0]]) for n in ("active_channels", "number_of_samples", "center_sample"))
    if geo["channels"] is not None and geo["channels"] != n_c:
        raise ScannerFileError(path, "acquisitionSystemInformation.receiverChannels",
                               f"{geo['channels']} in the header, {n_c} active channels in the data")
    h, w = geo["encoded"]
    lim = geo["limits"]
    centre1 = lim["kspace_encoding_step_1"][2] if "kspace_encoding_step_1" in lim else h // 2
    rows = idx["kspace_encode_step_1"].astype(np.int64) - centre1 + h // 2
    if ((rows < 0) | (rows >= h))[used].any():
        i = first[bad(((rows < 0) | (rows >= h))[used])]
        raise ScannerFileError(path, "idx.kspace_encode_step_1", f"line {int(idx['kspace_encode_step_1'][i])} of "
                                                                 f"acquisition {i} is outside encodedSpace.matrixSize.y"
                                                                 f" = {h} (centre {centre1})")  # fmt: skip
    off = w // 2 - c_samp
    if off < 0 or off + n_samp > w:
        raise ScannerFileError(path, "center_sample", f"{n_samp} samples with centre {c_samp} do not fit the encoded "
                                                      f"readout of {w} (encodedSpace.matrixSize.x)")  # fmt: skip
    slc, phs = idx["slice"].astype(np.int64), idx["phase"].astype(np.int64)
    n_s = int(slc[used].max()) + 1
    n_t = int(phs[used].max()) + 1
    for name, n, key in (("slice", n_s, "slice"), ("phase", n_t, "phase")):
        if name in lim and n > lim[name][1] + 1:
            raise ScannerFileError(path, f"idx.{key}", f"index {n - 1} beyond encodingLimits.{name}.maximum = "
                                                       f"{lim[name][1]}")  # fmt: skip
        if name in lim:
            n = lim[name][1] + 1
        if key == "slice":
            n_s = n
        else:
            n_t = n

    def data_of(i: int) -> np.ndarray:
        d = np.asarray(acq["data"][i], dtype=np.float32)
        c, n = int(head["active_channels"][i]), int(head["number_of_samples"][i])
        if d.size != 2 * c * n:
            raise ScannerFileError(path, "data", f"acquisition {i} holds {d.size // 2} complex samples, the head "
                                                 f"says {c} channels x {n} samples")  # fmt: skip
        x = d.view(np.complex64).reshape(c, n)
        return x[:, ::-1] if rev[i] else x

    def grid(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = np.zeros((n_c, n_s, n_t, h, w), np.complex64)
        cnt = np.zeros((n_s, n_t, h), np.int32)
        for i in np.flatnonzero(sel):
            s, t, r = int(slc[i]), int(phs[i]), int(rows[i])
            k[:, s, t, r, off : off + n_samp] += data_of(i)
            cnt[s, t, r] += 1
        k /= np.maximum(cnt, 1)[None, ..., None]  # averages (idx.average) and repeats
        return k, cnt > 0

    k, mask = grid(imaging)
    k, mask = _finish(path, "data", k, mask)
    ck, cmask = (None, None)
    if calib.any():
        ck, cmask = grid(calib)
    noise_data, dwell = None, 1.0
    if noise.any():
        chans = np.unique(head["active_channels"][noise])
        if chans.size > 1 or int(chans[0]) != n_c:
            raise ScannerFileError(path, "active_channels", f"noise scans have {chans.tolist()} channels, imaging "
                                                            f"lines {n_c}")  # fmt: skip
        noise_data = np.concatenate([data_of(i) for i in np.flatnonzero(noise)], 1)
        t_noise = float(np.median(head["sample_time_us"][noise]))
        t_img = float(np.median(head["sample_time_us"][imaging]))
        dwell = t_noise / t_img if t_noise > 0 and t_img > 0 else 1.0
    # geometry of each slice from its first imaging line
    pos, rd, pd, sd = (np.zeros((n_s, 3)) for _ in range(4))
    have = True
    for s in range(n_s):
        sel = np.flatnonzero(imaging & (slc == s))
        i = int(sel[0])
        pos[s], rd[s], pd[s], sd[s] = (head[n][i] for n in ("position", "read_dir", "phase_dir", "slice_dir"))
        have &= all(np.linalg.norm(v[s]) > 0.5 for v in (rd, pd, sd))
    fy, fx, fz = geo["fov"]
    return ScannerKspace(
        path=path, format="ismrmrd", kspace=k, mask=mask, calib=ck, calib_mask=cmask,
        calib_only_lines=int((cal & ~cal_img & ~noise & ~drop).sum()), noise=noise_data,
        n_noise_acquisitions=int(noise.sum()), noise_dwell_ratio=dwell, oversampling=geo["oversampling"],
        encoded_matrix=geo["encoded"], recon_matrix=geo["recon"], fov_mm=(fy, fx, fz), slice_thickness_mm=fz,
        position=pos if have else None, read_dir=rd if have else None, phase_dir=pd if have else None,
        slice_dir=sd if have else None, encoding_limits=lim, dropped=dropped, receiver_channels=geo["channels"],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- fastMRI
def _read_fastmri(path: str, f: Any) -> ScannerKspace:
    hdr = _parse_header(path, f["ismrmrd_header"][()], "ismrmrd_header")
    geo = _header_geometry(path, hdr, "ismrmrd_header:")
    ds = f["kspace"]
    shape = tuple(ds.shape)
    if len(shape) not in (3, 4, 5) or 0 in shape:
        raise ScannerFileError(path, "kspace", f"expected (slices, coils, kx, ky), (slices, kx, ky) or (slices, "
                                               f"frames, coils, kx, ky), got shape {shape}")  # fmt: skip
    h, w = geo["encoded"]
    if shape[-2:] != (w, h):
        raise ScannerFileError(path, "kspace", f"last axes (kx, ky) = {shape[-2:]} do not match the header's "
                                               f"encodedSpace.matrixSize (x, y) = {(w, h)}")  # fmt: skip
    raw = _read_complex(path, ds, "kspace")
    if raw.ndim == 3:
        k = raw.transpose(0, 2, 1)[None, :, None]  # (1, S, 1, ky, kx)
    elif raw.ndim == 4:
        k = raw.transpose(1, 0, 3, 2)[:, :, None]  # (C, S, 1, ky, kx)
    else:
        k = raw.transpose(2, 0, 1, 4, 3)  # (C, S, T, ky, kx)
    k = np.ascontiguousarray(k)
    n_c, n_s, n_t = k.shape[:3]
    if geo["channels"] is not None and geo["channels"] != n_c:
        raise ScannerFileError(path, "ismrmrd_header:acquisitionSystemInformation.receiverChannels",
                               f"{geo['channels']} in the header, {n_c} coils in 'kspace' {shape}")
    mask = None
    if "mask" in f:
        m = np.asarray(f["mask"][()])
        if m.ndim not in (1, 2, 3) or m.shape[-1] != h or not np.isin(m, (0, 1)).all():
            raise ScannerFileError(path, "mask", f"expected 0/1 values over the {h} ky lines, (ky,), (frames, ky) or "
                                                 f"(slices, frames, ky); got shape {m.shape}")  # fmt: skip
        try:
            mask = np.broadcast_to(m.astype(bool), (n_s, n_t, h)).copy()
        except ValueError as err:
            raise ScannerFileError(path, "mask", f"shape {m.shape} does not fit (slices, frames, ky) = "
                                                 f"{(n_s, n_t, h)}") from err  # fmt: skip
    k, mask = _finish(path, "kspace", k, mask)
    nlf = f.attrs.get("num_low_frequency")
    ck, cmask = _centre_calib(k, mask, int(np.asarray(nlf).reshape(-1)[0]) if nlf is not None else None)
    fy, fx, fz = geo["fov"]
    return ScannerKspace(path=path, format="fastmri", kspace=k, mask=mask, calib=ck, calib_mask=cmask,
                         oversampling=geo["oversampling"], encoded_matrix=geo["encoded"], recon_matrix=geo["recon"],
                         fov_mm=(fy, fx, fz), slice_thickness_mm=fz, encoding_limits=geo["limits"],
                         receiver_channels=geo["channels"])  # fmt: skip


# ------------------------------------------------------------------------------------------------- CMRxRecon
def _mat_key(path: str, f: Any, prefix: str) -> str:
    keys = [k for k in f if not k.startswith("#")]
    for k in (*(_MAT_KEYS if prefix == "kspace" else ()), *sorted(k for k in keys if k.startswith(prefix))):
        if k in f:
            return k
    raise ScannerFileError(path, prefix, f"no {prefix}* variable in the .mat file (it has {sorted(keys)})")


def _read_cmrxrecon(path: str, f: Any, mask_path: str | None, oversampling: float | None) -> ScannerKspace:
    key = _mat_key(path, f, "kspace")
    raw = _read_complex(path, f[key], key)
    if raw.ndim == 5:
        k = raw.transpose(2, 1, 0, 3, 4)  # (T, S, C, ky, kx) -> (C, S, T, ky, kx)
    elif raw.ndim == 4:
        k = raw.transpose(1, 0, 2, 3)[None]  # (T, S, ky, kx) single coil
    else:
        raise ScannerFileError(path, key, f"expected (time, slice, coil, ky, kx) or (time, slice, ky, kx) as h5py "
                                          f"sees it, got shape {raw.shape}")  # fmt: skip
    k = np.ascontiguousarray(k)
    _, n_s, n_t, h, w = k.shape
    mask = None
    if mask_path is not None:
        import h5py

        if not os.path.isfile(mask_path):
            raise FileNotFoundError(f"{mask_path}: CMRxRecon mask file does not exist")
        if not h5py.is_hdf5(mask_path):
            raise ScannerFileError(mask_path, "/", "not a MATLAB v7.3 (HDF5) .mat file")
        with h5py.File(mask_path, "r") as mf:
            mkey = _mat_key(mask_path, mf, "mask")
            m = np.asarray(mf[mkey][()])
        if m.ndim in (2, 3) and m.shape[-1] == w and m.shape[-2] == h:
            if not (m == m[..., :1]).all():
                raise ScannerFileError(mask_path, mkey, "varies along kx: not a Cartesian line mask")
            m = m[..., 0]
        if m.shape[-1] != h or m.ndim > 2 or (m.ndim == 2 and m.shape[0] != n_t) or not np.isin(m, (0, 1)).all():
            raise ScannerFileError(mask_path, mkey, f"expected 0/1 (ky, kx), (time, ky, kx) or (ky,) with ky = {h}, "
                                                    f"time = {n_t}; got shape {m.shape}")  # fmt: skip
        mask = np.broadcast_to(m.astype(bool), (n_s, n_t, h)).copy()
    k, mask = _finish(path, key, k, mask)
    ck, cmask = _centre_calib(k, mask, None)
    os_ = 1.0 if oversampling is None else float(oversampling)
    return ScannerKspace(path=path, format="cmrxrecon", kspace=k, mask=mask, calib=ck, calib_mask=cmask,
                         oversampling=os_, encoded_matrix=(h, w), recon_matrix=(h, int(round(w / os_))))
