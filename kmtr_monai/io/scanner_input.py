"""A scanner k-space file (ISMRMRD, fastMRI-style HDF5, CMRxRecon ``.mat`` v7.3) as an inference input: recognised
by its content and converted once into a ``kmtr-kspace`` file on the bundle's model grid, which the HDF5 inference
path (:class:`~kmtr_monai.io.kspace_h5.LoadKspaceH5d`) then reads like any other (``kmtr infer``,
``bundles/common/inference.json`` ``model_input``).

- **Slices are views or a SAX stack** (``slice_views``, :func:`choose_slices`): ``"all"``: the file's slices, in order,
  are the bundle's views (``la_2ch, la_3ch, la_4ch, sax_0..``); ``"sax"``: the file is a SAX stack (slice 0 the
  base, as UK Biobank's Z), its slices are ``sax_0..`` in order, chosen from a deeper stack as image inputs choose
  them (:func:`kmtr_monai.data.cohort.sax_start`: centred), and the LAX views are missing (``missing_views``:
  "invalid" writes a file of the SAX views alone, which the HDF5 path reads with zeros for the LAX views, "fail"
  is an error naming the file and the missing views); ``"auto"`` (default): "all" when the slice count equals the
  bundle's view count, else "sax".
- **Grid**: :func:`~kmtr_monai.io.scanner_model.to_kspace_item` with the bundle's ``n_frames`` and ``crop`` (coil
  compression to ``virtual_coils``, coil maps, CG-SENSE combination, frames subsampled, readout cropped, ky fitted,
  scaled to the training range).
- **Geometry**: ISMRMRD heads give each slice's position and direction vectors, so the outputs carry the scanner's
  affine (:meth:`~kmtr_monai.io.scanner.ScannerKspace.affine_for_grid`: patient LPS → NIfTI RAS). fastMRI-style and
  CMRxRecon files have no slice geometry: the affine is the grid's spacing with an identity orientation (slices
  stacked along z). CMRxRecon files have no pixel spacing either: the preset's ``pixel_mm`` is assumed (a warning).
- **Frame interval**: no reader finds it in these files; ``frame_interval_ms`` (the time between the file's
  frames) gives it, else 1 is written per source frame (outputs' ``pixdim[4]`` then counts source frames; a warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmtr_monai.constants import is_lax
from kmtr_monai.io.kspace_h5 import FORMAT, H5_SUFFIXES, MISSING_VIEWS, write_kspace_h5
from kmtr_monai.io.scanner import ScannerFileError, detect_format, read_scanner_kspace

__all__ = ["SLICE_VIEWS", "choose_slices", "input_format", "write_model_input"]

SLICE_VIEWS = ("auto", "all", "sax")  # what a scanner file's slices are: see the module docstring


def input_format(path: str | os.PathLike) -> str:
    """The format of an inference input file, from its content: ``"kmtr-kspace"`` when the root attribute
    ``format`` says so (checked first), else :func:`~kmtr_monai.io.scanner.detect_format`'s ``"ismrmrd"``,
    ``"fastmri"`` or ``"cmrxrecon"``. A ``.h5``/``.hdf5`` file that is none of these is taken as ``kmtr-kspace``
    (other HDF5 tools may not write the attribute; :func:`~kmtr_monai.io.kspace_h5.read_kspace_h5` then names the
    missing key or the damage). Any other file: :class:`ScannerFileError` naming it and the formats accepted."""
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            tag = f.attrs.get("format")
    except OSError:  # not HDF5, or unreadable: detect_format says which
        tag = None
    if (tag.decode() if isinstance(tag, bytes) else tag) == FORMAT:
        return FORMAT
    try:
        return detect_format(path)
    except ScannerFileError as err:
        if Path(path).suffix in H5_SUFFIXES:
            return FORMAT
        reason = str(err).removeprefix(f"{path}: field {err.field!r}: ")
        raise ScannerFileError(path, err.field, f"{reason} (or a {FORMAT} HDF5 file)") from err


def choose_slices(path: str, n_slices: int, views: Sequence[str], slice_views: str = "auto",
                  missing_views: str = "invalid") -> tuple[list[int], list[str]]:  # fmt: skip
    """The file's slice indices the model reads and their view names (a subset of ``views``, in their order), for
    ``slice_views`` "auto", "all" or "sax" (module docstring). Errors (``ScannerFileError`` naming ``path`` and the
    field ``slices``): under "all", a slice count other than the view count; under "sax", fewer slices than the
    model's SAX views, or ``missing_views="fail"`` (the LAX views are missing)."""
    from kmtr_monai.data.cohort import sax_start

    if slice_views not in SLICE_VIEWS or missing_views not in MISSING_VIEWS:
        raise ValueError(f"slice_views must be one of {list(SLICE_VIEWS)} and missing_views one of "
                         f"{list(MISSING_VIEWS)}, got {slice_views!r} and {missing_views!r}")  # fmt: skip
    views = [str(v) for v in views]
    if slice_views == "all" or (slice_views == "auto" and n_slices == len(views)):
        if n_slices != len(views):
            raise ScannerFileError(path, "slices", f"{n_slices} slice(s), but the model takes {len(views)} views "
                                                   f"{views}: one slice per view, in that order "
                                                   f"(slice_views='all')")  # fmt: skip
        return list(range(n_slices)), views
    sax, lax = [v for v in views if not is_lax(v)], [v for v in views if is_lax(v)]
    if n_slices < len(sax):
        raise ScannerFileError(path, "slices", f"{n_slices} slice(s) taken as a SAX stack, but the model takes "
                                               f"{len(sax)} SAX views {sax}")  # fmt: skip
    if lax and missing_views == "fail":
        raise ScannerFileError(path, "slices", f"{n_slices} slice(s) taken as a SAX stack: the view(s) {lax} are "
                                               f"missing (missing_views='fail'; 'invalid' gives them zeros and no "
                                               f"output)")  # fmt: skip
    start = sax_start(np.zeros(n_slices, dtype=bool), len(sax))  # no labels at inference: the centred range
    return list(range(start, start + len(sax))), sax


