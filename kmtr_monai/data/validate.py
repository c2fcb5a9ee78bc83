"""Checks of one cohort subject and the bad-subject policy (no torch import).

A *problem* is one fault of one subject: ``Problem(eid, file, reason)``. The faults checked by ``check_subject``:
a missing, empty, truncated or corrupt NIfTI; a wrongly shaped (not 4-D, LAX with Z != 1, no frames, too few SAX
slices) or wrongly typed (complex, RGB, non-numeric) volume; NaN or Inf voxels; image and segmentation with
different shapes or affines; labels outside the UK Biobank label map. ``kmtr datalist`` adds a missing row in
``phenotypes.csv`` / ``diseases.csv``.

Policy ``on_bad_subject``: ``"fail"`` stops with the first problem (all are listed in ``bad_subjects.csv``);
``"skip"`` leaves the subject out, logs it and lists it in ``bad_subjects.csv`` (columns ``eid, file, reason``)
next to the run's output. Policy ``missing_views`` for a view file that does not exist: ``"fail"`` (a bad-subject
problem), ``"invalid"`` (the subject is kept and the loader flags the view invalid: zeros, ``view_valid`` 0,
``seg_valid`` 0) or ``"skip"`` (the subject is left out and listed, whatever ``on_bad_subject`` says).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kmtr_monai.constants import IMAGE_FILES, SEG_FILES, UKBB_LABEL_MAPS
from kmtr_monai.data.layout import MissingFileError, SubjectFileError, read_nifti

ON_BAD_SUBJECT = ("skip", "fail")
MISSING_VIEWS = ("fail", "invalid", "skip")
BAD_SUBJECTS_CSV = "bad_subjects.csv"
AFFINE_TOL_MM = 1e-2  # NIfTI stores the sform in float32: 1e-5 relative at 100 mm; 0.01 mm is far below a voxel

log = logging.getLogger("kmtr_monai.data")


@dataclass(frozen=True)
class Problem:
    """One fault of one subject: ``file`` is the file (or CSV) name, ``""`` when no single file is at fault."""

    eid: str
    file: str
    reason: str
    missing: bool = False  # a file that does not exist (handled by ``missing_views`` for view files)

    def __str__(self) -> str:
        prefix = f"subject {self.eid!r}: "
        return self.reason if self.reason.startswith(prefix) else prefix + self.reason


class BadSubjectError(ValueError):
    """Raised under ``on_bad_subject="fail"``; ``problems`` lists all faults found; the message names the first."""

    def __init__(self, problems: Sequence[Problem], hint: str = ""):
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        super().__init__(f"{self.problems[0]}{more}{hint}")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else ValueError naming the option."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def problem_from_error(eid: str, err: BaseException) -> Problem:
    """A ``Problem`` from an exception raised while reading ``eid`` (file taken from ``SubjectFileError``)."""
    return Problem(eid, getattr(err, "file", ""), str(err), missing=isinstance(err, MissingFileError))


# ---- checks of arrays already read (shared with the loader and the phenotype code) -------------------------
def check_finite(data: np.ndarray, subject: str, file: str) -> None:
    """SubjectFileError when a float volume has NaN or Inf voxels."""
    if np.issubdtype(data.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if n_nan or n_inf:
            raise SubjectFileError(subject, file, f"subject {subject!r}: {file!r} contains NaN or Inf voxels "
                                                  f"({n_nan} NaN, {n_inf} Inf)")  # fmt: skip


def check_labels(seg: np.ndarray, view: str, subject: str) -> np.ndarray:
    """``seg`` as an integer array after checking its labels against ``UKBB_LABEL_MAPS[view]``: its minimum and
    maximum, and a histogram pass only when some value between them is not a label."""
    file = SEG_FILES[view]
    if np.issubdtype(seg.dtype, np.floating):
        check_finite(seg, subject, file)
        seg = np.rint(seg).astype(np.int16)
    allowed = np.zeros(max(UKBB_LABEL_MAPS[view]) + 1, dtype=bool)
    allowed[0] = True
    allowed[list(UKBB_LABEL_MAPS[view])] = True
    lo, hi = int(seg.min()), int(seg.max())
    if 0 <= lo and hi < allowed.size and allowed[lo:hi + 1].all():  # every value in [lo, hi] is a label: no histogram
        return seg
    if lo < 0 or hi >= allowed.size or not allowed[np.flatnonzero(np.bincount(seg.ravel(order="K")))].all():
        bad = [int(v) for v in np.unique(seg) if v < 0 or v >= allowed.size or not allowed[v]]
        expected = sorted([0, *UKBB_LABEL_MAPS[view]])
        raise SubjectFileError(
            subject, file, f"subject {subject!r}: {file!r} contains labels {bad}; expected UK Biobank labels {expected}"
        )
    return seg


def check_pair(image_shape, seg_shape, image_affine, seg_affine, view: str, subject: str) -> None:
    """SubjectFileError when the segmentation of ``view`` differs from its image in shape or affine."""
    image_file, seg_file = IMAGE_FILES[view], SEG_FILES[view]
    if tuple(seg_shape) != tuple(image_shape):
        raise SubjectFileError(subject, seg_file, f"subject {subject!r}: {seg_file!r} shape {tuple(seg_shape)} != "
                                                  f"{image_file!r} shape {tuple(image_shape)}")  # fmt: skip
    if image_affine is not None and seg_affine is not None:
        diff = float(np.abs(np.asarray(image_affine) - np.asarray(seg_affine)).max())
        if diff > AFFINE_TOL_MM:
            raise SubjectFileError(
                subject,
                seg_file,
                f"subject {subject!r}: {seg_file!r} affine differs from {image_file!r} affine by {diff:.3g} mm "
                f"(tolerance {AFFINE_TOL_MM} mm); the segmentation does not overlay the image",
            )


def check_geometry(shape, view: str, subject: str, file: str, n_frames: int = 1, n_sax: int = 0) -> None:
    """SubjectFileError when an (X, Y, Z, T) ``shape`` does not fit: LAX Z = 1, T >= 1, SAX Z >= n_sax.

    Any frame count is accepted whatever ``n_frames`` is (kept for callers): the loader picks ``n_frames`` frames
    with ``frame_indices``, repeating frames when T < n_frames.
    """
    if view != "sa" and shape[2] != 1:
        raise SubjectFileError(subject, file, f"subject {subject!r}: {file!r} has shape {tuple(shape)}; "
                                              f"expected one slice (Z=1)")  # fmt: skip
    if shape[3] < 1:
        raise SubjectFileError(subject, file, f"subject {subject!r}: {file!r} has no frames (T=0); "
                                              "expected at least one")  # fmt: skip
    if view == "sa" and shape[2] < n_sax:
        raise SubjectFileError(subject, file, f"subject {subject!r}: {file!r} has {shape[2]} slices; "
                                              f"need n_sax={n_sax}")  # fmt: skip


# ---- one subject on disk -------------------------------------------------------------------------------------
def check_subject(
    root: str,
    eid: str,
    views: Iterable[str] = ("la_2ch", "la_3ch", "la_4ch", "sa"),
    segs: bool = True,
    n_frames: int = 1,
    n_sax: int = 0,
) -> list[Problem]:
    """All problems of subject ``eid`` under ``root`` (empty list = good); reads every file once, fully.

    ``views``: file keys of ``IMAGE_FILES`` to check; ``segs``: also check their ``SEG_FILES``. A file that does
    not exist gives a ``Problem`` with ``missing=True`` (callers apply ``missing_views`` to those); a subject
    without any of the image files also gets a problem that no ``missing_views`` policy keeps.
    """
    folder = os.path.join(root, eid)
    if not os.path.isdir(folder):
        return [Problem(eid, "", f"subject {eid!r}: folder {folder} does not exist", missing=True)]
    problems = []
    for view in views:
        image = None
        try:
            data, _, affine = read_nifti(os.path.join(folder, IMAGE_FILES[view]), eid, return_affine=True)
            check_geometry(data.shape, view, eid, IMAGE_FILES[view], n_frames, n_sax)
            check_finite(data, eid, IMAGE_FILES[view])
            image = (data.shape, affine)
        except (SubjectFileError, MissingFileError) as err:
            problems.append(problem_from_error(eid, err))
        if not segs or view not in SEG_FILES:
            continue
        try:
            seg, _, seg_affine = read_nifti(os.path.join(folder, SEG_FILES[view]), eid, return_affine=True)
            check_geometry(seg.shape, view, eid, SEG_FILES[view], n_frames, n_sax)
            check_labels(seg, view, eid)
            if image is not None:
                check_pair(image[0], seg.shape, image[1], seg_affine, view, eid)
        except (SubjectFileError, MissingFileError) as err:
            problems.append(problem_from_error(eid, err))
    views = list(views)
    if views and all(not os.path.isfile(os.path.join(folder, IMAGE_FILES[v])) for v in views):
        names = [IMAGE_FILES[v] for v in views]
        problems.append(Problem(eid, "", f"subject {eid!r}: none of the view files {names} exists"))  # never kept
    return problems


# ---- policy and report -------------------------------------------------------------------------------------
def apply_policy(
    problems: Sequence[Problem], on_bad_subject: str = "fail", missing_views: str = "fail", report: str | None = None
) -> set[str]:
    """Subjects to leave out under the two policies; writes ``report`` (``bad_subjects.csv``) when given.

    Missing view files are ignored under ``missing_views="invalid"``, leave the subject out under ``"skip"`` and
    are bad-subject problems under ``"fail"``. Other problems leave the subject out under ``on_bad_subject="skip"``
    and raise ``BadSubjectError`` (after the report is written) under ``"fail"``.
    """
    check_choice("on_bad_subject", on_bad_subject, ON_BAD_SUBJECT)
    check_choice("missing_views", missing_views, MISSING_VIEWS)
    listed = [p for p in problems if not (p.missing and p.file and missing_views == "invalid")]
    fatal = [p for p in listed if not (p.missing and p.file and missing_views == "skip")]
    if report is not None:
        write_bad_subjects(report, listed)
    if fatal and on_bad_subject == "fail":
        hint = (f"; see {report}" if report else "") + (
            "; --on-bad-subject skip leaves bad subjects out"
            + ("; --missing-views invalid keeps subjects with missing views" if any(p.missing for p in fatal) else "")
        )
        raise BadSubjectError(fatal, hint)
    for p in listed:
        log.warning("skipped subject %s: %s", p.eid, p)
    return {p.eid for p in listed}


def write_bad_subjects(path: str, problems: Iterable[Problem]) -> str:
    """Write ``eid, file, reason`` rows (one per problem) to ``path``; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["eid", "file", "reason"])
        writer.writerows([[p.eid, p.file, str(p)] for p in problems])
    return path


def read_bad_subjects(path: str) -> list[Mapping[str, str]]:
    """Rows of a ``bad_subjects.csv`` as dicts with keys ``eid``, ``file``, ``reason``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
