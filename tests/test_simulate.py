"""Tests of the synthetic cohort generator (kmtr_monai.simulate), tiny preset, a few subjects."""

from __future__ import annotations

import csv
import json
import math
import os

import nibabel as nib
import numpy as np
import pytest

from kmtr_monai.constants import ALL_PHENOTYPES, DISEASE_PREVALENCE, DISEASES, IMAGE_FILES, SEG_FILES
from kmtr_monai.presets import COHORT_PRESETS
from kmtr_monai.simulate import sample_subject, simulate_cohort
from kmtr_monai.simulate import writer as writer_mod
from kmtr_monai.simulate.geometry import (APEX_WALL, BASE_WALL, _wall_thickness, cardiac_shapes, cycle_curves,
                                          ellipsoid_sd, heart_frame, lv_epi_sd, lv_shapes, truncated_sd,
                                          truncated_volume, wall_profile)
from kmtr_monai.simulate.render import render_subject

N_SUBJECTS = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort"))
    simulate_cohort(root, subjects=N_SUBJECTS, preset="tiny", seed=0, workers=1, preview=True)
    return root


def _load(path):
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_layout_files_shapes_and_headers(cohort):
    preset = COHORT_PRESETS["tiny"]
    eids = sorted(d for d in os.listdir(cohort) if os.path.isdir(os.path.join(cohort, d)))
    assert eids == ["1000001", "1000002", "1000003"]
    assert {"phenotypes.csv", "diseases.csv", "cohort.json", "preview.png"} <= set(os.listdir(cohort))
    with open(os.path.join(cohort, "preview.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    meta = json.load(open(os.path.join(cohort, "cohort.json")))
    assert meta["seed"] == 0 and meta["preset"] == "tiny" and len(meta["subjects"]) == N_SUBJECTS
    assert meta["version"] == "2.6.0"
    for eid, latent in zip(eids, meta["subjects"]):
        files = set(os.listdir(os.path.join(cohort, eid)))
        assert files == set(IMAGE_FILES.values()) | set(SEG_FILES.values())
        for view, name in {**IMAGE_FILES, **{f"seg_{k}": v for k, v in SEG_FILES.items()}}.items():
            data, img = _load(os.path.join(cohort, eid, name))
            n_z = preset["sax_slices"] if view in ("sa", "seg_sa") else 1
            assert data.shape == (preset["matrix"], preset["matrix"], n_z, preset["frames"]), (view, data.shape)
            assert data.dtype == np.int16
            zooms = img.header.get_zooms()
            assert zooms[:2] == pytest.approx((preset["pixel_mm"],) * 2)
            dz = preset["slice_spacing_mm"] if n_z > 1 else preset["slice_thickness_mm"]
            assert zooms[2] == pytest.approx(dz, rel=1e-5)
            # pixdim[4] is the frame interval in ms: HR = 60 / (T dt)
            hr = 60000.0 / (preset["frames"] * zooms[3])
            assert hr == pytest.approx(latent["heart_rate_bpm"], rel=1e-4)
            assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), zooms[:3], rtol=1e-4)
            assert np.allclose(img.get_qform(), img.affine, atol=1e-3)


def test_labels_present_and_ed_larger_than_es(cohort):
    for eid in ("1000001", "1000002", "1000003"):
        d = os.path.join(cohort, eid)
        sa, _ = _load(os.path.join(d, SEG_FILES["sa"]))
        l2, _ = _load(os.path.join(d, SEG_FILES["la_2ch"]))
        l4, _ = _load(os.path.join(d, SEG_FILES["la_4ch"]))
        assert set(np.unique(sa)) == {0, 1, 2, 3}
        assert set(np.unique(l2)) == {0, 1}
        assert set(np.unique(l4)) == {0, 1, 2}
        lv = (sa == 1).sum(axis=(0, 1, 2))
        assert lv[0] > 1.2 * lv.min()
        assert ((l2 == 1).sum(axis=(0, 1, 2)) > 0).all() and ((l4 == 2).sum(axis=(0, 1, 2)) > 0).all()


