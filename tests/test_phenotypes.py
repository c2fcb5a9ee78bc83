"""Phenotypes against analytic shapes written as NIfTI files (cylinders, annuli, ellipses of known volume)."""

import csv
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from kmtr_monai.constants import ALL_PHENOTYPES
from kmtr_monai.data.phenotypes import compute_phenotypes, write_cohort_phenotypes

# ---- the analytic phantom -------------------------------------------------------------------------------------
SA_PIX = (1.0, 1.25, 8.0)  # mm; anisotropic in-plane so swapped axes would show
SA_SHAPE = (128, 128, 8)
LV_SLICES = range(1, 7)  # 6 slices with LV/Myo/RV
LV_R = np.array([22.0, 19.0, 16.0, 14.0, 17.0, 20.0])  # mm; ES = frame 3
MYO_R = np.array([30.0, 28.0, 27.0, 26.0, 27.0, 29.0])  # outer myocardium radius
RV_R = np.array([15.0, 13.0, 12.0, 12.5, 10.0, 14.0])  # RV's own minimum (frame 4) is NOT the LV ES frame
DT_MS = 150.0
LAX_PIX = {"la_2ch": (0.8, 0.8), "la_4ch": (0.9, 1.1)}
LAX_SHAPE = (160, 160)
LA_A = np.array([24.0, 25.0, 27.0, 30.0, 28.0, 26.0])  # semi-long axis, both views (L = 2a in both)
LA_B2 = np.array([14.0, 15.0, 16.0, 18.0, 17.0, 15.0])
LA_B4 = np.array([13.0, 14.0, 15.0, 17.0, 16.0, 14.0])
RA_A = np.array([26.0, 27.0, 29.0, 31.0, 29.0, 27.0])
RA_B = np.array([15.0, 16.0, 17.0, 19.0, 18.0, 16.0])


def _grid(shape, pix):
    x = np.arange(shape[0])[:, None] * pix[0]
    y = np.arange(shape[1])[None, :] * pix[1]
    return x, y


def _disc(shape, pix, centre, radius):
    x, y = _grid(shape, pix)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def _ellipse(shape, pix, centre, a, b, theta):
    x, y = _grid(shape, pix)
    u = math.cos(theta) * (x - centre[0]) + math.sin(theta) * (y - centre[1])
    v = -math.sin(theta) * (x - centre[0]) + math.cos(theta) * (y - centre[1])
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _save(path, data, pix, dt_ms=DT_MS):
    img = nib.Nifti1Image(data, np.diag([*pix[:3], 1.0]))
    img.header.set_zooms((*pix[:3], dt_ms)[: data.ndim])
    nib.save(img, path)


def make_subject(root, eid="1001", dt_ms=DT_MS, edit=None):
    """Write one analytic subject; ``edit(name, array)`` may modify a label array before saving."""
    d = os.path.join(root, eid)
    os.makedirs(d, exist_ok=True)
    n_t = LV_R.size
    sa = np.zeros((*SA_SHAPE, n_t), dtype=np.uint8)
    lv_c, rv_c = (45.0, 80.0), (100.0, 80.0)
    for t in range(n_t):  # test-data construction only
        plane = np.zeros(SA_SHAPE[:2], dtype=np.uint8)
        plane[_disc(SA_SHAPE[:2], SA_PIX, lv_c, MYO_R[t])] = 2
        plane[_disc(SA_SHAPE[:2], SA_PIX, lv_c, LV_R[t])] = 1
        plane[_disc(SA_SHAPE[:2], SA_PIX, rv_c, RV_R[t])] = 3
        sa[:, :, list(LV_SLICES), t] = plane[:, :, None]
    la2 = np.zeros((*LAX_SHAPE, 1, n_t), dtype=np.uint8)
    la4 = np.zeros((*LAX_SHAPE, 1, n_t), dtype=np.uint8)
    for t in range(n_t):
        la2[:, :, 0, t][_ellipse(LAX_SHAPE, LAX_PIX["la_2ch"], (48, 50), LA_A[t], LA_B2[t], 0.5)] = 1
        la4[:, :, 0, t][_ellipse(LAX_SHAPE, LAX_PIX["la_4ch"], (40, 50), LA_A[t], LA_B4[t], -0.3)] = 1
        la4[:, :, 0, t][_ellipse(LAX_SHAPE, LAX_PIX["la_4ch"], (105, 125), RA_A[t], RA_B[t], 0.2)] = 2
    arrays = {"seg_sa": sa, "seg_la_2ch": la2, "seg_la_4ch": la4}
    if edit is not None:
        for name in arrays:
            arrays[name] = edit(name, arrays[name])
    _save(os.path.join(d, "seg_sa.nii.gz"), arrays["seg_sa"], SA_PIX, dt_ms)
    _save(os.path.join(d, "seg_la_2ch.nii.gz"), arrays["seg_la_2ch"], (*LAX_PIX["la_2ch"], 6.0), dt_ms)
    _save(os.path.join(d, "seg_la_4ch.nii.gz"), arrays["seg_la_4ch"], (*LAX_PIX["la_4ch"], 6.0), dt_ms)
    return d, arrays


