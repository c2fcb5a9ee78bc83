"""``kmtr infer`` on scanner k-space files (issue 26, item 5): an 8-coil ISMRMRD cine (2× readout oversampling, a
noise scan, 12 calibration-only lines, R = 4, oblique slices) and a fastMRI-style file, both "acquired" from one
subject of the synthetic tiny cohort (``scanner_files``), one slice per view of the tiny preset (3 LAX + 2 SAX, 4
frames, 32² crop at 4 mm: the headers' own grid), and a SAX stack alone (3 slices, ISMRMRD). Weights are random
(``random_weights``): the tests check the data path, geometry and errors, not the predictions. SAX-only HDF5 files
are checked against the image path's network input.
"""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("ismrmrd")

from kmtr_monai.constants import LAX_VIEWS, PHENOTYPES, sax_views  # noqa: E402
from kmtr_monai.io import read_kspace_h5, write_kspace_h5  # noqa: E402
from kmtr_monai.io.scanner import read_scanner_kspace  # noqa: E402
from kmtr_monai.io.scanner_model import to_kspace_item  # noqa: E402
from kmtr_monai.presets import PRESETS  # noqa: E402
from scanner_files import PIXEL_MM, acquire, internal_input, write_fastmri, write_ismrmrd, write_mat  # noqa: E402

TINY = PRESETS["tiny"]
VIEWS = [*LAX_VIEWS, *sax_views(TINY["n_sax"])]
SAX = list(sax_views(TINY["n_sax"]))
N_FRAMES, CROP = TINY["n_frames"], TINY["crop"]
THICKNESS = 8.0  # the headers' encoded FOV z


