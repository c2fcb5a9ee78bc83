"""Cardiac phenotypes from UK Biobank-style segmentations (the ukbb_cardiac formulas, DESIGN §7).

Ventricles (``seg_sa.nii.gz``, labels LV=1, Myo=2, RV=3):
    volumes are label voxel *counts* (never sums of label values) × dx·dy·dz·1e-3 mL, dz = the SAX slice spacing
    (pixdim[3]). ED = frame 0, ES = argmin of the LV blood volume (also used for the RV). SV = EDV − ESV,
    EF = 100·SV/EDV, LVM = 1.05 g/mL × ED myocardium volume, LVCO = LVSV·HR/1000 L/min with
    HR = 60 / (T·dt) bpm, T the number of frames and dt the frame interval (pixdim[4] of ``seg_sa.nii.gz``, read
    in ms unless the header sets a time unit). LVCO is NaN when pixdim[4] is absent or 0.

Atria (area–length, per frame, on ``seg_la_2ch.nii.gz`` LA=1 and ``seg_la_4ch.nii.gz`` LA=1, RA=2):
    A = area of the largest in-plane connected component (8-connectivity) in cm².
    L = long-axis length in cm, defined as the major axis of the component's *equivalent ellipse* (the ellipse
    with the same second moments): L = 4·sqrt(λ_max) with λ_max the largest eigenvalue of the covariance of the
    component's area (pixel-centre covariance + pixel²/12, i.e. each pixel treated as a uniform square). This is
    exactly 2a for an ellipse of semi-major axis a, is sub-pixel accurate and does not depend on single outlying
    pixels, unlike extreme-point (Feret) lengths; the valve-plane landmark definition of ukbb_cardiac needs LV/
    valve labels that these LAX label maps do not carry. For an ellipse the area–length volume is then exactly
    the prolate-ellipsoid volume.
    LA: biplane V = 8/(3π)·A2ch·A4ch / mean(L2ch, L4ch); RA: single-plane 4ch V = 8/(3π)·A²/L (mL).
    max/min over frames, SV = max − min, EF = 100·SV/max.

Atrial quality control (per view and chamber; any failure sets that chamber's four values to NaN, reasons are
returned with ``return_qc=True``): the atrium is missing in a frame; a frame has ≥ 2 large components (a second
component of at least ``LARGE_COMPONENT_FRACTION`` of the largest one); the area of consecutive frames changes by
a factor ≥ ``AREA_JUMP_FACTOR``.

Incomplete subjects: every phenotype the present files allow is computed (``seg_sa`` alone gives the ventricles;
the LA needs both LAX files, the RA the 4ch one); the others are NaN with the qc reason ``"not computed: missing
<files>"`` and empty cells in the cohort CSV. Unusable files are bad subjects (``validate``, ``on_bad_subject``).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
from scipy import ndimage

from kmtr_monai.constants import ALL_PHENOTYPES, MYOCARDIAL_DENSITY_G_PER_ML, SEG_FILES
from kmtr_monai.data.layout import MissingFileError, SubjectFileError, list_subjects, read_nifti
from kmtr_monai.data.validate import (
    BAD_SUBJECTS_CSV,
    ON_BAD_SUBJECT,
    apply_policy,
    check_choice,
    check_labels,
    log,
    problem_from_error,
)

LARGE_COMPONENT_FRACTION = 0.1
AREA_JUMP_FACTOR = 2.0
_AREA_LENGTH_K = 8.0 / (3.0 * math.pi)
# 8-connectivity inside each (X, Y) plane, no connection across frames (last axis): labels every frame in one call.
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[:, :, 1] = True


def _read_seg(subject_dir: str, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``SEG_FILES[view]`` as int (X, Y, Z, T) and check its labels against ``UKBB_LABEL_MAPS[view]``."""
    subject = os.path.basename(os.path.normpath(subject_dir))
    data, pixdim = read_nifti(os.path.join(subject_dir, SEG_FILES[view]), subject)
    return check_labels(data, view, subject), pixdim


