"""Incomplete and bad cohorts (issue 16): SAX-only subjects with realistic geometry, one bad subject of each kind.

Truth comes from the construction: square LV / ring myocardium / bar RV of known pixel counts, a rotated and
anisotropic affine, more frames and slices than the preset loads.
"""

import csv
import math
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from kmtr_monai.constants import ALL_PHENOTYPES, DISEASES, LABELS, PHENOTYPES
from kmtr_monai.data.cohort import LoadCohortSubjectd, frame_indices, make_dataset
from kmtr_monai.data.datalist import read_datalist, write_datalist
from kmtr_monai.data.phenotypes import write_cohort_phenotypes
from kmtr_monai.data.validate import BadSubjectError, check_subject, read_bad_subjects

NX, NY, NZ, NT = 40, 36, 9, 12  # more slices (9 > 2) and frames (12 > 4) than the tiny preset loads
SPACING, DT_MS = (1.8, 1.8, 10.0), 30.0  # anisotropic: 10 mm between SAX slices
LV_SIDE = np.array([10, 9, 8, 7, 6, 5, 5, 6, 7, 8, 9, 10])  # LV blood pool: a LV_SIDE² square per slice
LV_SLICES = range(2, 7)  # 5 slices with LV, base at z=2
CENTRE = (20, 18)


def rotated_affine(spacing, angle=25.0, tilt=15.0):
    """A non-diagonal affine: rotation about z then x, anisotropic voxel sizes, an offset origin."""
    a, b = math.radians(angle), math.radians(tilt)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = (-60.0, 20.0, 35.0)
    return aff


def save(path, arr, affine, spacing=SPACING):
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms((*spacing, DT_MS)[: arr.ndim])
    nib.save(img, path)


def sax_labels():
    """UK Biobank SAX labels (X, Y, Z, T): LV square, 2-pixel myocardial ring, 4-pixel-wide RV bar beside it."""
    seg = np.zeros((NX, NY, NZ, NT), np.uint8)
    cx, cy = CENTRE
    for t, s in enumerate(LV_SIDE):  # test-data construction
        x0, y0 = cx - s // 2, cy - s // 2
        ring = seg[x0 - 2 : x0 + s + 2, y0 - 2 : y0 + s + 2, LV_SLICES.start : LV_SLICES.stop, t]
        ring[...] = 2
        seg[x0 : x0 + s, y0 : y0 + s, LV_SLICES.start : LV_SLICES.stop, t] = 1
        seg[x0 - 2 : x0 + s + 2, y0 + s + 2 : y0 + s + 6, LV_SLICES.start : LV_SLICES.stop, t] = 3
    return seg


def lax_labels(view):
    seg = np.zeros((NX, NY, 1, NT), np.uint8)
    for t in range(NT):
        h = 6 + t % 3  # slowly varying atrium: no QC failure
        seg[8 : 8 + h, 6:14, 0, t] = 1
        if view == "la_4ch":
            seg[24 : 24 + h, 20:28, 0, t] = 2
    return seg


def write_subject(root, eid, views=("sa",), seed=0):
    """Images (smooth noise, bright blood) and segmentations of ``views`` for subject ``eid``; returns the folder."""
    d = os.path.join(root, eid)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for view in views:
        seg = sax_labels() if view == "sa" else lax_labels(view)
        lax = view != "sa"
        spacing = (1.8, 1.8, 6.0) if lax else SPACING
        aff = rotated_affine(spacing, angle=25.0 + 40 * lax)
        image = (rng.random(seg.shape) * 0.2 + 0.4 * (seg == 1) + 0.2 * (seg > 1)).astype(np.float32)
        save(os.path.join(d, f"{view}.nii.gz"), image, aff, spacing)
        if view != "la_3ch":
            save(os.path.join(d, f"seg_{view}.nii.gz"), seg, aff, spacing)
    return d


