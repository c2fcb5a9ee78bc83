"""The on-disk cohort (UK Biobank layout, DESIGN §2): NIfTI reading with clear errors, and the subject loader.

``LoadCohortSubjectd`` turns a datalist item ``{"eid", "phenotypes"?, "diseases"?}`` into the network-ready
``image`` (S, T, H, W) / ``seg`` / ``seg_valid`` stack of the data contract.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from monai.data import CacheDataset, Dataset, MetaTensor
from monai.transforms import Compose, MapTransform, Randomizable, Spacing
from monai.utils import ensure_tuple_rep

from kmtr_monai.constants import (
    DISEASES,
    IMAGE_FILES,
    LAX_VIEWS,
    PHENOTYPES,
    SEG_FILES,
    UKBB_LABEL_MAPS,
    is_lax,
    sax_views,
)
from kmtr_monai.data.layout import MissingFileError, SubjectFileError, frame_indices, read_nifti
from kmtr_monai.data.validate import check_finite, check_geometry, check_labels, check_pair
from kmtr_monai.presets import DATA_PRESETS

def sax_start(lv_at_ed: np.ndarray, n_sax: int, offset: int = 2) -> int:
    """First SAX slice of the ViTa selection from ``lv_at_ed`` (Z,) bool, "LV present at frame 0" per slice.

    Z index 0 is the base (UK Biobank order, base → apex). Start ``offset`` slices apex-wards of the most basal
    slice containing LV, then clamp so that ``n_sax`` consecutive slices fit in the stack; without LV, centre them.
    """
    n_z = lv_at_ed.shape[0]
    hits = np.flatnonzero(lv_at_ed)
    start = int(hits[0]) + offset if hits.size else (n_z - n_sax) // 2
    return int(np.clip(start, 0, n_z - n_sax))


def crop_centred(arr: np.ndarray, centre: Sequence[int], crop: int | Sequence[int], fill: float = 0) -> np.ndarray:
    """Fixed ``crop``×``crop`` window (or ``crop`` = (h, w): h×w) over the last two axes of ``arr`` (..., X, Y),
    starting at (x, y) = ``centre`` − (h // 2, w // 2).

    Parts outside the image are filled with ``fill``. One slicing op for all leading axes (frames, slices).
    Written here because MONAI's SpatialCrop clips at the border instead of padding, so a crop + pad pair would
    have to track the clipped offsets.
    """
    n_x, n_y = arr.shape[-2:]
    h, w = map(int, ensure_tuple_rep(crop, 2))
    x0, y0 = int(centre[0]) - h // 2, int(centre[1]) - w // 2
    out = np.full((*arr.shape[:-2], h, w), fill, dtype=arr.dtype)
    sx0, sx1, sy0, sy1 = max(x0, 0), min(x0 + h, n_x), max(y0, 0), min(y0 + w, n_y)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0] = arr[..., sx0:sx1, sy0:sy1]
    return out


CROP_CENTRES = ("motion", "image", "label")
GEOMETRIES = ("image_crop", "acquisition")  # see LoadCohortSubjectd and kspace_pe_lines


def kspace_pe_lines(kspace_geometry: str, crop: int, pe_lines: int | None) -> int:
    """The phase-encode line count H of the model's k-space (and image) grid under ``kspace_geometry``.

    ``"image_crop"`` (the paper's mode, the default): ``crop`` (a ``crop``×``crop`` image around the heart, its FFT).
    ``"acquisition"``: ``pe_lines`` (the whole phase-encode field of view, ``pe_lines``·pixel_mm mm, about the FOV
    centre; only the readout is cropped to ``crop`` around the heart). Bundles read it as the config key ``n_pe``
    (``bundles/common/train.json``). Raises a one-line ValueError naming the key on bad values.
    """
    if kspace_geometry not in GEOMETRIES:
        raise ValueError(f"kspace_geometry (bundles/common/train.json) must be one of {list(GEOMETRIES)}, "
                         f"got {kspace_geometry!r}")  # fmt: skip
    if kspace_geometry == "image_crop":
        return int(crop)
    ok = isinstance(pe_lines, (int, np.integer)) and not isinstance(pe_lines, bool)
    if not ok or int(pe_lines) < int(crop):
        raise ValueError(f"pe_lines (bundles/common/train.json, default the preset's cohort.matrix) must be an int "
                         f">= crop ({crop}) under kspace_geometry='acquisition' (the phase-encode FOV in pixels "
                         f"of pixel_mm), got {pe_lines!r}")  # fmt: skip
    return int(pe_lines)


def motion_centre(image: np.ndarray, quantile: float = 0.75, sigma: float = 2.0) -> tuple[int, int]:
    """Label-free heart localiser: centroid of the cine's temporal standard deviation; image (X, Y, Z, T) → (x, y).

    The per-pixel SD over frames (summed over slices, Gaussian-smoothed by ``sigma`` pixels) is large where the
    heart beats. Its weighted centroid over the pixels at or above the ``quantile`` of the map is the centre; the
    image centre when nothing moves (a single frame). Needs no labels, so training and inference use it alike.
    """
    n_x, n_y = image.shape[:2]
    if image.shape[3] < 2:
        return n_x // 2, n_y // 2
    sd = ndimage.gaussian_filter(image.std(axis=3, dtype=np.float32).sum(axis=2), sigma)  # no float copy of the cine
    weight = np.where(sd >= np.quantile(sd, quantile), sd, 0.0)
    total = weight.sum()
    if not np.isfinite(total) or total <= 0:
        return n_x // 2, n_y // 2
    cx = float(weight.sum(axis=1) @ np.arange(n_x)) / total
    cy = float(weight.sum(axis=0) @ np.arange(n_y)) / total
    return int(round(cx)), int(round(cy))


PIXEL_TOL = 1e-3  # relative: a file within 0.1 % of the target spacing is used as it is (float32 headers)


def in_plane_spacing(affine: np.ndarray) -> tuple[float, float]:
    """(dx, dy) mm: the lengths of the affine's first two columns (the voxel size along NIfTI X and Y)."""
    a = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))


