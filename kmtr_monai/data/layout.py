"""The on-disk cohort layout (UK Biobank convention, DESIGN §2): NIfTI reading with clear errors, subject listing.

Kept free of torch/MONAI imports so file-level tools such as ``kmtr phenotypes`` start instantly.
"""

from __future__ import annotations

import io
import os
import zlib

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib

from kmtr_monai.constants import IMAGE_FILES, SEG_FILES

_TIME_SCALE_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_NIFTI2_HEADER_BYTES = 540


class SubjectFileError(ValueError):
    """A cohort file that cannot be used; ``subject`` and ``file`` (the file name) say which, the message says why."""

    def __init__(self, subject: str, file: str, message: str):
        super().__init__(message)
        self.subject, self.file = subject, file


class MissingFileError(FileNotFoundError):
    """A cohort file that does not exist; ``subject`` and ``file`` as in ``SubjectFileError``."""

    def __init__(self, subject: str, file: str, message: str):
        super().__init__(message)
        self.subject, self.file = subject, file


# Largest volume read (voxels): a paper-size SAX cine is 208·187·14·50 ≈ 2.7e7; 2**30 guards against a corrupt
# header asking for a huge allocation.
MAX_VOXELS = 2**30


def _open_bytes(path: str) -> bytes:
    """The uncompressed bytes of a ``.nii``/``.nii.gz`` file (ISA-L inflates about 2x faster than zlib)."""
    with open(path, "rb") as f:
        raw = f.read()
    return igzip.decompress(raw) if path.endswith(".gz") else raw


def _header_from_bytes(raw: bytes) -> nib.Nifti1Header:
    nifti2 = _NIFTI2_HEADER_BYTES in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    return (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(io.BytesIO(raw[:_NIFTI2_HEADER_BYTES]))


def read_header(path: str) -> nib.Nifti1Header:
    """The NIfTI header of ``path`` without inflating the voxel data (only the first 540 bytes are decompressed)."""
    with (igzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        raw = f.read(_NIFTI2_HEADER_BYTES)
    return _header_from_bytes(raw)


def check_header(header: nib.Nifti1Header, subject: str, name: str, allow_3d: bool = True,
                 max_voxels: int = MAX_VOXELS) -> tuple[int, ...]:
    """Shape (X, Y, Z[, T]) of a header after checking dimensions, data type and size (before any allocation).

    Raises ValueError naming the subject and file for a non-numeric or complex data type, a shape that is not
    3-D/4-D, an empty volume or more than ``max_voxels`` voxels.
    """
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.names is not None:
        raise SubjectFileError(
            subject, name, f"subject {subject!r}: {name!r} has data type {dtype}; expected real integers or floats"
        )
    if len(shape) == 5 and shape[3] == 1:  # (X, Y, Z, 1, C) vector images are not cine volumes
        raise SubjectFileError(
            subject, name, f"subject {subject!r}: {name!r} has shape {shape}; expected a 4-D (X, Y, Z, T) volume"
        )
    if not (len(shape) == 4 or (allow_3d and len(shape) == 3)):
        raise SubjectFileError(
            subject,
            name,
            f"subject {subject!r}: {name!r} has shape {shape}; expected a 4-D (X, Y, Z, T) volume"
            + (" or a 3-D (X, Y, Z) single frame" if allow_3d else "")
        )
    if 0 in shape:
        raise SubjectFileError(subject, name, f"subject {subject!r}: {name!r} is empty (shape {shape})")
    if int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise SubjectFileError(
            subject, name, f"subject {subject!r}: {name!r} has shape {shape}: more than {max_voxels} voxels"
        )
    return shape


def read_nifti(
    path: str, subject: str, allow_3d: bool = True, return_affine: bool = False, max_voxels: int = MAX_VOXELS
):
    """Read one cohort NIfTI as an (X, Y, Z, T) array plus its pixdim ``(dx, dy, dz mm, dt s)`` (and the 4×4
    affine when ``return_affine``).

    A 3-D file (X, Y, Z) is read as a single frame (T = 1) when ``allow_3d``. ``dt`` is the frame interval in
    seconds from pixdim[4]: the NIfTI time unit is honoured when the header sets one, otherwise milliseconds are
    assumed (the UK Biobank convention); NaN when the file has no time axis or pixdim[4] is 0. The header (shape,
    data type, size: ``check_header``) is checked before the voxel data are allocated.

    Raises FileNotFoundError for a missing file and ValueError (naming the subject and file) for an unreadable,
    truncated, empty, wrongly typed or wrongly shaped one.
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise MissingFileError(subject, name, f"subject {subject!r}: missing file {name!r} (expected {path})")
    if os.path.getsize(path) == 0:
        raise SubjectFileError(subject, name, f"subject {subject!r}: {name!r} is empty (0 bytes)")
    try:
        header = read_header(path)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, OSError, zlib.error,
            isal_zlib.error, ValueError) as err:  # fmt: skip
        raise SubjectFileError(subject, name, f"subject {subject!r}: cannot read NIfTI {name!r} ({path}): {err}") \
            from err
    check_header(header, subject, name, allow_3d, max_voxels)
    try:
        raw = _open_bytes(path)
        header = _header_from_bytes(raw)
        need = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if len(raw) < need:
            raise ValueError(f"truncated: {len(raw)} bytes, the header needs {need}")
        img = (nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image).from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, isal_zlib.error, ValueError) as err:
        raise SubjectFileError(subject, name, f"subject {subject!r}: cannot read NIfTI {name!r} ({path}): {err}") \
            from err
    if data.ndim == 3 and allow_3d:
        data = data[..., None]
    zooms = img.header.get_zooms()
    dx, dy, dz = (float(z) for z in zooms[:3])
    dt = float(zooms[3]) if len(zooms) > 3 else 0.0
    t_unit = img.header.get_xyzt_units()[1]
    dt = dt * _TIME_SCALE_TO_S.get(t_unit, 1e-3) if dt > 0 else float("nan")
    pixdim = np.array([dx, dy, dz, dt], dtype=np.float64)
    return (data, pixdim, np.asarray(img.affine, dtype=np.float64)) if return_affine else (data, pixdim)


def _natural_key(name: str):
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def list_subjects(root: str) -> list[str]:
    """Subject ids (``eid``) of a cohort: the sub-folders of ``root`` holding at least one cohort NIfTI.

    Sorted numerically when the ids are digits. Raises FileNotFoundError when ``root`` is missing or holds none.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"cohort root {root!r} does not exist or is not a folder")
    names = set(IMAGE_FILES.values()) | set(SEG_FILES.values())
    eids = [
        e.name
        for e in os.scandir(root)
        if e.is_dir() and not e.name.startswith(".") and any(os.path.isfile(os.path.join(e.path, n)) for n in names)
    ]
    if not eids:
        raise FileNotFoundError(f"cohort root {root!r} has no subject folders <root>/<eid>/ with NIfTI files")
    return sorted(eids, key=_natural_key)


def frame_indices(n_total: int, n_frames: int) -> np.ndarray:
    """Temporal subsampling ``round(i·(T−1)/(K−1))``, i = 0..K−1 (K = 1 → frame 0); (K,) int64."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if n_frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.arange(n_frames) * (n_total - 1) / (n_frames - 1)).astype(np.int64)