def ventricular_phenotypes(seg_sa: np.ndarray, pixdim: np.ndarray) -> dict[str, float]:
    """LV/RV phenotypes from a UK Biobank SAX label volume ``seg_sa`` (X, Y, Z, T), pixdim (dx, dy, dz mm, dt s)."""
    n_frames = seg_sa.shape[-1]
    voxel_ml = float(pixdim[0] * pixdim[1] * pixdim[2]) * 1e-3
    lv, myo, rv = (np.count_nonzero(seg_sa == lab, axis=(0, 1, 2)) * voxel_ml for lab in (1, 2, 3))  # (T,) each
    es = int(np.argmin(lv))
    with np.errstate(divide="ignore", invalid="ignore"):
        lvsv, rvsv = lv[0] - lv[es], rv[0] - rv[es]
        lvef = 100.0 * lvsv / lv[0] if lv[0] > 0 else float("nan")
        rvef = 100.0 * rvsv / rv[0] if rv[0] > 0 else float("nan")
        heart_rate = 60.0 / (n_frames * pixdim[3])  # NaN when dt is unknown
    return {
        "LVEDV (mL)": lv[0], "LVESV (mL)": lv[es], "LVSV (mL)": lvsv, "LVEF (%)": lvef,
        "LVCO (L/min)": lvsv * heart_rate / 1000.0, "LVM (g)": MYOCARDIAL_DENSITY_G_PER_ML * myo[0],
        "RVEDV (mL)": rv[0], "RVESV (mL)": rv[es], "RVSV (mL)": rvsv, "RVEF (%)": rvef,
    }  # fmt: skip


