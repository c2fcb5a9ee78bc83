"""Inference I/O: the HDF5 k-space format (round trip, every bad input named by file and key, coils) and the
clinical output files (CSV read back with ``csv``, NIfTI with nibabel: affine, shape, dtype)."""

import csv
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from kmtr_monai.data.cohort import crop_centred  # noqa: E402
from kmtr_monai.io import (  # noqa: E402
    KspaceFileError, LoadKspaceH5d, combine_coils, read_kspace_h5, uncrop_affine, write_diseases_csv,
    write_kspace_h5, write_phenotypes_csv, write_view_niftis,
)  # fmt: skip
from kmtr_monai.transforms import fft2c  # noqa: E402

VIEWS = ["la_2ch", "la_4ch", "sax_0", "sax_1"]
S, T, H, W = 4, 3, 8, 6


def _affines(s=S):
    a = np.tile(np.diag([1.8, 1.8, 8.0, 1.0]), (s, 1, 1))
    a[:, :3, 3] = np.arange(s)[:, None] * [1.0, -2.0, 10.0]
    return a


def _subject(seed=0):
    """Complex image (S, T, H, W), its undersampled k-space and mask (every frame has >= 1 sampled line)."""
    g = np.random.default_rng(seed)
    x = (g.normal(size=(S, T, H, W)) + 1j * g.normal(size=(S, T, H, W))).astype(np.complex64)
    mask = g.random((S, T, H)) < 0.4
    mask[..., H // 2] = True
    k = fft2c(x) * mask[..., None]
    return x, k.astype(np.complex64), mask


def _raw(path, **over):
    """Write a file with h5py directly (no validation); ``over`` replaces (or, with None, drops) datasets/attrs."""
    _, k, mask = _subject()
    items = {"kspace": k, "mask": mask.astype(np.uint8), "affine": _affines(), "views": VIEWS,
             "pixel_spacing": np.array([1.8, 1.8]), "frame_interval_ms": 30.0, "eid": "1000001"}  # fmt: skip
    items.update(over)
    with h5py.File(path, "w") as f:
        for key, v in items.items():
            if v is None:
                continue
            if key in ("views", "pixel_spacing", "frame_interval_ms", "eid"):
                f.attrs[key] = v
            else:
                f.create_dataset(key, data=v)
    return str(path)


# ----------------------------------------------------------------------------------------------------- round trip
def test_round_trip_and_load_transform(tmp_path):
    _, k, mask = _subject()
    p = write_kspace_h5(str(tmp_path / "s.h5"), k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0, eid="1000001")
    r = read_kspace_h5(p, expected_views=VIEWS, expected_shape=(S, T, H, W))
    np.testing.assert_array_equal(r["kspace"], k)
    np.testing.assert_array_equal(r["mask"], mask)
    np.testing.assert_array_equal(r["affine"], _affines())
    assert r["views"] == VIEWS and r["eid"] == "1000001" and r["frame_interval_ms"] == 30.0
    np.testing.assert_array_equal(r["pixel_spacing"], [1.8, 1.8])
    assert r["kspace"].dtype == np.complex64 and r["sens_maps"] is None

    d = LoadKspaceH5d("path", expected_views=VIEWS, expected_shape=(S, T, H, W))({"path": p})
    assert d["kspace"].dtype == torch.complex64 and d["kspace"].shape == (S, T, H, W)
    assert d["mask"].dtype == torch.float32 and d["mask"].shape == (S, T, H)
    assert d["eid"] == "1000001"
    meta = d["kspace_meta_dict"]
    assert meta["views"] == VIEWS and meta["frame_interval_ms"] == 30.0 and meta["filename_or_obj"] == p
    np.testing.assert_array_equal(meta["affine"].numpy(), _affines())


MODEL_VIEWS = ["la_2ch", "la_3ch", "la_4ch", "sax_0", "sax_1"]  # the model's views; VIEWS are rows 0, 2, 3, 4


def test_a_file_with_every_view_reads_the_same_under_either_policy(tmp_path):
    """Bit-identical to the file's arrays, whatever ``missing_views``; every view flagged valid."""
    _, k, mask = _subject()
    p = write_kspace_h5(str(tmp_path / "s.h5"), k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0)
    for policy in ("fail", "invalid"):
        d = LoadKspaceH5d("path", VIEWS, (S, T, H, W), missing_views=policy)({"path": p})
        assert torch.equal(d["kspace"], torch.from_numpy(k)) and torch.equal(d["mask"], torch.from_numpy(mask).float())
        assert torch.equal(d["kspace_meta_dict"]["affine"], torch.from_numpy(_affines()))
        assert d["view_valid"].tolist() == [1.0] * S and d["kspace_meta_dict"]["views"] == VIEWS


def test_a_subset_of_the_views_is_placed_at_the_model_views(tmp_path):
    """A file of some views (one LAX view and the SAX stack): under "invalid" its rows go to the model's view order,
    the others are zeros (k-space, mask) with a NaN affine and ``view_valid`` 0; under "fail" one line naming the
    file and the missing view. Coil files are combined per view before placing."""
    g = np.random.default_rng(3)
    x, k, mask = _subject()
    rows = [MODEL_VIEWS.index(v) for v in VIEWS]
    p = write_kspace_h5(str(tmp_path / "sub.h5"), k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0)
    d = LoadKspaceH5d("path", MODEL_VIEWS, (5, T, H, W), missing_views="invalid")({"path": p})
    assert d["kspace"].shape == (5, T, H, W) and d["mask"].shape == (5, T, H)
    assert torch.equal(d["kspace"][rows], torch.from_numpy(k)) and not d["kspace"][1].any()
    assert torch.equal(d["mask"][rows], torch.from_numpy(mask).float()) and not d["mask"][1].any()
    assert d["view_valid"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0] and d["kspace_meta_dict"]["views"] == MODEL_VIEWS
    affine = d["kspace_meta_dict"]["affine"].numpy()
    np.testing.assert_array_equal(affine[rows], _affines())
    assert np.isnan(affine[1]).all()

    with pytest.raises(KspaceFileError, match=r"missing view\(s\) \['la_3ch'\]") as err:
        LoadKspaceH5d("path", MODEL_VIEWS, (5, T, H, W), missing_views="fail")({"path": p})
    assert str(p) in str(err.value) and "\n" not in str(err.value)

    maps = (g.normal(size=(3, S, H, W)) + 1j * g.normal(size=(3, S, H, W))).astype(np.complex64)
    coil_k = (fft2c(maps[:, :, None] * x[None]) * mask[None, ..., None]).astype(np.complex64)
    p = write_kspace_h5(str(tmp_path / "c.h5"), coil_k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0, sens_maps=maps)
    d = LoadKspaceH5d("path", MODEL_VIEWS, (5, T, H, W), missing_views="invalid")({"path": p})
    np.testing.assert_allclose(d["kspace"][rows].numpy(), combine_coils(coil_k, mask, maps).numpy(), rtol=0,
                               atol=1e-6)  # fmt: skip
    assert not d["kspace"][1].any()


def test_eid_defaults_to_file_stem_and_metadata_as_datasets(tmp_path):
    p = _raw(tmp_path / "2000002.h5", eid=None, views=None, frame_interval_ms=None)
    with h5py.File(p, "a") as f:  # metadata may be datasets instead of attributes
        f.create_dataset("views", data=np.array(VIEWS, dtype=h5py.string_dtype()))
        f.create_dataset("frame_interval_ms", data=25.0)
    r = read_kspace_h5(p)
    assert r["eid"] == "2000002" and r["views"] == VIEWS and r["frame_interval_ms"] == 25.0


def test_unsampled_data_is_zeroed_with_a_warning(tmp_path):
    x, k, mask = _subject()
    p = _raw(tmp_path / "full.h5", kspace=fft2c(x).astype(np.complex64))  # fully-sampled k-space + a mask
    with pytest.warns(UserWarning, match="set to zero"):
        r = read_kspace_h5(p)
    np.testing.assert_array_equal(r["kspace"], k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # correctly undersampled input: no warning
        read_kspace_h5(_raw(tmp_path / "ok.h5"))


# -------------------------------------------------------------------------------------------------- bad inputs
_, _K, _M = _subject()
_bad_affine = _affines()
_bad_affine[1, 0, 0] = np.nan
_nan_k = _K.copy()
_nan_k[0, 0, H // 2, 0] = np.nan

BAD = {
    "real kspace": (dict(kspace=np.stack([_K.real, _K.imag], -1)), {}, "kspace", "real-valued"),
    "kspace ndim": (dict(kspace=_K[0]), {}, "kspace", r"\(S, T, H, W\)"),
    "kspace grid": ({}, dict(expected_shape=(S, T, 16, 16)), "kspace", "model's grid"),
    "mask shape": (dict(mask=np.ones((S, T, H + 1), np.uint8)), {}, "mask", r"\(S, T, H\)"),
    "mask values": (dict(mask=np.full((S, T, H), 2, np.uint8)), {}, "mask", "0/1"),
    "mask empty frame": (dict(mask=np.zeros((S, T, H), np.uint8)), {}, "mask", "no sampled"),
    "mask missing": (dict(mask=None), {}, "mask", "missing"),
    "missing view": ({}, dict(expected_views=["la_2ch", "la_3ch", "la_4ch", "sax_0", "sax_1"]), "views", "missing"),
    "unknown view": (dict(views=["la_2ch", "la_5ch", "sax_0", "sax_1"]), {}, "views", "unknown"),
    "view order": (dict(views=["sax_0", "la_2ch", "la_4ch", "sax_1"]), {}, "views", "order"),
    "view count": (dict(views=VIEWS[:3]), {}, "views", "3 view names"),
    "nan kspace": (dict(kspace=_nan_k), {}, "kspace", "NaN"),
    "nan affine": (dict(affine=_bad_affine), {}, "affine", "NaN"),
    "affine shape": (dict(affine=np.tile(np.eye(3), (S, 1, 1))), {}, "affine", r"\(S, 4, 4\)"),
    "coils without maps": (dict(kspace=np.stack([_K, _K])), {}, "sens_maps", "missing"),
    "spacing": (dict(pixel_spacing=np.array([1.8])), {}, "pixel_spacing", "2 positive"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_key(tmp_path, case):
    over, kwargs, key, what = BAD[case]
    p = _raw(tmp_path / "bad.h5", **over)
    with pytest.raises(KspaceFileError, match=what) as err:
        read_kspace_h5(p, **kwargs)
    assert err.value.key == key and str(p) in str(err.value) and repr(key) in str(err.value)


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    good = _raw(tmp_path / "good.h5")
    cut = tmp_path / "cut.h5"
    data = open(good, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    for p in (empty, junk, cut):
        with pytest.raises(KspaceFileError) as err:
            read_kspace_h5(str(p))
        assert str(p) in str(err.value) and "key '/'" in str(err.value)
    # intact header, damaged compressed k-space chunk: the error names the dataset
    bad = write_kspace_h5(str(tmp_path / "chunk.h5"), _K, _M, VIEWS, _affines(), (1.8, 1.8), 30.0)
    with h5py.File(bad, "r") as f:
        info = f["kspace"].id.get_chunk_info(0)
    with open(bad, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with pytest.raises(KspaceFileError, match="cannot read") as err:
        read_kspace_h5(bad)
    assert err.value.key == "kspace" and bad in str(err.value)
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        read_kspace_h5(str(tmp_path / "nothere.h5"))


def test_writer_refuses_real_kspace(tmp_path):
    with pytest.raises(KspaceFileError, match="kspace"):
        write_kspace_h5(str(tmp_path / "r.h5"), np.zeros((S, T, H, W)), _M, VIEWS, _affines(), (1, 1), 30.0)


# ------------------------------------------------------------------------------------------------------- coils
def test_coil_combination_exact_for_maps_constant_along_ky(tmp_path):
    g = np.random.default_rng(1)
    x, k, mask = _subject(2)
    c = 3
    maps = (g.normal(size=(c, S, 1, W)) + 1j * g.normal(size=(c, S, 1, W))).astype(np.complex64)
    maps = np.broadcast_to(maps, (c, S, H, W)).copy()  # vary along kx only
    coil_k = fft2c(maps[:, :, None] * x[None]) * mask[None, ..., None]
    for method in ("adjoint", "cg-sense"):
        np.testing.assert_allclose(combine_coils(coil_k, mask, maps, method=method).numpy(), k, rtol=1e-3, atol=1e-4)

    p = write_kspace_h5(str(tmp_path / "c.h5"), coil_k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0, sens_maps=maps)
    d = LoadKspaceH5d("path")({"path": p})
    assert d["kspace"].shape == (S, T, H, W) and d["kspace_meta_dict"]["n_coils"] == c
    np.testing.assert_allclose(d["kspace"].numpy(), k, rtol=1e-3, atol=1e-4)
    assert torch.all(d["kspace"][d["mask"] == 0] == 0)  # the contract: zeros at unsampled lines

    # maps that vary along ky (SimulateCoils): CG-SENSE recovers the single-coil lines, the adjoint does not
    from kmtr_monai.transforms import SimulateCoils

    smaps = np.ascontiguousarray(np.broadcast_to(SimulateCoils(8).maps(H, W).numpy()[:, None], (8, S, H, W)))
    coil_k = fft2c(smaps[:, :, None] * x[None]) * mask[None, ..., None]
    err_adj, err_cg = (
        np.linalg.norm(combine_coils(coil_k, mask, smaps, method=m).numpy() - k) / np.linalg.norm(k)
        for m in ("adjoint", "cg-sense")
    )
    assert err_cg < 0.05 < err_adj, (err_cg, err_adj)

    with pytest.raises(KspaceFileError, match=r"\(C, S, H, W\)") as err:  # maps of the wrong shape
        read_kspace_h5(_raw(tmp_path / "m.h5", kspace=coil_k.astype(np.complex64), sens_maps=maps[:, :2]))
    assert err.value.key == "sens_maps"


# ----------------------------------------------------------------------------------------------------- outputs
def test_phenotypes_csv(tmp_path):
    names = ["LVEDV (mL)", "LVEF (%)"]
    pred = np.array([[150.25, 60.0], [120.0, np.nan]])
    p = write_phenotypes_csv(str(tmp_path / "phenotypes.csv"), ["1", "2"], pred, pred - 5, pred + 5, names)
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["eid", *names, "LVEDV (mL) lower", "LVEDV (mL) upper", "LVEF (%) lower", "LVEF (%) upper"]
    assert rows[0]["eid"] == "1" and float(rows[0]["LVEDV (mL)"]) == 150.25
    assert float(rows[0]["LVEF (%) upper"]) == 65.0 and float(rows[1]["LVEDV (mL) lower"]) == 115.0
    assert rows[1]["LVEF (%)"] == ""  # NaN -> empty cell
    p2 = write_phenotypes_csv(str(tmp_path / "p2.csv"), ["1", "2"], pred, names=names)
    with open(p2, newline="") as fh:
        assert next(csv.reader(fh)) == ["eid", *names]
    with pytest.raises(ValueError, match="names"):
        write_phenotypes_csv(str(tmp_path / "p3.csv"), ["1", "2"], pred, names=names[:1])


def test_diseases_csv(tmp_path):
    prob = np.array([[0.1, 0.5, 0.9], [0.3, 0.49, 0.2]])
    p = write_diseases_csv(str(tmp_path / "diseases.csv"), ["a", "b"], prob, [0.2, 0.5, 0.5])
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["eid", "CAD_probability", "high_blood_pressure_probability", "hypertension_probability",
                             "CAD", "high_blood_pressure", "hypertension"]  # fmt: skip
    assert [(r["CAD"], r["high_blood_pressure"], r["hypertension"]) for r in rows] == [("0", "1", "1"), ("1", "0", "0")]
    assert float(rows[1]["high_blood_pressure_probability"]) == 0.49
    with pytest.raises(ValueError, match="probabilities"):
        write_diseases_csv(str(tmp_path / "d.csv"), ["a", "b"], prob * 3, [0.5] * 3)


@pytest.mark.parametrize("kind", ["seg", "recon"])
def test_view_niftis(tmp_path, kind):
    g = np.random.default_rng(0)
    vol = g.integers(0, 6, (S, T, H, W)) if kind == "seg" else g.random((S, T, H, W)).astype(np.float32)
    paths = write_view_niftis(str(tmp_path), "1000001", VIEWS, vol, _affines(), 31.5, kind=kind)
    assert [os.path.basename(p) for p in paths] == [f"{kind}_{v}.nii.gz" for v in VIEWS]
    for i, p in enumerate(paths):
        img = nib.load(p)
        assert img.shape == (H, W, 1, T)
        assert img.get_data_dtype() == (np.int16 if kind == "seg" else np.float32)
        np.testing.assert_allclose(img.affine, _affines()[i])
        assert img.header["pixdim"][4] == pytest.approx(31.5)
        assert img.header.get_xyzt_units() == ("mm", "msec")
        np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0, :], vol[i].transpose(1, 2, 0))


def test_uncrop_affine_overlays_the_source(tmp_path):
    g = np.random.default_rng(0)
    full = g.random((20, 17, 5, 2)).astype(np.float32)  # (X, Y, Z, T)
    rot = np.linalg.qr(g.normal(size=(3, 3)))[0]
    a_full = np.eye(4)
    a_full[:3, :3] = rot @ np.diag([1.8, 1.7, 10.0])
    a_full[:3, 3] = [-30.0, 12.0, 5.0]
    crop, z = 8, 3
    a_crop = uncrop_affine(a_full, full.shape[:2], crop, z=z)
    x0, y0 = 20 // 2 - crop // 2, 17 // 2 - crop // 2
    np.testing.assert_allclose(a_crop @ [0, 0, 0, 1], a_full @ [x0, y0, z, 1])
    # the loader's crop rule: every crop voxel maps to the source voxel holding the same value
    cropped = crop_centred(full[:, :, z].transpose(2, 0, 1), (10, 8), crop)  # (T, crop, crop)
    p = write_view_niftis(str(tmp_path), "e", ["sax_0"], cropped[None], a_crop[None], 30.0, kind="recon")[0]
    img = nib.load(p)
    vox = np.linalg.inv(a_full) @ img.affine @ np.array([5, 2, 0, 1.0])
    i, j, k = np.rint(vox[:3]).astype(int)
    assert np.allclose(vox[:3], [i, j, k]) and k == z
    np.testing.assert_allclose(np.asarray(img.dataobj)[5, 2, 0, :], full[i, j, z, :])
    # an explicit centre
    np.testing.assert_allclose(uncrop_affine(a_full, (20, 17), 8, centre=(6, 9)) @ [1, 1, 0, 1],
                               a_full @ [6 - 4 + 1, 9 - 4 + 1, 0, 1])  # fmt: skip


def test_normalisation_to_the_training_scale(tmp_path):
    """A file at an arbitrary scanner scale is brought to the training scale (image max √2) by the time-average
    estimate; for a static object with every line sampled in some frame the estimate is exact."""
    from kmtr_monai.io import time_average_max

    g = np.random.default_rng(3)
    img = np.broadcast_to(g.random((S, 1, H, W)), (S, T, H, W)) * 1234.0  # static object, max ~1234
    x = (img * np.exp(0.4j)).astype(np.complex64)
    mask = np.zeros((S, T, H), bool)
    for t in range(T):
        mask[:, t, t::T] = True  # interleaved lines: every ky sampled once over the frames
    k = fft2c(x) * mask[..., None]
    assert time_average_max(k, mask) == pytest.approx(np.abs(x).max(), rel=1e-4)
    p = write_kspace_h5(str(tmp_path / "n.h5"), k, mask, VIEWS, _affines(), (1.8, 1.8), 30.0)
    d = LoadKspaceH5d("path", normalize_max=float(np.sqrt(2)))({"path": p})
    scale = d["kspace_meta_dict"]["scale"]
    assert scale == pytest.approx(np.sqrt(2) / np.abs(x).max(), rel=1e-4)
    np.testing.assert_allclose(d["kspace"].numpy(), k * scale, rtol=1e-5, atol=1e-6)
    assert LoadKspaceH5d("path")({"path": p})["kspace_meta_dict"]["scale"] == 1.0


def test_affine_spacing_mismatch_warns(tmp_path):
    with pytest.warns(UserWarning, match="'affine': voxel sizes"):
        read_kspace_h5(_raw(tmp_path / "sp.h5", pixel_spacing=np.array([1.0, 1.0])))