def analytic():
    """Continuous-geometry truth (mL)."""
    height = len(LV_SLICES) * SA_PIX[2]
    lv = math.pi * LV_R**2 * height / 1000
    myo = math.pi * (MYO_R**2 - LV_R**2) * height / 1000
    rv = math.pi * RV_R**2 * height / 1000
    la = 4 / 3 * math.pi * LA_A * LA_B2 * LA_B4 / 1000
    ra = 4 / 3 * math.pi * RA_A * RA_B**2 / 1000
    es = 3
    hr = 60.0 / (LV_R.size * DT_MS / 1000)
    return {
        "LVEDV (mL)": lv[0], "LVESV (mL)": lv[es], "LVSV (mL)": lv[0] - lv[es], "LVEF (%)": 100 * (1 - lv[es] / lv[0]),
        "LVCO (L/min)": (lv[0] - lv[es]) * hr / 1000, "LVM (g)": 1.05 * myo[0],
        "RVEDV (mL)": rv[0], "RVESV (mL)": rv[es], "RVSV (mL)": rv[0] - rv[es], "RVEF (%)": 100 * (1 - rv[es] / rv[0]),
        "LAV max (mL)": la.max(), "LAV min (mL)": la.min(), "LASV (mL)": la.max() - la.min(),
        "LAEF (%)": 100 * (1 - la.min() / la.max()),
        "RAV max (mL)": ra.max(), "RAV min (mL)": ra.min(), "RASV (mL)": ra.max() - ra.min(),
        "RAEF (%)": 100 * (1 - ra.min() / ra.max()),
    }  # fmt: skip


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_subject(str(tmp_path_factory.mktemp("cohort")))


# ---- tests ----------------------------------------------------------------------------------------------------
def test_all_phenotypes_match_analytic_within_2_percent(subject):
    values, qc = compute_phenotypes(subject[0], return_qc=True)
    assert list(values) == list(ALL_PHENOTYPES)
    assert qc == {"LV": [], "LA": [], "RA": []}
    truth = analytic()
    for name in ALL_PHENOTYPES:
        assert values[name] == pytest.approx(truth[name], rel=0.02), name