def test_phenotypes_csv_recomputed_from_segmentations(cohort):
    from kmtr_monai.data.phenotypes import compute_phenotypes

    rows = _csv(os.path.join(cohort, "phenotypes.csv"))
    assert list(rows[0]) == ["eid", *ALL_PHENOTYPES]
    for row in rows:
        values = compute_phenotypes(os.path.join(cohort, row["eid"]))
        for name in ALL_PHENOTYPES:
            assert float(row[name]) == pytest.approx(values[name], rel=1e-5, abs=1e-6), name
        assert 50 < values["LVEDV (mL)"] < 300 and 35 < values["LVEF (%)"] < 80
    dis = _csv(os.path.join(cohort, "diseases.csv"))
    assert list(dis[0]) == ["eid", *DISEASES]
    meta = json.load(open(os.path.join(cohort, "cohort.json")))
    for row, latent in zip(dis, meta["subjects"]):
        assert row["eid"] == latent["eid"] and all(int(row[d]) == latent[d] for d in DISEASES)


def test_views_overlay_in_one_world_frame(cohort):
    """Heart-local landmarks (LV centre, LA and RA centres at ED) land on their labels in every view, and the
    intensities along the intersection line of a SAX plane and the 4ch plane agree between the two files."""
    meta = json.load(open(os.path.join(cohort, "cohort.json")))
    preset = COHORT_PRESETS["tiny"]
    for latent in meta["subjects"]:
        d = os.path.join(cohort, latent["eid"])
        origin, axes = heart_frame(latent)
        shapes = cardiac_shapes(latent, preset["frames"])
        lv_centre = origin + axes[:, 2] * 0.4 * shapes["lv"]["L_ed"]
        la, ra = shapes["la"], shapes["ra"]
        la_centre = origin + axes @ np.array([la["x1"], la["x2"], la["x3"][0]])
        ra_centre = origin + axes @ np.array([ra["x1"], ra["x2"], ra["x3"][0]])

        def voxel(img, world):
            return np.linalg.solve(img.affine, np.append(world, 1.0))[:3]

        seg, img = _load(os.path.join(d, SEG_FILES["sa"]))
        i, j, k = np.rint(voxel(img, lv_centre)).astype(int)
        assert seg[i, j, k, 0] == 1
        for view, centre, label in (("la_2ch", la_centre, 1), ("la_4ch", la_centre, 1), ("la_4ch", ra_centre, 2)):
            seg, img = _load(os.path.join(d, SEG_FILES[view]))
            v = voxel(img, centre)
            assert abs(v[2]) < 1.25  # the chamber centre lies within 10 mm of the LAX plane (planning error)
            assert seg[int(round(v[0])), int(round(v[1])), 0, 0] == label, (latent["eid"], view)
        # intersection of SAX slice k (through the LV centre) and the 4ch plane
        sa, sa_img = _load(os.path.join(d, IMAGE_FILES["sa"]))
        la4, la4_img = _load(os.path.join(d, IMAGE_FILES["la_4ch"]))
        n_sa, n_4 = sa_img.affine[:3, 2], la4_img.affine[:3, 2]
        p_sa = sa_img.affine[:3, 3] + k * n_sa
        direction = np.cross(n_sa, n_4)
        direction /= np.linalg.norm(direction)
        # a point on both planes: solve the two plane equations plus a third one fixing the position on the line
        a = np.stack([n_sa, n_4, direction])
        p0 = np.linalg.solve(a, [n_sa @ p_sa, n_4 @ la4_img.affine[:3, 3], direction @ lv_centre])
        pts = p0 + np.linspace(-90, 90, 181)[:, None] * direction
        vals = []
        for data, im in ((sa, sa_img), (la4, la4_img)):
            vox = np.rint(np.linalg.solve(im.affine, np.c_[pts, np.ones(len(pts))].T)[:3].T).astype(int)
            inside = ((vox[:, :2] >= 0) & (vox[:, :2] < data.shape[0])).all(1)
            vals.append((vox, inside))
        ok = vals[0][1] & vals[1][1]
        assert ok.sum() > 20
        a_sa = sa[vals[0][0][ok, 0], vals[0][0][ok, 1], vals[0][0][ok, 2], 0].astype(float)
        a_4 = la4[vals[1][0][ok, 0], vals[1][0][ok, 1], 0, 0].astype(float)
        assert np.corrcoef(a_sa, a_4)[0, 1] > 0.6