def write_model_input(path: str | os.PathLike, work_dir: str | os.PathLike, views: Sequence[str], n_frames: int,
                      crop: int, pixel_mm: float, virtual_coils: int | None = None,
                      frame_interval_ms: float | None = None, slice_views: str = "auto",
                      missing_views: str = "invalid", n_pe: int | None = None) -> str:  # fmt: skip
    """Convert the scanner file ``path`` to ``<work_dir>/<stem>.h5``, a ``kmtr-kspace`` file on the model grid
    (``views``, ``n_frames``, ``n_pe`` × ``crop``: ky fitted to ``n_pe`` lines, None: ``crop``, the readout cropped
    to ``crop``; see the module docstring; bundles pass their ``n_pe``, which ``kspace_geometry="acquisition"``
    makes ``pe_lines``), and return that path. The file is kept
    (it is what the model saw). ``virtual_coils``: SVD coil compression first; ``frame_interval_ms``: the time
    between the file's frames; ``pixel_mm``: the spacing the model was trained at (assumed for files without one);
    ``slice_views``, ``missing_views``: which views the slices are (:func:`choose_slices`)."""
    from kmtr_monai.io.scanner_model import to_kspace_item

    path = os.fspath(path)
    scan = read_scanner_kspace(path)
    slices, views = choose_slices(path, scan.n_slices, views, slice_views, missing_views)
    spacing = None
    if scan.pixel_spacing is None:
        warnings.warn(f"{path}: no pixel spacing in the file; assuming the model's {pixel_mm:g} mm", stacklevel=2)
        spacing = (float(pixel_mm), float(pixel_mm))
    interval = frame_interval_ms if frame_interval_ms is not None else scan.frame_interval_ms
    if interval is None:
        warnings.warn(f"{path}: frame interval unknown (pass frame_interval_ms); outputs count time in source "
                      f"frames", stacklevel=2)  # fmt: skip
        interval = 1.0
    grid = (crop if n_pe is None else int(n_pe), crop)
    item = to_kspace_item(scan, grid=grid, n_frames=int(n_frames), slices=slices, views=views,
                          pixel_spacing=spacing, frame_interval_ms=float(interval),
                          n_virtual=virtual_coils)  # fmt: skip
    if any(abs(v / float(pixel_mm) - 1) > 0.1 for v in item["pixel_spacing"]):
        warnings.warn(f"{path}: the model grid's pixels are {' x '.join(f'{v:.3g}' for v in item['pixel_spacing'])} "
                      f"mm, the model was trained at {pixel_mm:g} mm: the heart appears at another scale",
                      stacklevel=2)  # fmt: skip
    os.makedirs(work_dir, exist_ok=True)
    return write_kspace_h5(os.path.join(os.fspath(work_dir), f"{item['eid']}.h5"), **item)