def test_ventricular_volumes_are_exact_voxel_counts(subject):
    """Against a NumPy count of the written label arrays: counting, not summing label values (RV=3, Myo=2)."""
    values = compute_phenotypes(subject[0])
    sa = subject[1]["seg_sa"]
    voxel_ml = np.prod(SA_PIX) / 1000
    counts = {lab: (sa == lab).sum(axis=(0, 1, 2)) for lab in (1, 2, 3)}
    es = int(np.argmin(counts[1]))
    assert es == 3
    assert values["LVEDV (mL)"] == pytest.approx(counts[1][0] * voxel_ml, rel=1e-12)
    assert values["LVESV (mL)"] == pytest.approx(counts[1][es] * voxel_ml, rel=1e-12)
    assert values["LVM (g)"] == pytest.approx(1.05 * counts[2][0] * voxel_ml, rel=1e-12)
    # RV ES is the LV ES frame (3), not the RV's own minimum (frame 4)
    assert values["RVESV (mL)"] == pytest.approx(counts[3][3] * voxel_ml, rel=1e-12)
    assert values["RVESV (mL)"] > counts[3][4] * voxel_ml
    hr = 60 / (6 * 0.150)
    assert values["LVCO (L/min)"] == pytest.approx(values["LVSV (mL)"] * hr / 1000, rel=1e-12)


def test_lvco_nan_without_frame_interval(tmp_path):
    d, _ = make_subject(str(tmp_path), dt_ms=0.0)
    values = compute_phenotypes(d)
    assert math.isnan(values["LVCO (L/min)"])
    assert all(math.isfinite(v) for k, v in values.items() if k != "LVCO (L/min)")


def test_time_unit_in_header_is_honoured(tmp_path):
    d, _ = make_subject(str(tmp_path))
    img = nib.load(os.path.join(d, "seg_sa.nii.gz"))
    data = np.asanyarray(img.dataobj)
    new = nib.Nifti1Image(data, img.affine)
    new.header.set_zooms((*SA_PIX, DT_MS / 1000))
    new.header.set_xyzt_units("mm", "sec")
    nib.save(new, os.path.join(d, "seg_sa.nii.gz"))
    assert compute_phenotypes(d)["LVCO (L/min)"] == pytest.approx(analytic()["LVCO (L/min)"], rel=0.02)


def test_small_speck_is_ignored_largest_component_kept(tmp_path, subject):
    def speck(name, arr):
        if name == "seg_la_2ch":
            arr[110:113, 5:8, 0, 2] = 1  # 9 px, far below 10 % of the atrium
        return arr

    d, _ = make_subject(str(tmp_path), edit=speck)
    values, qc = compute_phenotypes(d, return_qc=True)
    assert qc["LA"] == []
    ref = compute_phenotypes(subject[0])
    assert values["LAV max (mL)"] == pytest.approx(ref["LAV max (mL)"], rel=1e-12)
    assert values["LAV min (mL)"] == pytest.approx(ref["LAV min (mL)"], rel=1e-12)


def test_qc_missing_atrium_sets_la_nan_only(tmp_path):
    def drop(name, arr):
        if name == "seg_la_2ch":
            arr[..., 2] = 0
        return arr

    d, _ = make_subject(str(tmp_path), edit=drop)
    values, qc = compute_phenotypes(d, return_qc=True)
    assert qc["LA"] == ["la_2ch LA missing in frames [2]"] and qc["RA"] == []
    assert all(math.isnan(values[k]) for k in ("LAV max (mL)", "LAV min (mL)", "LASV (mL)", "LAEF (%)"))
    assert values["RAV max (mL)"] == pytest.approx(analytic()["RAV max (mL)"], rel=0.02)


def test_qc_two_large_components_sets_ra_nan(tmp_path):
    def split(name, arr):
        if name == "seg_la_4ch":
            arr[140:155, 5:20, 0, 4] = 2  # 225 px: > 10 % of the RA
        return arr

    d, _ = make_subject(str(tmp_path), edit=split)
    values, qc = compute_phenotypes(d, return_qc=True)
    assert qc["RA"] == ["la_4ch RA >=2 large components in frames [4]"] and qc["LA"] == []
    assert math.isnan(values["RASV (mL)"]) and math.isnan(values["RAEF (%)"])
    assert math.isfinite(values["LASV (mL)"])


