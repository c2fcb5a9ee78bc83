"""Inference inputs and outputs for the Stage III bundles (``configs/inference.json``, ``kmtr infer``).

Inputs: a UK Biobank-layout subject folder (undersampled k-space is simulated at the bundle's R from the ``eid``
seed), a cohort folder of such subjects, an HDF5 k-space file on the model's grid (:mod:`kmtr_monai.io.kspace_h5`),
or a scanner k-space file (ISMRMRD, fastMRI-style, CMRxRecon), which :func:`model_input` first converts into such an
HDF5 file under the output folder (:mod:`kmtr_monai.io.scanner_input`).
Either way every item ends with ``view_affine`` (S, 4, 4), the voxel-to-world matrix of each view's (H, W) model grid,
and ``frame_interval_ms``. Segmentations of a subject folder are written on the grid of its input files
(``seg_sa.nii.gz`` ... with the input's shape and affine, :func:`kmtr_monai.io.outputs.write_source_niftis`); other
outputs are per-view NIfTI files on the model grid that overlay the source in a viewer.

A subject folder may lack view files (a SAX-only subject), an HDF5 file may hold a subset of the views, and a scanner
file may be a SAX stack alone: the inference config's ``missing_views`` (``kmtr infer --missing_views``) is
``"invalid"`` by default (the view enters the network as zeros, as in training under that policy, with the same
sampling mask whatever the input format, and gets no output file) or ``"fail"`` (stop, naming the file and view).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from kmtr_monai.constants import IMAGE_FILES, is_lax
from kmtr_monai.distributed import is_main_process
from kmtr_monai.io.kspace_h5 import H5_SUFFIXES


def _is_subject(folder: Path) -> bool:
    return any((folder / f).is_file() for f in IMAGE_FILES.values())


def model_input(path: str | os.PathLike, work_dir: str | os.PathLike, views: Sequence[str], n_frames: int, crop: int,
                pixel_mm: float, virtual_coils: int | None = None, frame_interval_ms: float | None = None,
                slice_views: str = "auto", missing_views: str = "invalid", n_pe: int | None = None) -> str:  # fmt: skip
    """The input the inference reads (absolute): a scanner k-space file converted to a ``kmtr-kspace`` file under
    ``work_dir`` on the model grid (:func:`kmtr_monai.io.scanner_input.write_model_input`, whose ``slice_views`` say
    whether its slices are the views or a SAX stack; ``n_pe`` ky lines, None: ``crop``); anything else (a folder, a
    ``kmtr-kspace`` file, a path that does not exist) as it is. A file of no known format is an error naming it."""
    from kmtr_monai.io.kspace_h5 import FORMAT
    from kmtr_monai.io.scanner_input import input_format, write_model_input

    p = Path(path).resolve()
    if not p.is_file() or input_format(p) == FORMAT:
        return str(p)
    return write_model_input(p, Path(work_dir).resolve(), views, n_frames, crop, pixel_mm, virtual_coils=virtual_coils,
                             frame_interval_ms=frame_interval_ms, slice_views=slice_views,
                             missing_views=missing_views, n_pe=n_pe)  # fmt: skip


def input_items(path: str | os.PathLike) -> list[dict]:
    """Datalist items of an inference input (:func:`model_input`): ``[{"path": file}]`` for a k-space HDF5 file,
    ``[{"subject_dir": folder}]`` (absolute) for a subject folder or for each subject folder of a cohort folder."""
    p = Path(path).resolve()
    if p.is_file():
        return [{"path": str(p)}]
    if p.is_dir() and _is_subject(p):
        return [{"subject_dir": str(p)}]
    if p.is_dir():
        subjects = sorted(c for c in p.iterdir() if c.is_dir() and _is_subject(c))
        if subjects:
            return [{"subject_dir": str(s)} for s in subjects]
    raise FileNotFoundError(f"inference input {p}: expected an HDF5 k-space file ({', '.join(H5_SUFFIXES)}), a "
                            f"scanner k-space file (ISMRMRD, fastMRI-style HDF5, CMRxRecon .mat v7.3), a subject "
                            f"folder holding {sorted(IMAGE_FILES.values())}, or a folder of such subject "
                            "folders")  # fmt: skip


def is_h5(path: str | os.PathLike) -> bool:
    """Whether the inference input :func:`model_input` gives is a k-space HDF5 file (it is a file)."""
    return Path(path).is_file()


class ViewGeometryd(MapTransform):
    """After ``LoadCohortSubjectd(return_geometry=True)``: ``view_affine`` (S, 4, 4) and ``frame_interval_ms``.

    Each view's affine is that of its source file moved to the crop window and slice the loader took
    (:func:`kmtr_monai.io.outputs.uncrop_affine` with the loader's ``crop_centre`` and ``source_slice``); the loader's
    own ``view_affine`` is kept when present (it knows the grid after in-plane resampling). The frame interval is the
    source interval (ms unless the header sets a time unit) times the loader's mean frame step,
    (T_source − 1) / (n_frames − 1). Reads only the headers of the files in ``d["subject_dir"]``; views whose file is
    missing (``source_slice`` −1) are skipped.
    """

    def __init__(self, views: Sequence[str], crop: int, n_frames: int, keys: KeysCollection = "subject_dir") -> None:
        super().__init__(keys)
        self.views, self.crop, self.n_frames = list(views), int(crop), int(n_frames)

    def __call__(self, data: Mapping) -> dict:
        import nibabel as nib

        from kmtr_monai.io.outputs import uncrop_affine

        d = dict(data)
        for key in ("crop_centre", "source_slice"):
            if key not in d:
                raise KeyError(f"ViewGeometryd needs {key!r}: load the subject with "
                               "LoadCohortSubjectd(return_geometry=True)")  # fmt: skip
        affines, intervals = [], []
        for i, view in enumerate(self.views):
            if int(d["source_slice"][i]) < 0:  # the view's file was not given (missing_views="invalid")
                affines.append(np.full((4, 4), np.nan))
                continue
            file = os.path.join(str(d[self.first_key(d)]), IMAGE_FILES[view if is_lax(view) else "sa"])
            img = nib.load(file)
            shape, zooms = img.shape, img.header.get_zooms()
            to_ms = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}.get(img.header.get_xyzt_units()[1], 1.0)
            affines.append(uncrop_affine(img.affine, shape[:2], self.crop, d["crop_centre"][i].tolist(),
                                         int(d["source_slice"][i])))  # fmt: skip
            if len(shape) > 3 and self.n_frames > 1 and len(zooms) > 3:
                intervals.append(float(zooms[3]) * to_ms * (shape[3] - 1) / (self.n_frames - 1))
        if "view_affine" not in d:
            d["view_affine"] = torch.as_tensor(np.stack(affines))
        d["frame_interval_ms"] = float(np.mean(intervals)) if intervals else float("nan")
        return d


class KspaceGeometryd(MapTransform):
    """For HDF5 inputs (``LoadKspaceH5d``): ``view_affine`` and ``frame_interval_ms`` from the file's metadata."""

    def __init__(self, keys: KeysCollection = "kspace_meta_dict") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d["view_affine"] = torch.as_tensor(d[key]["affine"])
            d["frame_interval_ms"] = float(d[key]["frame_interval_ms"])
        return d


class MissingViewMaskd(MapTransform):
    """For HDF5 inputs (``LoadKspaceH5d(missing_views="invalid")``): a view missing from the file enters the network
    as a view file missing from a subject folder does. That view's image is zeros, and ``kspace_sim#validate``
    (``simulate``: eid-seeded smooth phase, FFT, eid-seeded sampling mask) makes it zero k-space with the eid's
    sampling mask. Here ``simulate`` runs on a zero image (S, T, H, W) with the item's ``eid``, and its mask replaces
    the rows of ``d[keys]`` (S, T, H) whose ``view_valid`` is 0 (the file's views keep the file's mask; the k-space
    of a missing view is zero already)."""

    def __init__(self, simulate: Sequence, keys: KeysCollection = "mask", valid_key: str = "view_valid",
                 kspace_key: str = "kspace", eid_key: str = "eid", image_key: str = "image") -> None:  # fmt: skip
        super().__init__(keys)
        self.simulate = Compose(simulate)
        self.valid_key, self.kspace_key, self.eid_key, self.image_key = valid_key, kspace_key, eid_key, image_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        missing = torch.as_tensor(d[self.valid_key]) == 0
        if not missing.any():
            return d
        zeros = torch.zeros(torch.as_tensor(d[self.kspace_key]).shape, dtype=torch.float32)  # (S, T, H, W)
        sim = self.simulate({self.image_key: zeros, self.eid_key: d[self.eid_key]})
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key]).clone()
            mask[missing] = torch.as_tensor(sim[key], dtype=mask.dtype)[missing]
            d[key] = mask
        return d