def needs_resampling(affine: np.ndarray, pixel_mm: float | None, tol: float = PIXEL_TOL) -> bool:
    """True when ``pixel_mm`` is given and either in-plane spacing of ``affine`` differs from it by more than
    ``tol`` (relative)."""
    if pixel_mm is None:
        return False
    return any(abs(s - pixel_mm) > tol * pixel_mm for s in in_plane_spacing(affine))


def resample_in_plane(data: np.ndarray, affine: np.ndarray, pixel_mm: float, mode: str = "bilinear"
                      ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(X, Y, Z, T) volume resampled in-plane to ``pixel_mm`` × ``pixel_mm`` with ``monai.transforms.Spacing``.

    Z (the SAX stack) keeps its spacing, slices and positions; the frames are the channels. The orientation of
    ``affine`` is kept (an oblique plane stays oblique) and voxel (0, 0, z) keeps its world position. ``mode``:
    ``"bilinear"`` for images, ``"nearest"`` for label maps. Returns float32 data (X', Y', Z, T) and its affine
    (4, 4) float64.
    """
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(data, np.float32), 3, 0))),
                     affine=torch.as_tensor(np.asarray(affine, np.float64)))  # fmt: skip
    out = Spacing(pixdim=(pixel_mm, pixel_mm, 0), mode=mode, padding_mode="border", dtype=torch.float32)(img)
    return np.moveaxis(out.numpy(), 0, 3), np.asarray(out.affine, dtype=np.float64)


def remap_labels(seg: np.ndarray, label_map: Mapping[int, int], subject: str, file: str) -> np.ndarray:
    """UK Biobank file labels -> unified labels (``constants.LABELS``) by look-up table; int64, same shape."""
    lut = np.full(max(label_map) + 1, -1, dtype=np.int64)
    lut[0] = 0
    lut[list(label_map)] = list(label_map.values())
    seg = np.rint(seg).astype(np.int64) if not np.issubdtype(seg.dtype, np.integer) else seg.astype(np.int64)
    inside = (seg >= 0) & (seg < lut.size)
    out = np.where(inside, lut[np.where(inside, seg, 0)], -1)
    if (out < 0).any():
        raise SubjectFileError(
            subject,
            file,
            f"subject {subject!r}: {file!r} contains labels {sorted(np.unique(seg[out < 0]).tolist())}; "
            f"expected UK Biobank labels {sorted([0, *label_map])}"
        )
    return out


class LoadCohortSubjectd(MapTransform):
    """Load one subject of a UK Biobank-layout cohort into the data contract (DESIGN §2).

    Input: a datalist item with ``eid`` (optional ``phenotypes`` (12,), ``diseases`` (3,)). Reads
    ``<root>/<eid>/{la_2ch,la_3ch,la_4ch,sa}.nii.gz`` (X, Y, Z, T) and, when ``load_seg``, the ``seg_*`` files.

    Output keys:
        ``image`` float32 (S, T, H, W): views in contract order (la_2ch, la_3ch, la_4ch, sax_0..sax_{n_sax−1}, or
        the subset ``views`` in that order); H = NIfTI X axis, W = NIfTI Y axis; frames subsampled with
        ``frame_indices``; min–max normalised to [0, 1] over the whole stack (zero padding stays 0).
        ``seg`` int64 (S, T, H, W) in unified labels and ``seg_valid`` float32 (S,) (0 for la_3ch) when ``load_seg``.
        ``view_valid`` float32 (S,): 1 when the view's image file exists (0 only under ``missing_views="invalid"``).
        ``crop_centre`` int64 (S, 2), ``source_slice`` int64 (S,) and ``view_affine`` float64 (S, 4, 4) when
        ``return_geometry``: the (x, y) voxel at the crop centre (the (H, W) crop starts at centre − (H // 2,
        W // 2)) of the grid the crop was cut from (the file's own grid, or its in-plane resampling to
        ``pixel_mm``), the source Z index of each view (0 for LAX), and the voxel-to-world matrix of each view's
        (H, W) crop (``kmtr_monai.io.outputs.uncrop_affine`` of that grid); −1 and NaN for a missing view. The affine places a
        prediction back on the source grid (``kmtr_monai.io.outputs.resample_to_source``).
        ``phenotypes`` float32 (12,), ``diseases`` float32 (3,) when present in the item; ``eid`` (str).

    ``eid`` may also be the path of the subject folder (``monai.data.load_decathlon_datalist`` turns ids into paths
    when the folder exists next to the JSON); it is reduced to the folder name, so eid-seeded transforms agree. An
    absolute path to an existing subject folder is read from that folder wherever it is (inference on one subject).

    SAX slices: ``sax_start`` (Z index 0 = base; 2 slices apex-wards of the first slice with LV at frame 0); the
    SAX range is centred in the stack when ``load_seg`` is False or there is no LV label. Crop: ``crop``×``crop``
    around a centre found from the image alone, the same rule with or without labels, so training and inference
    see the same field of view: ``crop_centre="motion"`` (default) the centroid of the cine's temporal SD
    (``motion_centre``: where the heart beats), ``"image"`` the image centre. ``"label"`` (a reference only: it needs
    segmentations, so inference cannot use it) centres on the labelled heart at frame 0, the rule training used
    before. One centre per file (the SAX slices stay aligned). ``RandLoadCohortSubjectd`` adds a random shift for training. ``benchmarks/crop_rule.py``
    measures how much of the labelled heart each rule keeps.

    Geometry: with ``pixel_mm`` (the preset's ``cohort.pixel_mm``; bundles pass it as the config key ``pixel_mm``),
    a file whose in-plane spacing differs from it by more than ``PIXEL_TOL`` (relative) is first resampled in-plane
    to ``pixel_mm`` (``resample_in_plane``: bilinear for images, nearest for segmentations), so that ``crop`` pixels
    cover the field of view the model was trained on; a file already at ``pixel_mm`` (the synthetic cohort) is used
    bit-identically, and ``pixel_mm=None`` never resamples. Any frame count is accepted: ``frame_indices`` picks
    ``n_frames`` of the file's T (repeating frames when T < ``n_frames``).

    Geometry of the k-space (``geometry``, the bundles' ``kspace_geometry``): ``"image_crop"`` (default, the paper's
    mode) cuts the ``crop``×``crop`` window above; H = W = ``crop``. ``"acquisition"`` makes the k-space a scanner
    gives after readout cropping: H (NIfTI X, the phase-encode axis, the mask's line axis) keeps the whole field of
    view, centre-cropped or zero-padded to ``pe_lines`` about the FOV centre (X // 2, NOT the heart: the heart stays
    off centre as on a scanner); only W (NIfTI Y, the readout) is cropped to ``crop`` about the heart's readout
    position (the ``crop_centre`` rule's y, plus the jitter of ``RandLoadCohortSubjectd`` along W only). ``image``
    and ``seg`` are then (S, T, ``pe_lines``, ``crop``), ``crop_centre`` holds the window centre (X // 2, y), and
    ``fft2c(image)`` equals the full-FOV image's ``fft2c`` with the readout cropped in hybrid space (inverse 1-D FFT
    along kx, crop, FFT back), which is exact, so a model trained on it reads scanner k-space (ky fitted to
    ``pe_lines``, readout cropped to ``crop``: ``kmtr_monai.io.scanner_model.to_kspace_item``).

    Missing view files (``missing_views``): ``"fail"`` raises FileNotFoundError naming the file; ``"invalid"``
    gives the view zeros, ``view_valid`` 0 and ``seg_valid`` 0 (a missing segmentation alone: ``seg_valid`` 0). A
    subject with no image file at all always raises. Every other bad file (see ``validate``) raises a ValueError
    naming the subject, the file and the reason; leave such subjects out with ``kmtr datalist --on-bad-subject skip``.
    """

    def __init__(
        self,
        root: str,
        n_sax: int,
        n_frames: int,
        crop: int,
        load_seg: bool = True,
        views: Sequence[str] | None = None,
        eid_key: Hashable = "eid",
        missing_views: str = "fail",
        crop_centre: str = "motion",
        return_geometry: bool = False,
        pixel_mm: float | None = None,
        geometry: str = "image_crop",
        pe_lines: int | None = None,
    ):
        super().__init__(keys=eid_key)
        self.root, self.load_seg = root, load_seg
        self.n_sax, self.n_frames, self.crop = int(n_sax), int(n_frames), int(crop)
        self.eid_key = eid_key
        order = (*LAX_VIEWS, *sax_views(self.n_sax))
        views = tuple(order if views is None else views)
        unknown = [v for v in views if v not in order]
        if unknown or not views:
            raise ValueError(f"views {unknown or views} not in the contract views {order} (n_sax={self.n_sax})")
        if list(views) != sorted(views, key=order.index) or len(set(views)) != len(views):
            raise ValueError(f"views {views} must be unique and in contract order {order}")
        if self.crop < 1 or self.n_frames < 1 or self.n_sax < 0:
            raise ValueError(f"crop, n_frames must be >= 1 and n_sax >= 0, got {crop}, {n_frames}, {n_sax}")
        if missing_views not in ("fail", "invalid"):
            hint = " (`kmtr datalist --missing-views skip` leaves such subjects out)" if missing_views == "skip" else ""
            raise ValueError(f"missing_views must be 'fail' or 'invalid' for the loader, got {missing_views!r}{hint}")
        if crop_centre not in CROP_CENTRES:
            raise ValueError(f"crop_centre must be one of {list(CROP_CENTRES)}, got {crop_centre!r}")
        self.views, self.missing_views, self.crop_centre = views, missing_views, crop_centre
        self.return_geometry = bool(return_geometry)
        if pixel_mm is not None and not (isinstance(pixel_mm, (int, float)) and np.isfinite(pixel_mm) and pixel_mm > 0):
            raise ValueError(f"pixel_mm must be a positive number of mm (the preset's cohort.pixel_mm) or None, "
                             f"got {pixel_mm!r}")  # fmt: skip
        self.pixel_mm = None if pixel_mm is None else float(pixel_mm)
        self.geometry = geometry
        self.out_hw = (kspace_pe_lines(geometry, self.crop, pe_lines), self.crop)  # validates geometry, pe_lines

    # -- file access -------------------------------------------------------------------------------------------
    def _read(self, folder: str, subject: str, files: Mapping[str, str], key: str):
        """(X, Y, Z, T) data and affine of one file, with header, geometry and value checks."""
        path = os.path.join(folder, files[key])
        data, _, affine = read_nifti(path, subject, return_affine=True)
        check_geometry(data.shape, key, subject, files[key], 1, self.n_sax if key == "sa" else 0)
        return data, affine

    def _exists(self, folder: str, file: str) -> bool:
        return os.path.isfile(os.path.join(folder, file))

    def _view_stack(self, folder: str, subject: str, key: str
                    ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int], list[int], np.ndarray, tuple[int, int]]:  # fmt: skip
        """Image and unified seg (None when unavailable) of one file as (n, K, X, Y), n = 1 (LAX) or the SAX views,
        the crop centre (x, y) from the image alone (``crop_centre`` rule, all slices and frames of the file), the
        source Z indices, and the affine (4, 4) and (X, Y) of the grid cropped (resampled to ``pixel_mm`` if needed)."""
        image, affine = self._read(folder, subject, IMAGE_FILES, key)
        check_finite(image, subject, IMAGE_FILES[key])
        seg = None
        want_seg = self.load_seg and key in SEG_FILES
        if want_seg and (self.missing_views == "fail" or self._exists(folder, SEG_FILES[key])):
            seg, seg_affine = self._read(folder, subject, SEG_FILES, key)
            check_pair(image.shape, seg.shape, affine, seg_affine, key, subject)
            seg = check_labels(seg, key, subject)  # the whole file, not only the loaded slices and frames
        if needs_resampling(affine, self.pixel_mm):
            image, grid_affine = resample_in_plane(image, affine, self.pixel_mm, "bilinear")
            if seg is not None:
                seg = np.rint(resample_in_plane(seg, affine, self.pixel_mm, "nearest")[0]).astype(np.int16)
            affine = grid_affine
        centre = (image.shape[0] // 2, image.shape[1] // 2)
        if self.crop_centre == "motion":
            centre = motion_centre(image)
        elif self.crop_centre == "label" and seg is not None and (seg[..., 0] > 0).any():
            xs, ys = np.nonzero((seg[..., 0] > 0).any(axis=2))  # labelled voxels of any slice at frame 0
            centre = (int(round(xs.mean())), int(round(ys.mean())))
        slices = [0] if key != "sa" else self._sax_slices(image, seg)
        grid_x, grid_y = image.shape[:2]
        t = frame_indices(image.shape[3], self.n_frames)
        image = np.asarray(image[:, :, slices][..., t], dtype=np.float32).transpose(2, 3, 0, 1)  # (n, K, X, Y)
        if seg is not None:
            seg = remap_labels(seg[:, :, slices][..., t], UKBB_LABEL_MAPS[key], subject, SEG_FILES[key])
            seg = seg.transpose(2, 3, 0, 1)
        return image, seg, centre, slices, np.asarray(affine, dtype=np.float64), (grid_x, grid_y)

    def _sax_slices(self, image: np.ndarray, seg: np.ndarray | None) -> list[int]:
        """Z indices of the requested sax_i views (``sax_start`` + i); raw UK Biobank labels, LV = 1."""
        n_z = image.shape[2]
        lv = (seg[:, :, :, 0] == 1).any(axis=(0, 1)) if seg is not None else np.zeros(n_z, dtype=bool)
        start = sax_start(lv, self.n_sax)
        return [start + int(v[4:]) for v in self.views if not is_lax(v)]

    def _shift(self) -> tuple[int, int]:
        """Offset added to the crop centre (none here; random in ``RandLoadCohortSubjectd``)."""
        return 0, 0

    # -- transform ---------------------------------------------------------------------------------------------
    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.eid_key not in d:
            raise KeyError(f"datalist item has no {self.eid_key!r} key (keys: {sorted(map(str, d))})")
        given = os.path.normpath(str(d[self.eid_key]))
        subject = os.path.basename(given)
        d[self.eid_key] = subject  # a subject-folder path (load_decathlon_datalist resolves eids) -> the eid
        # an existing folder path is read where it is (inference on one subject folder); an id is read under root
        folder = given if os.path.isabs(given) and os.path.isdir(given) else os.path.join(self.root, subject)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"subject {subject!r}: folder {folder} does not exist")

        files = [v for v in self.views if is_lax(v)] + (["sa"] if any(not is_lax(v) for v in self.views) else [])
        images, segs, valid, present, centres, source_z, view_affines = [], [], [], [], [], [], []
        for key in files:  # one file per iteration; all its slices and frames are cropped in one op
            n_views = 1 if key != "sa" else sum(not is_lax(v) for v in self.views)
            if self.missing_views == "fail" and not self._exists(folder, IMAGE_FILES[key]):
                raise MissingFileError(subject, IMAGE_FILES[key], f"subject {subject!r}: missing file "
                                       f"{IMAGE_FILES[key]!r} (expected {os.path.join(folder, IMAGE_FILES[key])}) "
                                       "under missing_views='fail'; missing_views='invalid' gives a missing view "
                                       "zeros and flags it invalid")  # fmt: skip
            if self.missing_views == "invalid" and not self._exists(folder, IMAGE_FILES[key]):
                shape = (n_views, self.n_frames, *self.out_hw)
                images.append(np.full(shape, np.nan, dtype=np.float32))  # becomes 0 after normalisation
                segs.append(np.zeros(shape, dtype=np.int64))
                valid += [0.0] * n_views
                present += [0.0] * n_views
                centres += [(-1, -1)] * n_views
                source_z += [-1] * n_views
                view_affines += [np.full((4, 4), np.nan)] * n_views
                continue
            image, seg, centre, slices, grid_affine, grid_shape = self._view_stack(folder, subject, key)
            shift = self._shift()
            if self.geometry == "acquisition":  # whole phase-encode FOV about its centre; readout about the heart
                centre = (grid_shape[0] // 2, centre[1] + shift[1])
            else:
                centre = (centre[0] + shift[0], centre[1] + shift[1])
            images.append(crop_centred(image, centre, self.out_hw, fill=np.nan))
            no_seg = np.zeros(images[-1].shape, np.int64)
            segs.append(crop_centred(seg, centre, self.out_hw) if seg is not None else no_seg)
            valid += [float(seg is not None)] * n_views
            present += [1.0] * n_views
            centres += [centre] * n_views
            source_z += list(slices)
            if self.return_geometry:
                from kmtr_monai.io.outputs import uncrop_affine

                view_affines += [uncrop_affine(grid_affine, grid_shape, self.out_hw, centre, z) for z in slices]
        if not any(present):
            names = sorted({IMAGE_FILES[k] for k in files})
            raise MissingFileError(subject, IMAGE_FILES[files[0]],
                                   f"subject {subject!r}: none of the view files {names} exists")  # fmt: skip
        stack = np.concatenate(images, axis=0)  # (S, K, H, W), NaN outside the field of view
        lo, hi = np.nanmin(stack), np.nanmax(stack)
        stack = (stack - lo) / (hi - lo) if hi > lo else np.zeros_like(stack)
        d["image"] = torch.from_numpy(np.nan_to_num(stack, nan=0.0).astype(np.float32))
        if self.load_seg:
            d["seg"] = torch.from_numpy(np.concatenate(segs, axis=0))
            d["seg_valid"] = torch.tensor(valid, dtype=torch.float32)
        d["view_valid"] = torch.tensor(present, dtype=torch.float32)
        if self.return_geometry:
            d["crop_centre"] = torch.tensor(centres, dtype=torch.int64)
            d["source_slice"] = torch.tensor(source_z, dtype=torch.int64)
            d["view_affine"] = torch.as_tensor(np.stack(view_affines))
        for key, names in (("phenotypes", PHENOTYPES), ("diseases", DISEASES)):
            if key in d:
                value = torch.as_tensor(np.asarray(d[key], dtype=np.float32))
                if value.shape != (len(names),):
                    raise ValueError(
                        f"subject {subject!r}: {key!r} has shape {tuple(value.shape)}; expected ({len(names)},)"
                    )
                d[key] = value
        return d


class RandLoadCohortSubjectd(Randomizable, LoadCohortSubjectd):
    """``LoadCohortSubjectd`` whose crop centre is shifted by a random integer in [−crop_jitter, crop_jitter] along
    each in-plane axis, drawn per file (the SAX stack shares one shift): training-time jitter around the same
    label-free image-centred rule used at evaluation and inference. ``crop_jitter=0`` equals the parent exactly.
    Under ``geometry="acquisition"`` only the readout (W) window moves; the phase-encode FOV stays centred.
    """

    def __init__(self, root: str, n_sax: int, n_frames: int, crop: int, crop_jitter: int = 0, **kwargs):
        super().__init__(root, n_sax, n_frames, crop, **kwargs)
        if int(crop_jitter) < 0:
            raise ValueError(f"crop_jitter must be >= 0, got {crop_jitter}")
        self.crop_jitter = int(crop_jitter)

    def randomize(self, data=None) -> None:
        self._offset = self.R.randint(-self.crop_jitter, self.crop_jitter + 1, size=2)

    def _shift(self) -> tuple[int, int]:
        self.randomize()
        return int(self._offset[0]), int(self._offset[1])


def make_dataset(
    datalist_items: Sequence[Mapping],
    root: str,
    preset_or_kwargs: str | Mapping = "tiny",
    transforms: Sequence[Callable] | Callable | None = None,
    cache: bool = False,
) -> Dataset:
    """A ``monai.data.Dataset`` (``CacheDataset`` when ``cache``) applying ``LoadCohortSubjectd`` then ``transforms``.

    ``preset_or_kwargs``: a ``DATA_PRESETS`` name or a dict of ``LoadCohortSubjectd`` keyword arguments; a
    non-zero ``crop_jitter`` selects ``RandLoadCohortSubjectd``.
    """
    if isinstance(preset_or_kwargs, str):
        if preset_or_kwargs not in DATA_PRESETS:
            raise ValueError(f"unknown data preset {preset_or_kwargs!r}; expected one of {sorted(DATA_PRESETS)}")
        kwargs = dict(DATA_PRESETS[preset_or_kwargs])
    elif isinstance(preset_or_kwargs, Mapping):
        kwargs = dict(preset_or_kwargs)
    else:
        raise TypeError(f"preset_or_kwargs must be a preset name or a dict, got {type(preset_or_kwargs).__name__}")
    missing = [i for i, item in enumerate(datalist_items) if "eid" not in item]
    if missing:
        raise ValueError(f"datalist items {missing[:5]} have no 'eid' key")
    if transforms is None:
        extra = []
    elif isinstance(transforms, Compose):  # flattened so CacheDataset caches up to the first random transform
        extra = list(transforms.transforms)
    elif callable(transforms):
        extra = [transforms]
    else:
        extra = list(transforms)
    if kwargs.get("crop_jitter"):
        load = RandLoadCohortSubjectd(root, **kwargs)
    else:
        kwargs.pop("crop_jitter", None)
        load = LoadCohortSubjectd(root, **kwargs)
    pipeline = Compose([load, *extra])
    if cache:
        return CacheDataset(data=list(datalist_items), transform=pipeline, num_workers=0, progress=False)
    return Dataset(data=list(datalist_items), transform=pipeline)
