"""Realism report of the synthetic cohort (issue 15): measured figures next to the DESIGN §6 reference ranges.

Everything is measured on the written files (images, UK Biobank label maps, affines, phenotypes.csv), except the RV
free wall, which has no label: it is measured on the renderer's signed-distance fields at ED along the LV -> RV ray.

* in-plane heart angle per view, ED (image axes, degrees, counter-clockwise from +x): SAX mid slice LV -> RV
  centroid; 4ch LA -> RA centroid; 2ch LA principal axis (mod 180; subjects with a round LA are skipped)
* LV wall thickness (equivalent annulus ``sqrt((A_lv + A_myo)/π) - sqrt(A_lv/π)``) at ED and ES, mid and apical
  SAX slices, and systolic thickening
* blood / myocardium (eroded LV and Myo labels, mid SAX, ED) and subcutaneous fat / myocardium intensity ratios
* base descent: ED -> ES motion of the LA's apical edge (the valve plane) along the image long axis, 2ch and 4ch
* volumes and EFs (phenotypes.csv); frame of maximal LA / RA area versus the ES frame

Usage::

    python benchmarks/cohort_realism.py --subjects 24 --preset paper --workers 2 [--preview preview.png]
    python benchmarks/cohort_realism.py --root /tmp/cohort
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile

import numpy as np


def _load(path):
    import nibabel as nib

    img = nib.load(path)
    return np.asanyarray(img.dataobj), img


def _centroid(mask):
    ij = np.argwhere(mask)
    return ij.mean(axis=0) if len(ij) else None


def _angle(v) -> float:
    return float(np.degrees(np.arctan2(v[1], v[0])))


def _circ_stats(deg, period=360.0):
    """Circular mean and sd (degrees) of angles with the given period."""
    a = np.radians(np.asarray(deg) * 360.0 / period)
    z = np.exp(1j * a).mean()
    mean = np.degrees(np.angle(z)) * period / 360.0
    dev = (np.asarray(deg) - mean + period / 2) % period - period / 2
    return float(mean % period), float(np.sqrt(np.mean(dev**2))), float(np.max(np.abs(dev)))


def _annulus_w(lv, myo, px):
    a_lv, a_myo = lv.sum() * px * px, myo.sum() * px * px
    if a_lv == 0 or a_myo == 0:
        return np.nan
    return float(np.sqrt((a_lv + a_myo) / np.pi) - np.sqrt(a_lv / np.pi))


def measure_subject(subject_dir: str, p: dict) -> dict:
    """All image/label figures of one subject (dict of floats, NaN where not measurable)."""
    from scipy import ndimage

    from kmtr_monai.simulate.render import body_wall

    out = {}
    seg_sa, nii = _load(os.path.join(subject_dir, "seg_sa.nii.gz"))
    sa, _ = _load(os.path.join(subject_dir, "sa.nii.gz"))
    px = float(nii.header.get_zooms()[0])
    lv_t = (seg_sa == 1).sum(axis=(0, 1, 2))
    es = int(np.argmin(lv_t))
    out["es_frame"] = es / seg_sa.shape[-1]
    lv_slices = np.flatnonzero((seg_sa[..., 0] == 1).any(axis=(0, 1)))
    mid = int(round(lv_slices[0] + 0.5 * (lv_slices[-1] - lv_slices[0])))
    api = int(round(lv_slices[0] + 0.8 * (lv_slices[-1] - lv_slices[0])))
    c_lv, c_rv = _centroid(seg_sa[:, :, mid, 0] == 1), _centroid(seg_sa[:, :, mid, 0] == 3)
    out["angle_sa"] = _angle(c_rv - c_lv) if c_rv is not None else np.nan
    for name, k in (("mid", mid), ("apex", api)):
        for tname, t in (("ed", 0), ("es", es)):
            s = seg_sa[:, :, k, t]
            out[f"w_{name}_{tname}"] = _annulus_w(s == 1, s == 2, px)
    # intensities at mid SAX, ED: eroded labels avoid partial volume
    img = sa[:, :, mid, 0].astype(np.float64)
    blood = ndimage.binary_erosion(seg_sa[:, :, mid, 0] == 1, iterations=1)
    myo = ndimage.binary_erosion(seg_sa[:, :, mid, 0] == 2, iterations=1)
    myo_mean = img[myo].mean() if myo.any() else np.nan
    out["blood_myo"] = img[blood].mean() / myo_mean if blood.any() else np.nan
    # subcutaneous fat: voxels >= 3.5 mm inside the skin and >= 2.5 mm outside the fat/muscle boundary (2.4.0: 2 and
    # 2 mm; generator 2.5.0 draws dark fat-water boundary lines there)
    if p["subcutaneous_fat_mm"] >= 6.0:
        ii, jj = np.meshgrid(np.arange(sa.shape[0]), np.arange(sa.shape[1]), indexing="ij")
        world = nii.affine @ np.stack([ii, jj, np.full_like(ii, mid), np.ones_like(ii)]).reshape(4, -1)
        skin, lean = body_wall(world[0].astype(np.float32), world[1].astype(np.float32), p)  # the generator's
        fat = ((skin < -3.5) & (lean > 2.5)).reshape(ii.shape)
        out["fat_myo"] = img[fat].mean() / myo_mean if fat.sum() > 10 else np.nan
    else:
        out["fat_myo"] = np.nan
    # LAX: angles, base descent (LA apical edge), time of maximal atrial area
    la2, n2 = _load(os.path.join(subject_dir, "seg_la_2ch.nii.gz"))
    la4, _ = _load(os.path.join(subject_dir, "seg_la_4ch.nii.gz"))
    la2, la4 = la2[:, :, 0], la4[:, :, 0]
    c_la, c_ra = _centroid(la4[..., 0] == 1), _centroid(la4[..., 0] == 2)
    out["angle_4ch"] = _angle(c_ra - c_la) if c_la is not None and c_ra is not None else np.nan
    ij = np.argwhere(la2[..., 0] == 1).astype(np.float64)
    out["angle_2ch"] = np.nan
    if len(ij) > 10:
        evals, evecs = np.linalg.eigh(np.cov((ij - ij.mean(0)).T))
        if evals[1] > 1.4 * evals[0]:  # elongated enough to define an axis
            out["angle_2ch"] = _angle(evecs[:, 1]) % 180.0
    descents = []
    for seg, label in ((la2, 1), (la4, 1)):
        tops = []
        for t in (0, es):
            j = np.argwhere(seg[..., t] == label)[:, 1]
            tops.append(np.percentile(j, 99) if len(j) else np.nan)
        descents.append((tops[1] - tops[0]) * px)
    out["base_descent"] = float(np.nanmean(descents))
    area_la = (la4 == 1).sum(axis=(0, 1)) + (la2 == 1).sum(axis=(0, 1))
    area_ra = (la4 == 2).sum(axis=(0, 1))
    n_t = seg_sa.shape[-1]
    wrap = lambda d: (d + n_t / 2) % n_t - n_t / 2  # noqa: E731
    out["la_max_minus_es"] = wrap(int(np.argmax(area_la)) - es) / n_t
    out["ra_max_minus_es"] = wrap(int(np.argmax(area_ra)) - es) / n_t
    out["rv_wall"] = rv_free_wall_mm(p)
    return out


def rv_free_wall_mm(p: dict) -> float:
    """RV free-wall thickness (mm) at ED, mid-ventricle, on the renderer's fields along the LV -> RV ray ``e1``."""
    from kmtr_monai.simulate.geometry import cardiac_shapes
    from kmtr_monai.simulate.render import _heart_fields

    shapes = cardiac_shapes(p, 2)
    s = np.arange(0.0, 150.0, 0.05, dtype=np.float32)[None]  # (1, N) along e1
    x3 = np.full_like(s, 0.4 * shapes["lv"]["L_ed"])
    f = _heart_fields(s, np.zeros_like(s), x3, shapes, p | {"hypokinesis": 0.0}, with_atria=False)
    rv_in, wall = f["rv"][0, 0] < 0, (f["rv"][0, 0] >= 0) & (f["rv_out"][0, 0] < 0)
    if not rv_in.any():
        return np.nan
    beyond = s[0] > s[0][rv_in].max()
    return float((wall & beyond).sum() * 0.05)