def test_determinism_and_worker_independence(cohort, tmp_path):
    """Same seed -> byte-identical arrays and CSVs, also with 2 worker processes and fewer subjects."""
    other = str(tmp_path / "again")
    simulate_cohort(other, subjects=2, preset="tiny", seed=0, workers=2)
    for eid in ("1000001", "1000002"):
        for name in (*IMAGE_FILES.values(), *SEG_FILES.values()):
            a, ia = _load(os.path.join(cohort, eid, name))
            b, ib = _load(os.path.join(other, eid, name))
            assert a.tobytes() == b.tobytes() and np.array_equal(ia.affine, ib.affine), (eid, name)
    assert _csv(os.path.join(other, "phenotypes.csv")) == _csv(os.path.join(cohort, "phenotypes.csv"))[:2]
    c = sample_subject(1, 0)
    assert c != sample_subject(0, 0) and c == sample_subject(1, 0)


@pytest.mark.parametrize("kwargs", [dict(subjects=0), dict(subjects=-3), dict(subjects=1.5), dict(subjects=True),
                                    dict(preset="huge"), dict(workers=0), dict(seed=-1)])  # fmt: skip
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
    out = tmp_path / "c"
    args = dict(subjects=1, preset="tiny") | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))[:6]):
        simulate_cohort(str(out), **args)
    assert not out.exists()