def ventricular_truth():
    """ukbb_cardiac ventricular values from the construction parameters (not from counting the files)."""
    voxel_ml = np.prod(SPACING) / 1000
    n_z = len(LV_SLICES)
    lv = n_z * LV_SIDE.astype(float) ** 2 * voxel_ml
    rv = n_z * 4 * (LV_SIDE + 4.0) * voxel_ml
    myo = n_z * ((LV_SIDE[0] + 4.0) ** 2 - LV_SIDE[0] ** 2) * voxel_ml
    es = 5  # first frame of the smallest LV
    hr = 60 / (NT * DT_MS / 1000)
    return {
        "LVEDV (mL)": lv[0], "LVESV (mL)": lv[es], "LVSV (mL)": lv[0] - lv[es],
        "LVEF (%)": 100 * (lv[0] - lv[es]) / lv[0], "LVCO (L/min)": (lv[0] - lv[es]) * hr / 1000,
        "LVM (g)": 1.05 * myo, "RVEDV (mL)": rv[0], "RVESV (mL)": rv[es], "RVSV (mL)": rv[0] - rv[es],
        "RVEF (%)": 100 * (rv[0] - rv[es]) / rv[0],
    }  # fmt: skip


def write_csvs(root, eids, skip_pheno=(), skip_dis=()):
    rng = np.random.default_rng(1)
    with open(os.path.join(root, "phenotypes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["eid", *ALL_PHENOTYPES])
        w.writerows([[e, *rng.normal(50, 5, len(ALL_PHENOTYPES)).round(3)] for e in eids if e not in skip_pheno])
    with open(os.path.join(root, "diseases.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["eid", *DISEASES])
        w.writerows([[e, i % 2, (i // 2) % 2, 0] for i, e in enumerate(eids) if e not in skip_dis])


@pytest.fixture(scope="module")
def sax_only(tmp_path_factory):
    """Three SAX-only subjects and one complete subject."""
    root = str(tmp_path_factory.mktemp("saxonly"))
    for i, eid in enumerate(("1", "2", "3")):
        write_subject(root, eid, seed=i)
    write_subject(root, "4", views=("la_2ch", "la_3ch", "la_4ch", "sa"), seed=4)
    write_csvs(root, ["1", "2", "3", "4"])
    return root


# ---- incomplete cohorts ----------------------------------------------------------------------------------------
def test_phenotypes_of_sax_only_cohort(sax_only, tmp_path, caplog):
    out = str(tmp_path / "pheno.csv")
    with caplog.at_level("INFO", logger="kmtr_monai.data"):
        write_cohort_phenotypes(sax_only, out)
    with open(out) as f:
        rows = {r["eid"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["1", "2", "3", "4"]
    truth = ventricular_truth()
    for eid, row in rows.items():
        for name, value in truth.items():
            assert float(row[name]) == pytest.approx(value, rel=1e-5), (eid, name)
        atrial = [n for n in ALL_PHENOTYPES if n.startswith(("LA", "RA"))]
        if eid == "4":
            assert all(math.isfinite(float(row[n])) for n in atrial)
        else:
            assert all(row[n] == "" for n in atrial), row  # empty cells, not "nan"
    logged = caplog.text
    for eid in ("1", "2", "3"):
        assert f"subject {eid}: LA phenotypes not computed: missing seg_la_2ch.nii.gz, seg_la_4ch.nii.gz" in logged
        assert f"subject {eid}: RA phenotypes not computed: missing seg_la_4ch.nii.gz" in logged
    assert "subject 4:" not in logged
    assert read_bad_subjects(str(tmp_path / "bad_subjects.csv")) == []


def test_datalist_missing_views_policy(sax_only, tmp_path):
    with pytest.raises(BadSubjectError) as err:
        write_datalist(sax_only, out=str(tmp_path / "fail" / "dl.json"))
    assert "'1'" in str(err.value) and "la_2ch.nii.gz" in str(err.value) and "--missing-views invalid" in str(err.value)

    out = write_datalist(sax_only, out=str(tmp_path / "keep" / "dl.json"), missing_views="invalid", val_fraction=0.25,
                         test_fraction=0.25, preset="tiny")  # fmt: skip
    eids = sorted(i["eid"] for s in ("train", "val", "test") for i in read_datalist(out, s))
    assert eids == ["1", "2", "3", "4"]
    assert read_bad_subjects(str(tmp_path / "keep" / "bad_subjects.csv")) == []

    seg_only = str(tmp_path / "segonly")  # a subject with segmentations but no image is never kept
    shutil.copytree(sax_only, seg_only)
    os.remove(os.path.join(seg_only, "3", "sa.nii.gz"))
    with pytest.raises(BadSubjectError, match="'3': none of the view files"):
        write_datalist(seg_only, out=str(tmp_path / "segonly.json"), missing_views="invalid")

    out = write_datalist(sax_only, out=str(tmp_path / "skip" / "dl.json"), missing_views="skip", val_fraction=0.0,
                         test_fraction=0.0)  # fmt: skip
    assert [i["eid"] for i in read_datalist(out, "train")] == ["4"]
    bad = read_bad_subjects(str(tmp_path / "skip" / "bad_subjects.csv"))
    assert sorted({r["eid"] for r in bad}) == ["1", "2", "3"]
    assert {r["file"] for r in bad} == {"la_2ch.nii.gz", "la_3ch.nii.gz", "la_4ch.nii.gz", "seg_la_2ch.nii.gz",
                                        "seg_la_4ch.nii.gz"}  # fmt: skip


def test_loader_flags_missing_views_invalid(sax_only):
    load = LoadCohortSubjectd(sax_only, n_sax=2, n_frames=4, crop=32, missing_views="invalid", crop_centre="image",
                              return_geometry=True)  # fmt: skip
    out = load({"eid": "2"})
    assert out["crop_centre"].tolist() == [[-1, -1]] * 3 + [[NX // 2, NY // 2]] * 2
    assert out["source_slice"].tolist() == [-1, -1, -1, 4, 5]
    assert out["image"].shape == (5, 4, 32, 32) and out["seg"].shape == (5, 4, 32, 32)
    torch.testing.assert_close(out["view_valid"], torch.tensor([0.0, 0, 0, 1, 1]))
    torch.testing.assert_close(out["seg_valid"], torch.tensor([0.0, 0, 0, 1, 1]))
    assert not out["image"][:3].any() and not out["seg"][:3].any()
    assert float(out["image"][3:].min()) == 0.0 and float(out["image"][3:].max()) == 1.0
    # SAX slices: 2 apex-wards of the first LV slice (z=2) -> z4, z5; frames round(i * 11 / 3); image-centred crop
    frames = frame_indices(NT, 4)
    ref = sax_labels()[:, :, [4, 5]][..., frames]  # (X, Y, 2, 4), labels unified: LV 1, Myo 2, RV 3
    x0, y0 = NX // 2 - 16, NY // 2 - 16
    expected = np.zeros((2, 4, 32, 32), np.int64)
    for s in range(2):
        for k in range(4):
            for i in range(32):
                for j in range(32):
                    if 0 <= x0 + i < NX and 0 <= y0 + j < NY:
                        expected[s, k, i, j] = ref[x0 + i, y0 + j, s, k]
    np.testing.assert_array_equal(out["seg"][3:].numpy(), expected)
    assert (out["seg"][3:] == LABELS["RV"]).any()
    # complete subject: everything valid; the default policy keeps failing clearly on a SAX-only subject
    full = load({"eid": "4"})
    torch.testing.assert_close(full["view_valid"], torch.ones(5))
    torch.testing.assert_close(full["seg_valid"], torch.tensor([1.0, 0, 1, 1, 1]))
    with pytest.raises(FileNotFoundError, match="'2': missing file 'la_2ch.nii.gz'"):
        LoadCohortSubjectd(sax_only, n_sax=2, n_frames=4, crop=32)({"eid": "2"})
    with pytest.raises(ValueError, match="kmtr datalist --missing-views skip"):
        LoadCohortSubjectd(sax_only, n_sax=2, n_frames=4, crop=32, missing_views="skip")
    with pytest.raises(FileNotFoundError, match="none of the view files"):
        LoadCohortSubjectd(sax_only, n_sax=2, n_frames=4, crop=32, views=("la_2ch",), missing_views="invalid")(
            {"eid": "2"}
        )


def test_missing_views_reach_a_network_as_zeros(sax_only):
    """The k-space chain and the tiny k-space MAE run on a SAX-only subject: finite loss, no crash."""
    from kmtr_monai.networks import build_kspace_mae
    from kmtr_monai.transforms import ComplexToChanneld, FFT2cd, RandKspaceMaskd, RandSmoothPhased

    chain = [
        RandSmoothPhased("image", output_key="kspace_full", seed_key="eid"),
        FFT2cd("kspace_full"),
        RandKspaceMaskd("kspace_full", output_key="kspace", mask_key="mask", accelerations=(4,), seed_key="eid"),
        ComplexToChanneld(["kspace", "kspace_full"]),
    ]
    kwargs = {"n_sax": 2, "n_frames": 4, "crop": 32, "missing_views": "invalid"}
    ds = make_dataset([{"eid": "1"}, {"eid": "4"}], sax_only, kwargs, transforms=chain)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    torch.manual_seed(0)
    net = build_kspace_mae("tiny")
    loss = net.loss(net(batch["kspace"], batch["mask"], batch["kspace_full"]))
    assert torch.isfinite(loss) and batch["view_valid"].tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]


# ---- one bad subject of each kind -----------------------------------------------------------------------------
BAD = {  # eid: (breakage, file at fault)
    "10": ("missing", "sa.nii.gz"),
    "11": ("empty", "la_2ch.nii.gz"),
    "12": ("truncated", "sa.nii.gz"),
    "13": ("corrupt", "seg_sa.nii.gz"),
    "14": ("shape", "la_4ch.nii.gz"),
    "15": ("dtype", "la_3ch.nii.gz"),
    "16": ("nan", "sa.nii.gz"),
    "17": ("inf", "la_3ch.nii.gz"),
    "18": ("affine", "seg_la_2ch.nii.gz"),
    "19": ("label", "seg_sa.nii.gz"),
    "20": ("no_phenotype_row", "phenotypes.csv"),
    "21": ("no_disease_row", "diseases.csv"),
}
GOOD = ("1", "2", "3", "4")
ALL_VIEWS = ("la_2ch", "la_3ch", "la_4ch", "sa")


def break_subject(d, kind):
    p = lambda f: os.path.join(d, f)  # noqa: E731
    sa_aff = rotated_affine(SPACING)
    if kind == "missing":
        os.remove(p("sa.nii.gz"))
    elif kind == "empty":
        open(p("la_2ch.nii.gz"), "wb").close()
    elif kind == "truncated":
        raw = open(p("sa.nii.gz"), "rb").read()
        open(p("sa.nii.gz"), "wb").write(raw[: len(raw) // 2])
    elif kind == "corrupt":
        open(p("seg_sa.nii.gz"), "wb").write(b"\x1f\x8b\x08 this is not deflate data at all" * 4)
    elif kind == "shape":
        save(p("la_4ch.nii.gz"), np.ones((NX, NY, 2, NT), np.float32), np.eye(4), (1.8, 1.8, 6.0))
    elif kind == "dtype":
        save(p("la_3ch.nii.gz"), np.ones((NX, NY, 1, NT), np.complex64), np.eye(4), (1.8, 1.8, 6.0))
    elif kind in ("nan", "inf"):
        name = "sa.nii.gz" if kind == "nan" else "la_3ch.nii.gz"
        img = nib.load(p(name))
        arr = np.asarray(img.dataobj).copy()
        arr[3, 4, 0, 5] = np.nan if kind == "nan" else np.inf
        save(p(name), arr, img.affine, img.header.get_zooms()[:3])
    elif kind == "affine":
        img = nib.load(p("seg_la_2ch.nii.gz"))
        aff = img.affine.copy()
        aff[:3, 3] += (2.0, 0.0, 0.0)  # shifted by 2 mm: no longer overlays its image
        save(p("seg_la_2ch.nii.gz"), np.asarray(img.dataobj), aff, (1.8, 1.8, 6.0))
    elif kind == "label":
        seg = sax_labels()
        seg[0, 0, 0, 0] = 5
        save(p("seg_sa.nii.gz"), seg, sa_aff)


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad"))
    for i, eid in enumerate((*GOOD, *BAD)):
        d = write_subject(root, eid, views=ALL_VIEWS, seed=i)
        if eid in BAD:
            break_subject(d, BAD[eid][0])
    write_csvs(root, [*GOOD, *BAD], skip_pheno=("20",), skip_dis=("21",))
    return root


def test_check_subject_finds_each_fault(bad_cohort):
    for eid in GOOD:
        assert check_subject(bad_cohort, eid, n_frames=4, n_sax=2) == []
    for eid, (kind, file) in BAD.items():
        if file.endswith(".csv"):
            continue
        problems = check_subject(bad_cohort, eid, n_frames=4, n_sax=2)
        assert problems and problems[0].file == file and problems[0].eid == eid, (kind, problems)
        assert f"'{eid}'" in str(problems[0]) and file in str(problems[0])


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_datalist_bad_subjects(bad_cohort, tmp_path, policy):
    out = str(tmp_path / "dl.json")
    if policy == "fail":
        with pytest.raises(BadSubjectError, match="'20'.*phenotypes.csv.*and 11 more problems"):
            write_datalist(bad_cohort, out=out, on_bad_subject="fail")
        assert not os.path.exists(out)
    else:
        write_datalist(bad_cohort, out=out, on_bad_subject="skip", val_fraction=0.25, test_fraction=0.25)
        eids = sorted(i["eid"] for s in ("train", "val", "test") for i in read_datalist(out, s))
        assert eids == sorted(GOOD)
        item = read_datalist(out, "train")[0]
        assert len(item["phenotypes"]) == len(PHENOTYPES)
    rows = read_bad_subjects(str(tmp_path / "bad_subjects.csv"))
    assert {(r["eid"], r["file"]) for r in rows} == {(e, f) for e, (_, f) in BAD.items()}
    reasons = {r["eid"]: r["reason"] for r in rows}
    for eid, words in {"10": "missing file", "11": "empty", "12": "cannot read", "13": "cannot read",
                       "14": "Z=1", "15": "complex", "16": "NaN", "17": "1 Inf", "18": "affine differs",
                       "19": "labels [5]", "20": "without a row", "21": "without a row"}.items():  # fmt: skip
        assert words in reasons[eid], (eid, reasons[eid])


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_phenotypes_bad_subjects(bad_cohort, tmp_path, policy):
    """``kmtr phenotypes`` reads segmentations only: the corrupt and wrongly labelled ones are bad subjects."""
    out = str(tmp_path / "pheno.csv")
    if policy == "fail":
        with pytest.raises(BadSubjectError, match="'13'.*seg_sa.nii.gz"):
            write_cohort_phenotypes(bad_cohort, out, on_bad_subject="fail")
        assert not os.path.exists(out)
        assert [r["eid"] for r in read_bad_subjects(str(tmp_path / "bad_subjects.csv"))] == ["13"]  # stops at first
        return
    write_cohort_phenotypes(bad_cohort, out, on_bad_subject="skip")
    with open(out) as f:
        eids = [r["eid"] for r in csv.DictReader(f)]
    assert eids == [e for e in (*GOOD, *BAD) if e not in ("13", "19")]
    rows = read_bad_subjects(str(tmp_path / "bad_subjects.csv"))
    assert [(r["eid"], r["file"]) for r in rows] == [("13", "seg_sa.nii.gz"), ("19", "seg_sa.nii.gz")]


@pytest.mark.parametrize("eid", [e for e in BAD if not BAD[e][1].endswith(".csv")])
def test_loader_names_the_file_of_each_fault(bad_cohort, eid):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        LoadCohortSubjectd(bad_cohort, n_sax=2, n_frames=4, crop=16)({"eid": eid})
    assert f"'{eid}'" in str(err.value) and BAD[eid][1] in str(err.value)