REFERENCE = [  # key, label, unit, reference text
    ("angle_sa", "SAX in-plane angle LV->RV", "deg", "fixed view orientation, ±15° between subjects"),
    ("angle_4ch", "4ch in-plane angle LA->RA", "deg", "fixed view orientation, ±15° between subjects"),
    ("angle_2ch", "2ch LA axis angle (mod 180)", "deg", "fixed view orientation, ±15° between subjects"),
    ("w_mid_ed", "LV wall, mid, ED", "mm", "6–9 (normal adults); 8–10 in a dilated LVM≈210 g heart"),
    ("w_mid_es", "LV wall, mid, ES", "mm", "ED × 1.3–1.6"),
    ("thick_mid", "systolic thickening, mid", "%", "30–60"),
    ("w_apex_ed", "LV wall, apical slice, ED", "mm", "≈6 (thinner than mid)"),
    ("rv_wall", "RV free wall, ED (geometry)", "mm", "3–4"),
    ("blood_myo", "LV blood / myocardium intensity", "", "2–3 (ACDC 2.7)"),
    ("fat_myo", "subcutaneous fat / myocardium", "", "≈2.4 (sqrt(T2/T1): 0.53/0.22)"),
    ("base_descent", "base descent ED->ES (LA edge)", "mm", "10–15, apex nearly fixed"),
    ("la_max_minus_es", "frame of max LA area − ES", "cycle", "0 (atria maximal at ES)"),
    ("ra_max_minus_es", "frame of max RA area − ES", "cycle", "0"),
]
PHENO_REF = [("LVEDV (mL)", "145±30 (M 166±32, F 124±21)"), ("LVEF (%)", "60±6"), ("LVM (g)", "85±20"),
             ("RVEDV (mL)", "155±35"), ("RVEF (%)", "55±6"), ("LAV max (mL)", "70±20"), ("LAEF (%)", "60±8"),
             ("RAV max (mL)", "90±25"), ("RAEF (%)", "50±9")]  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="existing cohort; otherwise one is generated")
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--preview", default=None, help="write the ED/ES montage of the first subject to this PNG")
    args = ap.parse_args(argv)
    root = args.root
    if root is None:
        from kmtr_monai.simulate import simulate_cohort

        root = tempfile.mkdtemp(prefix="kmtr-realism-")
        simulate_cohort(root, subjects=args.subjects, preset=args.preset, seed=args.seed, workers=args.workers)
    with open(os.path.join(root, "cohort.json")) as f:
        meta = json.load(f)
    subjects = meta["subjects"]
    rows = [measure_subject(os.path.join(root, p["eid"]), p) for p in subjects]
    for r in rows:
        r["thick_mid"] = 100.0 * (r["w_mid_es"] / r["w_mid_ed"] - 1.0)
    print(f"cohort {root}: version {meta.get('version')}, preset {meta['preset']}, {len(rows)} subjects\n")
    print("| figure | measured | DESIGN §6 reference |\n|---|---|---|")
    for key, label, unit, ref in REFERENCE:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        if key.startswith("angle"):
            mean, sd, worst = _circ_stats(v, 180.0 if key == "angle_2ch" else 360.0)
            txt = f"mean {mean:.0f}°, sd {sd:.1f}°, max |dev| {worst:.0f}° (n={len(v)})"
        elif key.endswith("minus_es"):
            txt = f"{np.mean(v):+.3f} ± {np.std(v):.3f} (|·| ≤ 0.05 in {np.mean(np.abs(v) <= 0.05):.0%})"
        else:
            txt = f"{np.mean(v):.2f} ± {np.std(v):.2f} [{np.min(v):.2f}, {np.max(v):.2f}] {unit}"
        print(f"| {label} | {txt} | {ref} |")
    w = np.array([r["w_mid_ed"] for r in rows])
    htn = np.array([p["hypertension"] or p["high_blood_pressure"] for p in subjects], bool)
    if htn.any() and (~htn).any():
        print(f"| LV wall, mid, ED: hypertension or high BP vs neither | {np.nanmean(w[htn]):.2f} (n={htn.sum()}) vs "
              f"{np.nanmean(w[~htn]):.2f} (n={(~htn).sum()}) mm | thicker with blood pressure |")
    with open(os.path.join(root, "phenotypes.csv")) as f:
        ph = list(csv.DictReader(f))
    for name, ref in PHENO_REF:
        v = np.array([float(r[name]) for r in ph])
        v = v[np.isfinite(v)]
        print(f"| {name} | {np.mean(v):.1f} ± {np.std(v):.1f} | {ref} |")
    if args.preview:
        from kmtr_monai.simulate.preview import write_preview

        write_preview(os.path.join(root, subjects[0]["eid"]), args.preview)
        print(f"\npreview: {args.preview}")
    return rows


if __name__ == "__main__":
    main()