def atrial_area_length(mask: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-frame area (cm²) and long-axis length (cm) of the largest component of ``mask`` (X, Y, T) bool.

    Returns ``(area (T,), length (T,), qc reasons)``; frames without the atrium give area 0 and length NaN.
    All frames are labelled and measured at once (no loop over frames), inside the mask's bounding box over all
    frames (areas and covariances do not depend on where the box starts).
    """
    rows, cols = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size:
        mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    n_x, n_y, n_t = mask.shape
    lab, n_comp = ndimage.label(mask, structure=_IN_PLANE_8)  # (X, Y, T); components never span frames
    sizes = np.bincount(lab.ravel(), minlength=n_comp + 1)
    comp_frame = np.zeros(n_comp + 1, dtype=np.int64)
    comp_frame[lab.ravel()] = np.broadcast_to(np.arange(n_t), lab.shape).ravel()
    comp_frame, sizes = comp_frame[1:], sizes[1:]
    largest = np.zeros(n_t, dtype=np.int64)
    np.maximum.at(largest, comp_frame, sizes)
    # first component (by id) reaching its frame's maximum size = the kept component of that frame
    is_max = sizes == largest[comp_frame]
    first_max = np.zeros(n_comp, dtype=bool)
    _, first = np.unique(np.where(is_max, comp_frame, -1), return_index=True)
    first_max[first[is_max[first]]] = True
    n_large = np.bincount(comp_frame, weights=sizes >= LARGE_COMPONENT_FRACTION * largest[comp_frame], minlength=n_t)

    keep = np.concatenate([[False], first_max])[lab].astype(np.float64)  # (X, Y, T) largest component per frame
    x, y = np.arange(n_x) * dx, np.arange(n_y) * dy
    n = keep.sum(axis=(0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = np.einsum("xyt,x->t", keep, x) / n, np.einsum("xyt,y->t", keep, y) / n
        cxx = np.einsum("xyt,x->t", keep, x * x) / n - mx * mx + dx * dx / 12.0
        cyy = np.einsum("xyt,y->t", keep, y * y) / n - my * my + dy * dy / 12.0
        cxy = np.einsum("xyt,x,y->t", keep, x, y) / n - mx * my
    lam = 0.5 * (cxx + cyy) + np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy**2)
    area_cm2 = n * dx * dy / 100.0
    length_cm = 4.0 * np.sqrt(lam) / 10.0

    reasons = []
    missing = np.flatnonzero(n == 0)
    if missing.size:
        reasons.append(f"missing in frames {missing.tolist()}")
    split = np.flatnonzero(n_large >= 2)
    if split.size:
        reasons.append(f">=2 large components in frames {split.tolist()}")
    a0, a1 = area_cm2[:-1], area_cm2[1:]
    jumps = np.flatnonzero((a0 > 0) & (a1 > 0) & (np.maximum(a0, a1) >= AREA_JUMP_FACTOR * np.minimum(a0, a1)))
    if jumps.size:
        reasons.append(f"area jump x{AREA_JUMP_FACTOR:g} between frames {[(int(j), int(j) + 1) for j in jumps]}")
    return area_cm2, length_cm, reasons


def _volume_summary(prefix: str, volume: np.ndarray, ok: bool) -> dict[str, float]:
    """max/min/SV/EF of an atrial volume curve (T,); NaN when QC failed."""
    if not ok:
        return {f"{prefix}V max (mL)": np.nan, f"{prefix}V min (mL)": np.nan, f"{prefix}SV (mL)": np.nan,
                f"{prefix}EF (%)": np.nan}  # fmt: skip
    vmax, vmin = float(volume.max()), float(volume.min())
    return {f"{prefix}V max (mL)": vmax, f"{prefix}V min (mL)": vmin, f"{prefix}SV (mL)": vmax - vmin,
            f"{prefix}EF (%)": 100.0 * (vmax - vmin) / vmax}  # fmt: skip


def _lax_plane(seg: np.ndarray, subject: str, view: str) -> np.ndarray:
    """(X, Y, 1, T) LAX labels -> (X, Y, T)."""
    if seg.shape[2] != 1:
        raise SubjectFileError(subject, SEG_FILES[view], f"subject {subject!r}: {SEG_FILES[view]!r} has shape "
                                                         f"{seg.shape}; expected one slice (Z=1)")  # fmt: skip
    return seg[:, :, 0, :]


# The phenotype columns of each chamber group (the qc keys): "LV" covers both ventricles (from seg_sa alone).
CHAMBER_COLUMNS = {
    "LV": tuple(n for n in ALL_PHENOTYPES if n.startswith(("LV", "RV"))),
    "LA": tuple(n for n in ALL_PHENOTYPES if n.startswith("LA")),
    "RA": tuple(n for n in ALL_PHENOTYPES if n.startswith("RA")),
}
_CHAMBER_FILES = {"LV": ("sa",), "LA": ("la_2ch", "la_4ch"), "RA": ("la_4ch",)}
MISSING_PREFIX = "not computed: missing "


def compute_phenotypes(subject_dir: str, return_qc: bool = False):
    """The ukbb_cardiac phenotype set (``constants.ALL_PHENOTYPES``) of one subject folder, as far as its files allow.

    Reads ``seg_sa.nii.gz`` (ventricles: LV*, RV*), ``seg_la_2ch.nii.gz`` + ``seg_la_4ch.nii.gz`` (LA*) and
    ``seg_la_4ch.nii.gz`` (RA*). A chamber whose files are missing gets NaN and the qc reason
    ``"not computed: missing <files>"`` (a short-axis-only cohort gets its ventricular phenotypes). Returns
    ``dict[name, float]`` in ``ALL_PHENOTYPES`` order, or ``(values, qc)`` when ``return_qc`` where ``qc`` maps
    ``"LV"``, ``"LA"``, ``"RA"`` to lists of failure reasons (empty = passed).

    Raises ``layout.SubjectFileError`` (a ValueError naming subject and file) for a present but unusable file and
    ``layout.MissingFileError`` when the folder has no segmentation at all.
    """
    subject = os.path.basename(os.path.normpath(subject_dir))
    if not os.path.isdir(subject_dir):
        raise MissingFileError(subject, "", f"subject {subject!r}: folder {subject_dir} does not exist")
    present = {v: os.path.isfile(os.path.join(subject_dir, f)) for v, f in SEG_FILES.items()}
    if not any(present.values()):
        files = ", ".join(SEG_FILES.values())
        raise MissingFileError(subject, "", f"subject {subject!r}: no segmentation file ({files}) in {subject_dir}")
    values = dict.fromkeys(ALL_PHENOTYPES, np.nan)
    qc = {}
    for chamber, views in _CHAMBER_FILES.items():
        absent = [SEG_FILES[v] for v in views if not present[v]]
        qc[chamber] = [MISSING_PREFIX + ", ".join(absent)] if absent else []

    if present["sa"]:
        seg_sa, pix_sa = _read_seg(subject_dir, "sa")
        values.update(ventricular_phenotypes(seg_sa, pix_sa))
        qc["LV"] = [] if values["LVEDV (mL)"] > 0 else ["LV empty at ED"]
    if present["la_4ch"]:
        seg4, pix4 = _read_seg(subject_dir, "la_4ch")
        seg4 = _lax_plane(seg4, subject, "la_4ch")
        ar, lr, rr = atrial_area_length(seg4 == 2, pix4[0], pix4[1])
        qc["RA"] = [f"la_4ch RA {r}" for r in rr]
        with np.errstate(divide="ignore", invalid="ignore"):
            ra_volume = _AREA_LENGTH_K * ar * ar / lr
        values.update(_volume_summary("RA", ra_volume, not qc["RA"]))
        if present["la_2ch"]:
            seg2, pix2 = _read_seg(subject_dir, "la_2ch")
            seg2 = _lax_plane(seg2, subject, "la_2ch")
            if seg2.shape[-1] != seg4.shape[-1]:
                raise SubjectFileError(
                    subject, SEG_FILES["la_2ch"],
                    f"subject {subject!r}: {SEG_FILES['la_2ch']!r} has {seg2.shape[-1]} frames but "
                    f"{SEG_FILES['la_4ch']!r} has {seg4.shape[-1]}; biplane LA volumes need the same frames",
                )  # fmt: skip
            a2, l2, r2 = atrial_area_length(seg2 == 1, pix2[0], pix2[1])
            a4, l4, r4 = atrial_area_length(seg4 == 1, pix4[0], pix4[1])
            qc["LA"] = [f"la_2ch LA {r}" for r in r2] + [f"la_4ch LA {r}" for r in r4]
            with np.errstate(divide="ignore", invalid="ignore"):
                la_volume = _AREA_LENGTH_K * a2 * a4 / (0.5 * (l2 + l4))
            values.update(_volume_summary("LA", la_volume, not qc["LA"]))
    elif present["la_2ch"]:  # checked even though the LA needs both views, so a broken file is still reported
        _lax_plane(_read_seg(subject_dir, "la_2ch")[0], subject, "la_2ch")
    values = {name: float(values[name]) for name in ALL_PHENOTYPES}
    return (values, qc) if return_qc else values


def write_cohort_phenotypes(root: str, out: str | None = None, on_bad_subject: str = "fail") -> str:
    """Compute ``ALL_PHENOTYPES`` for every subject folder ``<root>/<eid>/`` and write a CSV (``eid`` + columns).

    Default ``out`` is ``<root>/phenotypes.csv``. Cells of phenotypes whose segmentation files are missing are
    empty; phenotypes rejected by QC (or undefined, e.g. LVCO without a frame interval) are written as ``nan``.
    Each subject with missing phenotypes is logged with the reason. A subject with an unusable file (see
    ``validate``) stops the run under ``on_bad_subject="fail"`` or is left out under ``"skip"``; either way it
    is listed in ``bad_subjects.csv`` next to ``out``. Prints a short summary and returns the CSV path.
    """
    check_choice("on_bad_subject", on_bad_subject, ON_BAD_SUBJECT)
    eids = list_subjects(root)
    out = out or os.path.join(root, "phenotypes.csv")
    report = os.path.join(os.path.dirname(os.path.abspath(out)), BAD_SUBJECTS_CSV)
    rows, failures, partial, problems = [], [], [], []
    for eid in eids:  # one subject per iteration: file reading dominates, each subject is vectorised
        try:
            values, qc = compute_phenotypes(os.path.join(root, eid), return_qc=True)
        except (SubjectFileError, MissingFileError) as err:
            problems.append(problem_from_error(eid, err))
            if on_bad_subject == "fail":
                break
            continue
        missing = {c for c, r in qc.items() if r and r[0].startswith(MISSING_PREFIX)}
        cells = ["" if any(n in CHAMBER_COLUMNS[c] for c in missing) else f"{values[n]:.6g}" for n in ALL_PHENOTYPES]
        rows.append([eid, *cells])
        for c in sorted(missing):
            partial.append(f"{eid} {c}: {qc[c][0]}")
            log.info("subject %s: %s phenotypes %s", eid, "ventricular" if c == "LV" else c, qc[c][0])
        failures += [f"{eid} {chamber}: {'; '.join(r)}" for chamber, r in qc.items() if r and chamber not in missing]
    apply_policy(problems, on_bad_subject, report=report)  # raises under "fail" after writing the report
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["eid", *ALL_PHENOTYPES])
        writer.writerows(rows)
    table = np.array([[float(v) if v else np.nan for v in row[1:]] for row in rows], dtype=np.float64)
    table = table.reshape(len(rows), len(ALL_PHENOTYPES))
    print(f"phenotypes: {len(rows)} subjects -> {out}")
    for name in ("LVEDV (mL)", "LVEF (%)", "LVM (g)", "RVEDV (mL)", "LAV max (mL)", "RAV max (mL)"):
        col = table[:, ALL_PHENOTYPES.index(name)]
        finite = col[np.isfinite(col)]
        mean, sd = (finite.mean(), finite.std()) if finite.size else (np.nan, np.nan)
        print(f"  {name:<14} {mean:8.2f} ± {sd:.2f}  (NaN: {col.size - finite.size})")
    print(f"  not computed (missing files): {len(partial)}" + "".join(f"\n    {p}" for p in partial[:10]))
    print(f"  QC failures: {len(failures)}" + "".join(f"\n    {f}" for f in failures[:10]))
    if problems:
        print(f"  bad subjects skipped: {len(problems)} -> {report}" + "".join(f"\n    {p}" for p in problems[:10]))
    return out