class SaveViewNiftis:
    """Evaluator handler: one NIfTI per subject and view from dense predictions (B, C, S, T, H, W).

    ``kind="seg"``: the argmax label map; ``kind="recon"``: channel 0 (magnitude). Written under
    ``save_dir/<eid>/``: with ``source_grid`` and a subject-folder input (``subject_dir`` in the batch), segmentations
    on the grid of the input files (:func:`kmtr_monai.io.outputs.write_source_niftis`); otherwise one file per view
    on the model grid (:func:`kmtr_monai.io.outputs.write_view_niftis`, the batch's ``view_affine`` and
    ``frame_interval_ms``). Views with ``view_valid`` 0 (file not given) get no file.
    """

    def __init__(self, save_dir: str, views: Sequence[str], kind: str, source_grid: bool = False) -> None:
        if kind not in ("seg", "recon"):
            raise ValueError(f"kind must be 'seg' or 'recon', got {kind!r}")
        if source_grid and kind != "seg":
            raise ValueError("source_grid=True is for segmentations (kind='seg') only")
        self.save_dir, self.views, self.kind = str(save_dir), list(views), kind
        self.source_grid = bool(source_grid)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from kmtr_monai.io.outputs import write_view_niftis

        batch, pred = engine.state.batch, engine.state.output["pred"].detach().cpu()
        volumes = pred.argmax(1) if self.kind == "seg" else pred[:, 0]
        for key in ("eid", "view_affine", "frame_interval_ms"):
            if key not in batch:
                raise KeyError(f"SaveViewNiftis needs {key!r} in the batch; got {sorted(batch)}")
        if not is_main_process():
            return
        from kmtr_monai.io.outputs import write_source_niftis

        for i, eid in enumerate(batch["eid"]):
            affine, interval = batch["view_affine"][i].numpy(), float(batch["frame_interval_ms"][i])
            valid = batch["view_valid"][i].numpy() if "view_valid" in batch else np.ones(len(self.views))
            if self.source_grid and "subject_dir" in batch:
                write_source_niftis(self.save_dir, str(eid), self.views, volumes[i].numpy(), affine,
                                    str(batch["subject_dir"][i]), view_valid=valid)  # fmt: skip
                continue
            keep = [j for j in range(len(self.views)) if valid[j] > 0]
            write_view_niftis(self.save_dir, str(eid), [self.views[j] for j in keep], volumes[i].numpy()[keep],
                              affine[keep], interval, kind=self.kind)  # fmt: skip