def test_qc_area_jump(tmp_path):
    def jump(name, arr):
        if name == "seg_la_4ch":
            la = arr[..., 1] == 1
            arr[..., 1][la] = 0
            arr[..., 1][_ellipse(LAX_SHAPE, LAX_PIX["la_4ch"], (40, 50), 15.0, 7.0, 0.0)[:, :, None]] = 1
        return arr

    d, _ = make_subject(str(tmp_path), edit=jump)
    values, qc = compute_phenotypes(d, return_qc=True)
    assert qc["LA"] == ["la_4ch LA area jump x2 between frames [(0, 1), (1, 2)]"]
    assert math.isnan(values["LAEF (%)"])


@pytest.mark.parametrize(
    "breakage, exc, words",
    [
        ("no_seg", FileNotFoundError, ["1001", "no segmentation file"]),
        ("corrupt", ValueError, ["1001", "seg_sa.nii.gz", "cannot read"]),
        ("ndim", ValueError, ["1001", "seg_la_2ch.nii.gz", "4-D"]),
        ("labels", ValueError, ["1001", "seg_sa.nii.gz", "[7]"]),
        ("frames", ValueError, ["1001", "frames"]),
        ("slices", ValueError, ["1001", "seg_la_4ch.nii.gz", "Z=1"]),
    ],
)
def test_bad_input_names_subject_and_file(tmp_path, breakage, exc, words):
    d, arrays = make_subject(str(tmp_path))
    if breakage == "no_seg":
        for name in arrays:
            os.remove(os.path.join(d, f"{name}.nii.gz"))
    elif breakage == "corrupt":
        with open(os.path.join(d, "seg_sa.nii.gz"), "wb") as f:
            f.write(b"\x1f\x8b not really a gzip stream")
    elif breakage == "ndim":
        nib.save(nib.Nifti1Image(arrays["seg_la_2ch"][:, :, 0, 0], np.eye(4)), os.path.join(d, "seg_la_2ch.nii.gz"))
    elif breakage == "labels":
        sa = arrays["seg_sa"].copy()
        sa[0, 0, 0, 0] = 7
        _save(os.path.join(d, "seg_sa.nii.gz"), sa, SA_PIX)
    elif breakage == "frames":
        _save(os.path.join(d, "seg_la_2ch.nii.gz"), arrays["seg_la_2ch"][..., :4], (*LAX_PIX["la_2ch"], 6.0))
    elif breakage == "slices":
        _save(os.path.join(d, "seg_la_4ch.nii.gz"), np.repeat(arrays["seg_la_4ch"], 2, axis=2), (0.9, 1.1, 6.0))
    with pytest.raises(exc) as err:
        compute_phenotypes(d)
    for w in words:
        assert w in str(err.value)


def test_write_cohort_phenotypes_csv(tmp_path, capsys):
    root = str(tmp_path)
    make_subject(root, "7")
    make_subject(root, "12", dt_ms=0.0)
    os.makedirs(os.path.join(root, "not_a_subject"))  # no NIfTI: skipped
    out = write_cohort_phenotypes(root)
    assert out == os.path.join(root, "phenotypes.csv")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["eid"] for r in rows] == ["7", "12"]
    assert list(rows[0]) == ["eid", *ALL_PHENOTYPES]
    truth = analytic()
    assert float(rows[0]["LVEDV (mL)"]) == pytest.approx(truth["LVEDV (mL)"], rel=0.02)
    assert rows[1]["LVCO (L/min)"] == "nan"
    assert "2 subjects" in capsys.readouterr().out


def test_cli_phenotypes_reproduces_analytic_volumes(tmp_path):
    root = str(tmp_path / "cohort")
    make_subject(root, "1001")
    out = str(tmp_path / "pheno.csv")
    res = subprocess.run(
        [sys.executable, "-m", "kmtr_monai", "phenotypes", root, "--out", out], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    with open(out) as f:
        (row,) = list(csv.DictReader(f))
    truth = analytic()
    for name in ALL_PHENOTYPES:
        assert float(row[name]) == pytest.approx(truth[name], rel=0.02), name


def test_empty_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no subject folders"):
        write_cohort_phenotypes(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_cohort_phenotypes(str(tmp_path / "nope"))