def oblique_geometry(n_slices: int):
    """Per-slice (position, read_dir, phase_dir, slice_dir) in patient LPS: a rotation about (1, 2, 3) by 35°, slice
    centres 10 mm apart along slice_dir from an off-centre point."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(35.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k  # Rodrigues
    read, phase, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    pos = np.array([12.0, -30.0, 55.0]) + 10.0 * np.arange(n_slices)[:, None] * normal
    rep = lambda v: np.repeat(v[None], n_slices, 0)  # noqa: E731
    return pos, rep(read), rep(phase), rep(normal)


def hand_world_ras(geometry, s: int, i: int, j: int) -> np.ndarray:
    """RAS world (mm) of model-grid voxel (i along ky, j along the readout) of slice s, computed by hand: the FOV
    centre (ISMRMRD ``position``) sits at voxel (CROP // 2, CROP // 2); LPS → RAS flips x and y."""
    pos, read, phase, _ = geometry
    lps = pos[s] + (i - CROP // 2) * PIXEL_MM * phase[s] + (j - CROP // 2) * PIXEL_MM * read[s]
    return np.array([-lps[0], -lps[1], lps[2]])


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from kmtr_monai.simulate import simulate_cohort

    base = tmp_path_factory.mktemp("scanner_infer")
    simulate_cohort(str(base / "cohort"), subjects=1, preset="tiny", seed=5)
    eid = sorted(p.name for p in (base / "cohort").iterdir() if p.is_dir())[0]
    sub = internal_input(base / "cohort", eid, VIEWS, n_frames=N_FRAMES, crop=CROP)
    coil_k, _ = acquire(sub["x"])  # (8, 5, 4, 32, 64): 2x oversampled readout
    geometry = oblique_geometry(len(VIEWS))
    stack = internal_input(base / "cohort", eid, sax_views(3), n_frames=N_FRAMES, crop=CROP)  # 3 SAX slices
    stack_geometry = oblique_geometry(3)
    return {
        "ismrmrd": write_ismrmrd(base / "cine.h5", coil_k, sub["mask"], geometry=geometry),
        "fastmri": write_fastmri(base / "cine_fastmri.h5", coil_k, sub["mask"]),
        "two_slices": write_fastmri(base / "sax_pair.h5", coil_k[:, 3:], sub["mask"][3:]),
        "sax_stack": write_ismrmrd(base / "cine_sax.h5", acquire(stack["x"])[0], stack["mask"],
                                   geometry=stack_geometry),
        "geometry": geometry, "stack_geometry": stack_geometry, "coil_k": coil_k, "mask": sub["mask"],
        "cohort": base / "cohort", "eid": eid,
    }  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory, random_weights):
    base = tmp_path_factory.mktemp("weights")
    return {b: random_weights(b, base / b / "models" / "model.pt") for b in ("regress", "recon")}


def infer(kmtr_main, bundle, weights, file, out, *extra):
    return kmtr_main("infer", "--bundle", bundle, "--input", str(file), "--out", str(out), "--preset", "tiny",
                     "--weights", str(weights[bundle]), "--device", "cpu", *extra)  # fmt: skip


def assert_model_input_is_the_item(out, file, views=VIEWS, **item_kw):
    """OUT/model_input/<stem>.h5 holds to_kspace_item's item for the file on the tiny grid: mask, views and geometry
    exact, k-space within 1e-5 of its maximum (CG-SENSE in float32 in another process, thread counts may differ)."""
    item = to_kspace_item(read_scanner_kspace(file), grid=(CROP, CROP), n_frames=N_FRAMES, views=views, **item_kw)
    got = read_kspace_h5(str(out / "model_input" / f"{item['eid']}.h5"), views, (len(views), N_FRAMES, CROP, CROP))
    np.testing.assert_array_equal(got["mask"], item["mask"])
    assert got["views"] == views and got["eid"] == item["eid"]
    np.testing.assert_allclose(got["kspace"], item["kspace"], rtol=0, atol=1e-5 * np.abs(item["kspace"]).max())
    np.testing.assert_allclose(got["affine"], item["affine"], atol=1e-9)
    np.testing.assert_allclose(got["pixel_spacing"], item["pixel_spacing"])
    assert got["frame_interval_ms"] == pytest.approx(item["frame_interval_ms"])
    return got


def assert_recon_output(file, geometry, s):
    """A recon output of the model grid at 40 ms, finite, whose affine maps voxels where the hand computation from
    the acquisition heads of slice ``s`` puts them (within 1e-4 mm: ISMRMRD stores the vectors in float32)."""
    img = nib.load(file)
    assert img.shape == (CROP, CROP, 1, N_FRAMES) and np.isfinite(img.get_fdata()).all()
    assert img.header.get_zooms()[3] == pytest.approx(40.0)  # 4 file frames -> 4 model frames
    for i, j in ((0, 0), (CROP - 1, 0), (0, CROP - 1), (7, 23), (CROP // 2, CROP // 2)):
        np.testing.assert_allclose((img.affine @ [i, j, 0, 1])[:3], hand_world_ras(geometry, s, i, j), atol=1e-4)
    np.testing.assert_allclose(img.affine[:3, 2], THICKNESS * geometry[3][s] * [-1, -1, 1], atol=1e-4)


def test_ismrmrd_recon_outputs_carry_the_scanner_affine(scans, weights, kmtr_main, tmp_path):
    """A dense bundle on the ISMRMRD file: per-view NIfTI outputs carrying the acquisition heads' affine."""
    code, _, err = infer(kmtr_main, "recon", weights, scans["ismrmrd"], tmp_path, "--frame-interval-ms", "40")
    assert code == 0, err[-3000:]
    assert_model_input_is_the_item(tmp_path, scans["ismrmrd"], frame_interval_ms=40.0)
    for s, view in enumerate(VIEWS):
        assert_recon_output(tmp_path / "cine" / f"recon_{view}.nii.gz", scans["geometry"], s)


def test_a_sax_stack_gives_outputs_for_the_sax_views_only(scans, weights, kmtr_main, tmp_path):
    """A SAX-only ISMRMRD file of 3 slices (fewer than the 5 views: a SAX stack under the default --slice-views
    auto): the model's 2 SAX views are its centred slices, as image inputs take them ((3 - 2) // 2 = 0: slices 0
    and 1); the LAX views are missing (default --missing-views invalid) and get no output; each output carries its
    slice's header affine."""
    code, _, err = infer(kmtr_main, "recon", weights, scans["sax_stack"], tmp_path, "--frame-interval-ms", "40")
    assert code == 0, err[-3000:]
    assert_model_input_is_the_item(tmp_path, scans["sax_stack"], views=SAX, slices=[0, 1], frame_interval_ms=40.0)
    assert sorted(p.name for p in (tmp_path / "cine_sax").iterdir()) == [f"recon_{v}.nii.gz" for v in SAX]
    for s, view in enumerate(SAX):
        assert_recon_output(tmp_path / "cine_sax" / f"recon_{view}.nii.gz", scans["stack_geometry"], s)


def test_a_sax_stack_takes_the_slices_image_inputs_take(scans):
    """The slices of a deeper SAX stack are those the image loader takes from the subject's sa.nii.gz at inference
    (no labels); a file of the view count is one slice per view unless told "sax"; errors name the file."""
    from kmtr_monai.data.cohort import LoadCohortSubjectd
    from kmtr_monai.io import ScannerFileError
    from kmtr_monai.io.scanner_input import choose_slices

    folder = scans["cohort"] / scans["eid"]
    n_z = nib.load(folder / "sa.nii.gz").shape[2]
    loaded = LoadCohortSubjectd(str(scans["cohort"]), TINY["n_sax"], N_FRAMES, CROP, load_seg=False,
                                return_geometry=True)({"eid": scans["eid"]})  # fmt: skip
    assert n_z > len(VIEWS) and choose_slices("f.h5", n_z, VIEWS) == (loaded["source_slice"][3:].tolist(), SAX)
    assert choose_slices("f.h5", 5, VIEWS) == ([0, 1, 2, 3, 4], VIEWS)
    assert choose_slices("f.h5", 5, VIEWS, "sax") == ([1, 2], SAX)
    errors = (((1, VIEWS), "f.h5: field 'slices': 1 slice(s) taken as a SAX stack, but the model takes 2 SAX views "
                           "['sax_0', 'sax_1']"),
              ((4, VIEWS, "all"), "f.h5: field 'slices': 4 slice(s), but the model takes 5 views"))  # fmt: skip
    for args, text in errors:
        with pytest.raises(ScannerFileError) as err:
            choose_slices("f.h5", *args)
        assert str(err.value).startswith(text)


def network_input(path, out) -> torch.Tensor:
    """The recon bundle's network input (3, S, T, H, W) for the inference input ``path``: the tiny inference
    config's ``model_input`` and ``preprocessing``, in this process."""
    from monai.bundle import ConfigParser

    from kmtr_monai.bundle import config_files
    from kmtr_monai.inference import input_items

    parser = ConfigParser()
    parser.read_config(config_files("recon", "inference", "tiny"))
    parser.update({"bundle_root": str(out), "input_path": str(path), "output_dir": str(out)})
    (item,) = input_items(parser.get_parsed_content("model_input"))
    return parser.get_parsed_content("preprocessing")(item)["image"]


def test_a_sax_only_hdf5_file_enters_the_network_as_a_sax_only_subject(scans, tmp_path):
    """Truth from the image path (subject folders): its network input written to an all-view file reads back
    bit-identically; that item's SAX rows alone give the all-view file's SAX rows; and the SAX rows of a SAX-only
    copy of the folder give that folder's whole network input (the LAX views: zero k-space and the eid's sampling
    mask, as the image path gives a missing view file)."""
    eid, folder = scans["eid"], scans["cohort"] / scans["eid"]
    sax_folder = tmp_path / "sax_only" / eid
    sax_folder.mkdir(parents=True)
    shutil.copy(folder / "sa.nii.gz", sax_folder / "sa.nii.gz")

    def to_file(net, views, name):  # the k-space and mask channels of ``views`` as a kmtr-kspace file
        rows = [VIEWS.index(v) for v in views]
        affine = np.tile(np.diag([PIXEL_MM, PIXEL_MM, THICKNESS, 1.0]), (len(rows), 1, 1))
        return write_kspace_h5(str(tmp_path / name), (net[0] + 1j * net[1])[rows], net[2, rows, ..., 0], views,
                               affine, (PIXEL_MM, PIXEL_MM), 40.0, eid=eid)  # fmt: skip

    full = network_input(folder, tmp_path / "out")
    all_views = network_input(to_file(full, VIEWS, "all.h5"), tmp_path / "out")
    assert torch.equal(all_views, full)
    assert torch.equal(network_input(to_file(full, SAX, "sax.h5"), tmp_path / "out")[:, 3:], all_views[:, 3:])
    sax_only = network_input(sax_folder, tmp_path / "out")
    assert not sax_only[:2, :3].any() and sax_only[2, :3].any()  # LAX: no k-space, a sampling mask
    assert torch.equal(network_input(to_file(sax_only, SAX, "sax_only.h5"), tmp_path / "out"), sax_only)


def test_fastmri_regress_with_virtual_coils(scans, weights, kmtr_main, tmp_path):
    """The global-output bundle on the fastMRI-style file, coils compressed to 4; no slice geometry or frame interval
    in the format: identity orientation at the header's spacing (slices along z), 1 per source frame."""
    code, _, err = infer(kmtr_main, "regress", weights, scans["fastmri"], tmp_path, "--virtual-coils", "4")
    assert code == 0, err[-3000:]
    (row,) = list(csv.DictReader(open(tmp_path / "phenotypes.csv")))
    assert row["eid"] == "cine_fastmri" and np.isfinite([float(row[n]) for n in PHENOTYPES]).all()
    assert "frame interval unknown" in err
    got = assert_model_input_is_the_item(tmp_path, scans["fastmri"], frame_interval_ms=1.0, n_virtual=4)
    for s in range(len(VIEWS)):
        expected = np.diag([PIXEL_MM, PIXEL_MM, THICKNESS, 1.0])
        expected[2, 3] = s * THICKNESS
        np.testing.assert_allclose(got["affine"][s], expected, atol=1e-9)


def test_cmrxrecon_model_input_assumes_the_preset_spacing(scans, tmp_path):
    """CMRxRecon .mat (no header): converted in-process with the model's pixel_mm and an identity orientation."""
    from kmtr_monai.inference import model_input

    k = scans["coil_k"][..., 16:48] * scans["mask"][None, ..., None]  # prescribed FOV, no oversampling
    mat = write_mat(tmp_path / "cine_sax.mat", "kspace_sub04", k.transpose(2, 1, 0, 3, 4))
    with pytest.warns(UserWarning, match="no pixel spacing in the file; assuming the model's 4 mm"):
        path = model_input(mat, tmp_path / "work", VIEWS, N_FRAMES, CROP, PIXEL_MM, frame_interval_ms=30.0)
    r = read_kspace_h5(path, VIEWS, (len(VIEWS), N_FRAMES, CROP, CROP))
    np.testing.assert_array_equal(r["mask"], scans["mask"])
    np.testing.assert_allclose(r["affine"][:, :3, :3], np.diag([PIXEL_MM, PIXEL_MM, 1.0])[None].repeat(len(VIEWS), 0))
    assert r["frame_interval_ms"] == 30.0
    own = shutil.copy(path, tmp_path / "own.h5")  # a kmtr-kspace file is taken as it is
    assert model_input(own, tmp_path / "work2", VIEWS, N_FRAMES, CROP, PIXEL_MM) == str(own)
    assert not (tmp_path / "work2").exists()


def test_bad_scanner_inputs_fail_in_one_line(scans, weights, kmtr_main, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not k-space")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(open(scans["ismrmrd"], "rb").read()[:4000])
    cases = [
        (text, [], "field '/': not an HDF5 file; expected ISMRMRD, fastMRI-style HDF5 or CMRxRecon .mat v7.3 (or a "
                   "kmtr-kspace HDF5 file)"),
        (cut, [], "key '/': not a readable HDF5 file (corrupt or truncated?)"),
        (scans["two_slices"], ["--slice-views", "all"], "field 'slices': 2 slice(s), but the model takes 5 views "
                                                        "['la_2ch', 'la_3ch', 'la_4ch', 'sax_0', 'sax_1']: one slice "
                                                        "per view, in that order"),
        (scans["sax_stack"], ["--missing-views", "fail"], "field 'slices': 3 slice(s) taken as a SAX stack: the "
                                                          "view(s) ['la_2ch', 'la_3ch', 'la_4ch'] are missing"),
    ]  # fmt: skip
    for file, extra, text in cases:
        code, _, err = infer(kmtr_main, "regress", weights, file, tmp_path / "out", *extra)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 1 and "Traceback" not in err, err[-3000:]
        assert lines[-1].startswith("kmtr infer: error: ") and str(file) in lines[-1], lines[-1]
        assert text in lines[-1], lines[-1]