def test_unwritable_output_raises_permission_error(tmp_path, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(str(out), os.W_OK):  # running as root: permissions are not enforced, emulate them
            real = os.access
            monkeypatch.setattr(writer_mod.os, "access", lambda p, m: False if str(p) == str(out) else real(p, m))
        with pytest.raises(PermissionError, match="not writable"):
            simulate_cohort(str(out), subjects=1, preset="tiny")
        assert os.listdir(out) == []
    finally:
        out.chmod(0o700)


def test_failure_leaves_no_partial_subject(tmp_path, monkeypatch):
    calls = []

    def failing(subject_dir, p, preset):
        calls.append(p["eid"])
        if len(calls) == 2:  # second subject: write a file, then crash
            open(os.path.join(subject_dir, "sa.nii.gz"), "wb").close()
            raise RuntimeError("disk full")
        return real(subject_dir, p, preset)

    real = writer_mod.write_subject
    monkeypatch.setattr(writer_mod, "write_subject", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(str(tmp_path), subjects=3, preset="tiny")
    assert sorted(os.listdir(tmp_path)) == ["1000001"]  # complete subject kept, no partial or temporary folder


def test_chunked_rician_noise_is_one_draw(monkeypatch):
    """The Rician noise drawn in chunks into a reused buffer equals the magnitude with one ``torch.randn((2, *shape))``
    draw (n1 for every voxel, then n2): the generator stream of v2.4.0, so the images do not change."""
    import torch

    from kmtr_monai.simulate import render

    img = np.random.default_rng(0).random((3, 4, 16), dtype=np.float32)  # 192 values: chunks of 80, 80 and 32
    monkeypatch.setattr(render, "_NOISE_CHUNK", 80)
    noise = torch.randn((2, *img.shape), generator=torch.Generator().manual_seed(7)).mul_(0.1)
    expected = torch.hypot(noise[0] + torch.from_numpy(img), noise[1]).numpy()
    render._add_rician_noise(img, 0.1, torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(img, expected)


def test_prevalences_match_uk_biobank():
    draws = np.array([[sample_subject(7, i)[d] for d in DISEASES] for i in range(3000)])
    for j, name in enumerate(DISEASES):
        assert abs(draws[:, j].mean() - DISEASE_PREVALENCE[name]) < 0.03, name
    # hypertension and high blood pressure share the latent blood-pressure factor
    assert np.corrcoef(draws[:, 1], draws[:, 2])[0, 1] > 0.3


def test_geometry_analytic():
    # truncated-ellipsoid volume against a direct numerical integral of the disc areas π r² (1 - u²/lz²)
    r, lz, c = 25.0, 60.0, 18.0
    u = np.linspace(-c, lz, 200001)
    numeric = np.trapezoid(np.pi * r * r * (1 - u**2 / lz**2), u)
    assert truncated_volume(r, lz, c) == pytest.approx(numeric, rel=1e-8)
    assert truncated_volume(r, lz, 0.0) == pytest.approx(2 / 3 * math.pi * r * r * lz)
    r, lz, c = np.array([25.0, 18.0]), np.array([62.0, 52.0]), np.array([18.6, 15.6])
    w = _wall_thickness(r, lz, c, 80e3)
    assert w[1] > w[0]  # contraction thickens the wall
    # v2.3 wall: the cavity offset by w·wall_profile(z / L); its volume below the base plane, counted on a fine
    # axisymmetric grid (independent of the solver's grid), is the target myocardial volume
    for ri, lzi, ci, wi in zip(r, lz, c, w):
        rho, z = np.meshgrid(np.arange(0.05, ri + 20.0, 0.1), np.arange(0.1, lzi + ci + 10.0, 0.2), indexing="ij")
        cav = truncated_sd(rho * rho, z, ri, lzi, ci, np.inf)
        myo = (cav >= 0) & (lv_epi_sd(cav, z, wi, lzi + ci) < 0)
        assert (2 * np.pi * rho * 0.1 * 0.2)[myo].sum() == pytest.approx(80e3, rel=5e-3)
    # profile: full thickness over the mid-ventricle, thinner at the annular hinge and at the apical cap
    assert wall_profile(np.array([0.0, 0.45, 1.0])) == pytest.approx([BASE_WALL, 1.0, APEX_WALL])
    assert np.all(np.diff(wall_profile(np.linspace(0.0, 0.4, 50))) >= 0)
    # signed distance: 0 on the surface, exact along the axes near the surface, negative inside
    sd = ellipsoid_sd(np.array([30.0, 31.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 15.0]), 0.0, 30.0, 15.0, 50.0)
    np.testing.assert_allclose(sd[:3], [0.0, 1.0, -15.0], atol=0.05)
    assert abs(sd[3]) < 1e-9
    # bullet: equator radius r at z = c, base cut at z = 0, apex at z = c + lz
    tsd = truncated_sd(np.array([25.0**2, 0.0, 0.0, 0.0]), np.array([18.0, 78.0, 79.0, -1.0]), 25.0, 60.0, 18.0)
    np.testing.assert_allclose(tsd, [0.0, 0.0, 1.0, 1.0], atol=0.05)
    g, h, dt = cycle_curves(50, 60.0)
    assert g[0] == 0 and h[0] == 0 and g.max() == pytest.approx(1.0, abs=0.01) and dt == pytest.approx(20.0)
    assert abs(np.argmax(g) - np.argmax(h)) <= 1  # atria are maximal at end-systole (DESIGN §6)


@pytest.mark.parametrize("index", range(6))
def test_motion_and_wall_within_design_ranges(index):
    """Base descent 10-15 mm with a fixed apex, ED mid wall 5-10 mm, systolic thickening 25-75 % (DESIGN §6)."""
    p = sample_subject(11, index)
    g = np.array([0.0, 1.0])  # ED, ES
    lv = lv_shapes(p, g)
    apex = lv["b"] + lv["L"]
    assert apex[1] == pytest.approx(apex[0], abs=1e-9)
    assert 10.0 <= lv["b"][1] - lv["b"][0] <= 15.0
    assert 5.0 <= lv["w"][0] <= 10.0
    assert 0.25 <= lv["w"][1] / lv["w"][0] - 1 <= 0.75
    # v2.4: drawn 2.6-3.3 mm; the rendered free wall (first-order distance of the RV form) measures ~0.5 mm thicker,
    # 3-4 mm (benchmarks/cohort_realism.py)
    assert 2.6 <= p["rv_wall_mm"] <= 3.3


def test_lv_long_axis_shape_v23():
    """v2.3: the LV cavity is an ellipsoid about 1.7 times as long as it is wide (v2.2: a squat 1.5), widest at about a
    third of its length and narrower at the mitral annulus; its wall is thickest over the mid-ventricle."""
    ratios = []
    for index in range(40):
        p = sample_subject(13, index)
        lv = lv_shapes(p, np.zeros(1))
        r, lz, c, length = lv["r"][0], lv["Lz"][0], lv["c"][0], lv["L"][0]
        ratios.append(length / (2 * r))
        assert 0.25 <= c / length <= 0.4  # the equator (widest point) below the base, at ~1/3 of the length
        assert np.sqrt(1.0 - (c / lz) ** 2) < 0.93  # base narrower than the equator
        t = np.linspace(0.0, 1.0, 101)
        assert t[np.argmax(wall_profile(t))] < 0.6 and wall_profile(0.5) == 1.0
    assert 1.6 <= np.mean(ratios) <= 1.9 and min(ratios) >= 1.4 and max(ratios) <= 2.1


def test_standard_view_orientation_from_segmentations():
    """Every subject shows the heart in the standard orientation: RV left of the LV in SAX and RA left of the LA in
    4ch (image -x), within ±25° (the planned in-plane variation is within ±15°, plus tilt and shape)."""
    preset = COHORT_PRESETS["tiny"]
    angles = {"sa": [], "4ch": []}
    for index in range(8):
        views, _ = render_subject(sample_subject(5, index), preset)
        seg = views["sa"][1][..., 0]
        k = int(np.median(np.flatnonzero((seg == 3).any(axis=(0, 1)) & (seg == 1).any(axis=(0, 1)))))
        v = np.argwhere(seg[:, :, k] == 3).mean(0) - np.argwhere(seg[:, :, k] == 1).mean(0)
        angles["sa"].append(math.degrees(math.atan2(v[1], v[0])) % 360)
        seg4 = views["la_4ch"][1][:, :, 0, 0]
        v = np.argwhere(seg4 == 2).mean(0) - np.argwhere(seg4 == 1).mean(0)
        angles["4ch"].append(math.degrees(math.atan2(v[1], v[0])) % 360)
    for view, a in angles.items():
        assert np.all(np.abs(np.asarray(a) - 180.0) < 25.0), (view, a)
    rot = np.array([sample_subject(5, i)["inplane_rot_deg"] for i in range(200)])
    assert np.abs(rot).max() <= 15.0 and 3.0 < rot.std() < 10.0


def test_rendered_volumes_match_analytic_shapes():
    """With thin contiguous slices, the LV cavity / myocardium voxel volumes equal the analytic shape volumes."""
    p = sample_subject(3, 5) | {"hypokinesis": 0.0, "fov_shift_mm": [0.0] * 8, "plane_tilt_deg": [0.0] * 8}
    fine = dict(matrix=96, pixel_mm=1.5, frames=2, sax_slices=70, slice_spacing_mm=2.0, slice_thickness_mm=2.0)
    views, _ = render_subject(p, fine)
    seg = views["sa"][1]
    voxel_ml = 1.5 * 1.5 * 2.0 * 1e-3
    lv = cardiac_shapes(p, 2)["lv"]
    lv_ml = (seg[..., 0] == 1).sum() * voxel_ml
    assert lv_ml == pytest.approx(p["lv_edv_ml"], rel=0.04)
    assert (seg[..., 0] == 2).sum() * voxel_ml * 1.05 == pytest.approx(p["lv_mass_g"], rel=0.06)
    assert lv["r"][1] < lv["r"][0]
    rv_ml = (seg[..., 0] == 3).sum() * voxel_ml
    assert rv_ml == pytest.approx(p["rv_edv_ml"], rel=0.1)
    # mid-ventricular slice through the LV equator (z = c): the label annulus is as thick as the analytic wall
    from scipy import ndimage

    k = int(round((lv["c"][0] - p["sax_start_mm"]) / 2.0))
    s = seg[:, :, k, 0]
    a_lv, a_myo = (s == 1).sum() * 1.5**2, (s == 2).sum() * 1.5**2
    w_label = math.sqrt((a_lv + a_myo) / math.pi) - math.sqrt(a_lv / math.pi)
    assert w_label == pytest.approx(lv["w"][0] * wall_profile(lv["c"][0] / lv["L"][0]), abs=0.75)
    # papillary muscles / trabeculae: dark structures inside the cavity, labelled LV blood pool (no label holes)
    k = int(round((0.6 * lv["L"][0] - p["sax_start_mm"]) / 2.0))
    s, img = seg[:, :, k, 0], views["sa"][0][:, :, k, 0]
    blood = s == 1
    assert np.array_equal(ndimage.binary_fill_holes(blood), blood)
    assert (img[blood] < 0.6 * np.median(img[blood])).sum() >= 4
    # bSSFP contrast: blood / myocardium mean intensity 2-3 (DESIGN §6), eroded labels avoid partial volume
    ratio = img[ndimage.binary_erosion(blood)].mean() / img[ndimage.binary_erosion(s == 2)].mean()
    assert 2.0 <= ratio <= 3.0


def test_long_axis_anatomy_v21():
    """v2.1: atria sit on the (non-flat) AV plane, the aortic root leaves the LV base beside the mitral annulus and
    points to the base, and the AV leaflets are closed in systole and open in diastole."""
    from kmtr_monai.simulate.geometry import av_offset
    from kmtr_monai.simulate.render import aortic_root

    for index in range(4):
        p = sample_subject(7, index)
        shapes = cardiac_shapes(p, 50)
        lv, rv, la, ra = shapes["lv"], shapes["rv"], shapes["la"], shapes["ra"]
        k_la, k_ra = p["atrial_truncation"]
        for at, k in ((la, k_la), (ra, k_ra)):  # the atrial cut is the AV plane at the atrial axis, every frame
            plane = lv["b"] + av_offset(at["x1"], at["x2"], p, lv["r_ed"])
            assert np.allclose(at["x3"] + k * at["c"], plane)
        # the tricuspid annulus (RV side) lies apical to the mitral annulus
        assert av_offset(ra["x1"], ra["x2"], p, lv["r_ed"]) > av_offset(la["x1"], la["x2"], p, lv["r_ed"])
        start, up = aortic_root(p, shapes)
        assert start[2] == pytest.approx(lv["b"][0] + av_offset(start[0], start[1], p, lv["r_ed"]))
        assert np.hypot(start[0], start[1]) < lv["r_ed"] and up[2] < -0.5  # from inside the base, towards the base
        es = int(np.argmax(lv["b"]))
        assert la["leaflet_deg"][0] == la["leaflet_deg"][es] == pytest.approx(12.0)
        assert la["leaflet_deg"].max() > 60.0 and np.argmax(la["leaflet_deg"]) > es


def test_rv_crescent_and_long_axis_extras_v22():
    """v2.2: the RV crescent meets the LV epicardium within 85° of the septum at mid-ventricle (no RV band beside the
    LV in 2ch), and the LA appendage / pulmonary veins are blood without a label (atrial volumes exclude them)."""
    from kmtr_monai.simulate.geometry import rv_form
    from kmtr_monai.simulate.render import _la_extras

    for index in range(6):
        p = sample_subject(9, index)
        shapes = cardiac_shapes(p, 2)
        lv, rv = shapes["lv"], shapes["rv"]
        r_epi = lv["r_ed"] + lv["w_ed"]
        th = np.deg2rad(np.arange(0.0, 180.0, 0.5))
        n, _ = rv_form(r_epi * np.cos(th), r_epi * np.sin(th), np.full_like(th, 0.4 * lv["L_ed"]), rv["d"], rv["a2r"],
                       rv["lr"], rv["sep"])  # fmt: skip
        inside = n < rv["lam"][0]
        assert inside[0] and not inside[th > np.deg2rad(85.0)].any()
        caps = _la_extras(p, shapes)
        assert len(caps) == 5 and all(abs(np.linalg.norm(c[1]) - 1.0) < 1e-9 for c in caps)
    views, _ = render_subject(sample_subject(9, 0), COHORT_PRESETS["tiny"])
    assert set(np.unique(views["la_2ch"][1])) == {0, 1}


def test_body_wall_v25_widths_and_fat_distribution():
    """v2.5 chest: measured along the three axes of a fine grid (the zero crossings of the skin and fat / muscle
    distances), the subcutaneous fat is 0.6x ``subcutaneous_fat_mm`` over the sternum, 1.1x at the flanks and 0.85x
    over the back, and men's chests are about 300 mm wide (DESIGN §6: real chests ~300 mm; v2.4 drew 236-280 mm)."""
    from kmtr_monai.simulate.render import body_wall

    def crossing(values, coords):  # first coordinate, walking outwards, where a distance turns positive
        i = int(np.argmax(values > 0))
        return coords[i - 1] + (coords[i] - coords[i - 1]) * -values[i - 1] / (values[i] - values[i - 1])

    r = np.arange(0.0, 260.0, 0.05, dtype=np.float32)
    zero = np.zeros_like(r)
    widths = []
    for index in range(40):
        p = sample_subject(23, index)
        fat = p["subcutaneous_fat_mm"]
        for x, y, factor in ((zero, r - 10.0, 0.6), (zero, -r - 10.0, 0.85), (r, zero - 10.0, 1.1)):
            skin, lean = body_wall(x, y, p)
            thickness = crossing(skin, r) - crossing(lean, r)
            assert thickness == pytest.approx(factor * fat, abs=0.1), (index, factor)
        if p["sex_male"]:
            skin, _ = body_wall(r, zero - 10.0, p)
            widths.append(2.0 * crossing(skin, r))
    assert len(widths) >= 10 and 285.0 < np.mean(widths) < 340.0


def test_body_wall_v23():
    """v2.3: the lungs stay inside the rib cage (the subcutaneous fat is fat all round, v2.2 let the lungs cut through
    it laterally), and the chest wall has ribs (dark cortex) and muscle; women have breasts outside the torso."""
    from kmtr_monai.simulate.render import _static_background, body_wall

    seen_breast = False
    for index in range(6):
        p = sample_subject(17, index)
        origin, axes = heart_frame(p)
        xs, ys = np.meshgrid(np.arange(-220.0, 220.0, 1.0), np.arange(-170.0, 170.0, 1.0), indexing="ij")
        pts = np.stack([xs, ys, np.full_like(xs, origin[2] - 30.0)], axis=-1).astype(np.float32)
        bg, _ = _static_background(pts, p, origin.astype(np.float32), axes.astype(np.float32), 1.8)
        torso, lean = body_wall(xs.astype(np.float32), ys.astype(np.float32), p)  # v2.5: fat thickness varies
        fat = (torso < -4.0) & (lean > 2.0)  # v2.5: clear of the dark fat-water boundary lines
        if fat.any():  # fat, darkened by at most 30 % on its thin fibrous septa (v2.4), never lung
            assert np.median(bg[fat]) == pytest.approx(p["fat"], rel=1e-4)
            assert np.all((bg[fat] > 0.69 * p["fat"]) & (bg[fat] <= 1.0001 * p["fat"]))
        wall = (lean < -5.0) & (lean > -45.0)
        assert (bg[wall] < 0.25 * p["muscle"]).any()  # rib cortex (and lung) inside the chest wall
        lateral = wall & (np.abs(xs) > 60.0)  # away from the spine and the sternum
        assert (np.abs(bg[lateral] - 0.5 * p["fat"]) < 1e-3).any()  # rib marrow
        assert (np.abs(bg[wall] - p["muscle"]) < 1e-3).mean() > 0.1  # muscle
        if not p["sex_male"]:
            outside = torso > 5.0
            seen_breast |= bool((bg[outside] > 0.5 * p["fat"]).sum() > 500)
    assert seen_breast


def test_lungs_follow_the_heart_through_the_pericardium_v26():
    """v2.6: in the mid-SAX slice at ED and ES, lung (dark) lies within 5 mm of a quarter or more of the heart's label
    outline on average (v2.5: about a fifth, the heart sat in a wide grey mediastinum), yet touches it at no more
    than a couple of pixels: inside the pericardial sac the lungs follow the heart 1.5 mm off its surface; the sac
    contains every labelled pixel of every frame."""
    from scipy import ndimage

    from kmtr_monai.simulate.render import _pericardial_sac, view_planes

    preset = COHORT_PRESETS["paper"]
    px, m = preset["pixel_mm"], preset["matrix"]
    reach = []
    for index in range(4):
        p = sample_subject(5, index) | {"snr_blood": 1e6}  # noise-free: dark means lung
        views, _ = render_subject(p, preset)
        img, seg = views["sa"][0], views["sa"][1]
        es = int(np.argmin((seg == 1).sum(axis=(0, 1, 2))))
        z = np.flatnonzero((seg[..., 0] == 1).any(axis=(0, 1)))
        k = int(z[len(z) // 2])
        for t in (0, es):
            heart = seg[:, :, k, t] > 0
            dark = img[:, :, k, t] < 0.15 * p["blood"] * p["gain"]
            outline = heart & ~ndimage.binary_erosion(heart)
            reach.append((ndimage.binary_dilation(dark, iterations=3) & outline).sum() / outline.sum())
            assert (ndimage.binary_dilation(heart) & ~heart & dark).sum() <= 2, (index, t)
        origin, axes = heart_frame(p)
        plane = view_planes(p, preset, origin, axes)["sa"]
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        pts = plane["origin"] + (ii[..., None] * plane["ex"] + jj[..., None] * plane["ey"]) * px
        pts = pts + k * plane["spacing"] * plane["normal"]
        sac = _pericardial_sac(((pts - origin) @ axes).astype(np.float32), cardiac_shapes(p, preset["frames"]), p)
        assert sac[(seg[:, :, k] > 0).any(axis=-1)].max() < -1.5
    assert np.mean(reach) > 0.27, reach


def test_field_by_plane_waves_matches_pointwise():
    """The bias × texture × coil × banding field, evaluated as matrix products of per-axis cos / sin tables, equals
    its formula evaluated point by point (float64) on every view."""
    from kmtr_monai.simulate.render import _Appearance, view_planes

    preset = COHORT_PRESETS["small"]
    m, px = preset["matrix"], preset["pixel_mm"]
    p = sample_subject(3, 1)
    look, (origin, axes) = _Appearance(p), heart_frame(p)
    for view, plane in view_planes(p, preset, origin, axes).items():
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        pts = plane["origin"] + (ii[..., None] * plane["ex"] + jj[..., None] * plane["ey"]) * px
        pts = pts[None] + (np.arange(plane["n_slices"]) * plane["spacing"])[:, None, None, None] * plane["normal"]
        wave = lambda q, k, ph, amp: np.cos(q @ k.T.astype(np.float64) + ph) @ amp  # noqa: E731
        ref = (wave(pts, look.tex_k, look.tex_phase, look.tex_w) + 1) * np.exp(
            wave(pts, look.bias_k, look.bias_phase, look.bias_amp))  # fmt: skip
        ref *= 0.5 + 0.5 * sum(w / look.coil_ref * np.exp(-np.abs(pts[..., 1] - c) / look.coil_d)
                               for w, c in zip(look.coil_w, look.coil_y))  # fmt: skip
        d = pts - look.band_iso
        quad = np.einsum("...i,...i->...", d * look.band_scale, d * look.band_scale)
        phase = d @ look.band_g + (1 + wave(d, look.band_k, look.band_k_ph, np.full(2, 0.175))) * quad + look.band_ph
        ref *= 1 - look.band_depth * np.exp(-(((phase % (2 * np.pi)) - np.pi) / look.band_w) ** 2)
        np.testing.assert_allclose(look.field(plane, m, px)[0], ref, atol=1e-4 * np.abs(ref).max())


def test_lv_section_and_interatrial_septum_v26():
    """v2.6: the LV section harmonics are zero-mean round the axis (areas change by (a2² + a3²)/2 only, so the LV
    volume still follows its target); in 4ch at ES the LA and RA labels are 3-8 mm apart, the septum between them
    (v2.5: 10-25 mm of mediastinum)."""
    from scipy import ndimage

    from kmtr_monai.simulate.geometry import lv_section

    th = np.linspace(-np.pi, np.pi, 3600, endpoint=False)
    for index in range(6):
        p = sample_subject(19, index)
        section = cardiac_shapes(p, 2)["lv"]["section"]
        r_mod, w_mod = lv_section(np.cos(th), np.sin(th), section)
        assert r_mod.mean() == pytest.approx(1.0, abs=1e-5) and w_mod.mean() == pytest.approx(1.0, abs=1e-5)
        assert np.mean(r_mod.astype(np.float64) ** 2) - 1.0 < 3e-3 and 1.07 < w_mod.max() < 1.19
    preset = COHORT_PRESETS["paper"]
    for index in range(3):
        seg4 = render_subject(sample_subject(5, index), preset)[0]["la_4ch"][1][:, :, 0]
        es = int(np.argmax((seg4 == 1).sum(axis=(0, 1))))
        gap = ndimage.distance_transform_edt(seg4[..., es] != 2)[seg4[..., es] == 1].min() * preset["pixel_mm"]
        assert 3.0 <= gap <= 8.0, (index, gap)
