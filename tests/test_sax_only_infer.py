"""Real-data inputs (issue 26): SAX-only subjects at their own pixel spacing go through ``kmtr infer``; the loader
sees every cohort at the preset's pixel spacing; segmentations come back on the input's grid.

The 1.4 mm SAX-only cohort is made from the synthetic generator's 4 mm output by SciPy (an interpolator independent
of the MONAI ``Spacing`` the loader uses), with its affine rescaled by hand.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from kmtr_monai.bundle import config_files
from kmtr_monai.constants import PHENOTYPES
from kmtr_monai.data.cohort import LoadCohortSubjectd, frame_indices

PIXEL_MM = 4.0  # the tiny preset's cohort.pixel_mm, which the synthetic cohort is written at
FINE_MM = 1.4
CROP, N_SAX, N_FRAMES = 32, 2, 4  # the tiny preset's loader sizes


def resample_file(src: Path, dst: Path, order: int) -> None:
    """``src`` (X, Y, Z, T) resampled in-plane from its spacing to FINE_MM with SciPy (``order`` 1: linear, 0:
    nearest); voxel (0, 0, z) keeps its world position."""
    img = nib.load(src)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    step = FINE_MM / PIXEL_MM  # source voxels per new voxel
    shape = (int(round((data.shape[0] - 1) / step)) + 1, int(round((data.shape[1] - 1) / step)) + 1, *data.shape[2:])
    out = ndimage.affine_transform(data, np.diag([step, step, 1.0, 1.0]), output_shape=shape, order=order,
                                   mode="nearest")  # fmt: skip
    affine = img.affine @ np.diag([step, step, 1.0, 1.0])
    new = nib.Nifti1Image(np.rint(out).astype(np.int16), affine)
    new.header.set_xyzt_units("mm", "msec")
    new.header.set_zooms((FINE_MM, FINE_MM, *img.header.get_zooms()[2:]))
    nib.save(new, dst)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """(synthetic 4 mm cohort, its SAX-only copy at 1.4 mm in-plane): 2 tiny-preset subjects."""
    from kmtr_monai.simulate import simulate_cohort

    base = tmp_path_factory.mktemp("issue26")
    full = base / "full"
    simulate_cohort(str(full), subjects=2, preset="tiny", seed=11)
    fine = base / "sax_fine"
    for subject in sorted(p for p in full.iterdir() if p.is_dir()):
        (fine / subject.name).mkdir(parents=True)
        resample_file(subject / "sa.nii.gz", fine / subject.name / "sa.nii.gz", order=1)
        resample_file(subject / "seg_sa.nii.gz", fine / subject.name / "seg_sa.nii.gz", order=0)
    return full, fine


def subjects(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


# ---- loader: geometry -----------------------------------------------------------------------------------------
def test_preset_spacing_reaches_the_loader_through_the_bundle_config():
    from monai.bundle import ConfigParser

    from kmtr_monai.presets import PRESETS

    for preset in ("tiny", "small"):
        for workflow, key in (("train", "load_subject"), ("inference", "from_folder")):
            parser = ConfigParser()
            parser.read_config(config_files("segment-unetr", workflow, preset))
            parser["bundle_root"] = "/nonexistent"
            load = parser.get_parsed_content(key)
            load = load[2] if isinstance(load, list) else load
            assert isinstance(load, LoadCohortSubjectd)
            assert load.pixel_mm == PRESETS[preset]["cohort"]["pixel_mm"]
            assert load.missing_views == ("invalid" if workflow == "inference" else "fail")


def test_synthetic_cohort_at_the_preset_spacing_loads_bit_identically(cohorts):
    """The synthetic cohort is written at the preset spacing: no resampling, every output equal to the loader
    without ``pixel_mm`` (the behaviour before it existed)."""
    full, _ = cohorts
    for subject in subjects(full):
        kw = dict(n_sax=N_SAX, n_frames=N_FRAMES, crop=CROP, return_geometry=True)
        old = LoadCohortSubjectd(str(full), **kw)({"eid": subject.name})
        new = LoadCohortSubjectd(str(full), pixel_mm=PIXEL_MM, **kw)({"eid": subject.name})
        for key in ("image", "seg", "seg_valid", "view_valid", "crop_centre", "source_slice", "view_affine"):
            assert torch.equal(old[key], new[key]), key


def test_a_fine_cohort_is_seen_at_the_preset_scale(cohorts):
    """The 1.4 mm copy loaded with pixel_mm=4 shows the heart at the size the model was trained on: its LV and
    myocardium areas (pixels × 16 mm²) and its image agree with the 4 mm original; without resampling the crop
    would show the heart (4 / 1.4)² times larger."""
    full, fine = cohorts
    kw = dict(n_sax=N_SAX, n_frames=N_FRAMES, crop=CROP, views=("sax_0", "sax_1"), crop_centre="label",
              return_geometry=True)  # fmt: skip
    for subject in subjects(full):
        ref = LoadCohortSubjectd(str(full), **kw)({"eid": subject.name})
        got = LoadCohortSubjectd(str(fine), pixel_mm=PIXEL_MM, **kw)({"eid": subject.name})
        raw = LoadCohortSubjectd(str(fine), **kw)({"eid": subject.name})
        assert tuple(got["image"].shape) == (2, N_FRAMES, CROP, CROP)
        assert torch.equal(got["source_slice"], ref["source_slice"])
        for label in (1, 2):
            a_ref, a_got = int((ref["seg"] == label).sum()), int((got["seg"] == label).sum())
            assert a_ref > 20 and abs(a_got - a_ref) <= 0.15 * a_ref, (label, a_ref, a_got)
            assert (raw["seg"] == label).sum() > 2 * a_ref  # without resampling: the crop is filled by the heart
        # the crop's grid: 4 mm voxels in the file's orientation, centred within a voxel of the original's centre
        cols = np.linalg.norm(got["view_affine"][0, :3, :2].numpy(), axis=0)
        np.testing.assert_allclose(cols, [PIXEL_MM, PIXEL_MM], rtol=1e-6)
        centre = lambda d: (d["view_affine"][0].numpy() @ [CROP // 2, CROP // 2, 0, 1])[:3]  # noqa: E731
        assert np.linalg.norm(centre(got) - centre(ref)) <= 2 * PIXEL_MM
        corr = np.corrcoef(got["image"].numpy().ravel(), ref["image"].numpy().ravel())[0, 1]
        assert corr > 0.9, corr


def test_any_frame_count(cohorts, tmp_path):
    """T_source < n_frames repeats frames (``frame_indices``), T_source > n_frames subsamples them."""
    full, _ = cohorts
    subject = subjects(full)[0]
    img = nib.load(subject / "sa.nii.gz")
    data = np.asanyarray(img.dataobj)
    for t in (3, data.shape[3]):
        (tmp_path / str(t) / subject.name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data[..., :t], img.affine, img.header), tmp_path / str(t) / subject.name / "sa.nii.gz")
        out = LoadCohortSubjectd(str(tmp_path / str(t)), n_sax=N_SAX, n_frames=N_FRAMES, crop=CROP, load_seg=False,
                                 views=("sax_0",), crop_centre="image")({"eid": subject.name})  # fmt: skip
        z = (data.shape[2] - N_SAX) // 2  # no labels: the SAX range is centred
        ref = data[:, :, z][..., frame_indices(t, N_FRAMES)].astype(np.float32).transpose(2, 0, 1)
        cx, cy = data.shape[0] // 2, data.shape[1] // 2
        ref = ref[:, cx - CROP // 2: cx + CROP // 2, cy - CROP // 2: cy + CROP // 2]
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        np.testing.assert_allclose(out["image"][0].numpy(), ref, atol=1e-6)
        if t == 3:
            assert frame_indices(3, N_FRAMES).tolist() == [0, 1, 1, 2]
            assert torch.equal(out["image"][0, 1], out["image"][0, 2])


# ---- the source-grid writer ------------------------------------------------------------------------------------
def test_source_grid_writer_matches_a_world_coordinate_reference(cohorts, tmp_path):
    """Labels on the crop of the resampled grid, written back to the 1.4 mm input: every source voxel holds the
    label of the crop voxel nearest to its world position (NumPy reference), or 0 outside the crop."""
    from kmtr_monai.io.outputs import nearest_frames, write_source_niftis

    _, fine = cohorts
    subject = subjects(fine)[0]
    views = ("sax_0", "sax_1")
    d = LoadCohortSubjectd(str(fine), n_sax=N_SAX, n_frames=N_FRAMES, crop=CROP, load_seg=False, views=views,
                           return_geometry=True, pixel_mm=PIXEL_MM)({"eid": subject.name})  # fmt: skip
    pred = np.random.default_rng(0).integers(1, 6, size=(2, N_FRAMES, CROP, CROP))
    (path,) = write_source_niftis(str(tmp_path), subject.name, views, pred, d["view_affine"].numpy(), str(subject))
    src, out = nib.load(subject / "sa.nii.gz"), nib.load(path)
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine) and Path(path).name == "seg_sa.nii.gz"
    got = np.asanyarray(out.dataobj)
    ref = np.zeros(src.shape, dtype=np.int64)
    xs, ys = np.meshgrid(np.arange(src.shape[0]), np.arange(src.shape[1]), indexing="ij")
    frames = nearest_frames(src.shape[3], N_FRAMES)
    for v, z in enumerate(d["source_slice"].tolist()):
        world = src.affine @ np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z), np.ones(xs.size)])
        ij = np.linalg.inv(d["view_affine"][v].numpy()) @ world
        i, j = np.rint(ij[0]).astype(int), np.rint(ij[1]).astype(int)
        inside = (i >= 0) & (i < CROP) & (j >= 0) & (j < CROP) & (np.abs(ij[2]) < 0.5)
        for t in range(src.shape[3]):
            plane = np.zeros(xs.size, dtype=np.int64)
            plane[inside] = pred[v, frames[t], i[inside], j[inside]]
            ref[:, :, z, t] = plane.reshape(xs.shape)
    # nearest-neighbour ties (a source voxel exactly between two crop voxels) may round either way
    assert (got != ref).mean() < 0.01 and (got > 0).sum() == (ref > 0).sum()
    # frames between model frames copy the nearest one (ties to the earlier)
    taken = frame_indices(src.shape[3], N_FRAMES)
    assert [int(np.abs(taken - t).argmin()) for t in range(src.shape[3])] == frames.tolist()


# ---- kmtr infer --------------------------------------------------------------------------------------------------
def kmtr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("KMTR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kmtr_monai", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_segment_unetr_infers_sax_only_on_the_source_grid(cohorts, tmp_path, random_weights):
    """Default policy (invalid): no LAX outputs; seg_sa.nii.gz has sa.nii.gz's shape and affine; the foreground is
    the crop's footprint: 2 consecutive slices (the SAX range the loader centres without labels), an in-plane box of
    crop × 4 mm = 128 mm side in 1.4 mm voxels, every frame."""
    _, fine = cohorts
    weights = random_weights("segment-unetr", tmp_path / "w" / "models" / "model.pt", foreground=1)
    res = kmtr("infer", "--bundle", "segment-unetr", "--input", str(fine), "--out", str(tmp_path / "out"),
               "--preset", "tiny", "--weights", str(weights), "--device", "cpu")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for subject in subjects(fine):
        files = sorted(os.listdir(tmp_path / "out" / subject.name))
        assert files == ["seg_sa.nii.gz"], files  # no file for the views that were not given
        src, out = nib.load(subject / "sa.nii.gz"), nib.load(tmp_path / "out" / subject.name / "seg_sa.nii.gz")
        assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
        seg = np.asanyarray(out.dataobj)
        assert set(np.unique(seg).tolist()) == {0, 1}
        z = (src.shape[2] - N_SAX) // 2
        assert np.flatnonzero(seg.any(axis=(0, 1, 3))).tolist() == [z, z + 1]
        side = CROP * PIXEL_MM / FINE_MM  # the crop's side in source voxels
        for zz in (z, z + 1):
            for t in range(src.shape[3]):
                xs, ys = np.nonzero(seg[:, :, zz, t])
                assert 0 < xs.min() and xs.max() < src.shape[0] - 1 and 0 < ys.min() and ys.max() < src.shape[1] - 1
                assert abs(xs.max() - xs.min() + 1 - side) <= 1.5 and abs(ys.max() - ys.min() + 1 - side) <= 1.5
                assert abs(len(xs) - side**2) <= 2 * side + 2


def test_regress_infers_sax_only_cohort(cohorts, tmp_path, random_weights):
    _, fine = cohorts
    weights = random_weights("regress", tmp_path / "w" / "models" / "model.pt")
    res = kmtr("infer", "--bundle", "regress", "--input", str(fine), "--out", str(tmp_path / "out"),
               "--preset", "tiny", "--weights", str(weights), "--device", "cpu")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "phenotypes.csv")))
    assert [r["eid"] for r in rows] == [s.name for s in subjects(fine)]
    values = np.array([[float(r[n]) for n in PHENOTYPES] for r in rows])
    assert np.isfinite(values).all()
    assert not np.allclose(values[0], values[1])  # each subject's own images reached the network


def test_strict_policy_fails_in_one_line_naming_the_missing_file(cohorts, tmp_path, random_weights):
    _, fine = cohorts
    subject = subjects(fine)[0]
    weights = random_weights("segment-unetr", tmp_path / "w" / "models" / "model.pt")
    args = ["infer", "--bundle", "segment-unetr", "--input", str(subject), "--out", str(tmp_path / "out"),
            "--preset", "tiny", "--weights", str(weights), "--device", "cpu", "--missing-views", "fail"]  # fmt: skip
    res = kmtr(*args)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.strip()][-1]
    assert line.startswith("kmtr infer: error: MissingFileError: ")
    assert f"subject '{subject.name}'" in line and "missing file 'la_2ch.nii.gz'" in line
    assert str(subject / "la_2ch.nii.gz") in line and "missing_views" in line
    assert "the command was" not in line
    res = kmtr(*args, "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert "MissingFileError" in [x for x in res.stderr.splitlines() if x.strip()][-1]
