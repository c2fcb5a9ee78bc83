"""Scanner k-space readers (ISMRMRD, fastMRI-style HDF5, CMRxRecon .mat v7.3) against the internal k-space path.

One tiny synthetic subject (2 SAX views, 4 frames, 32² crop) gives the internal network input ``mask · fft2c(x)``
(``RandSmoothPhased`` → ``FFT2cd`` → eid-seeded VISTA ``RandKspaceMaskd``, R = 4, as in bundles/common/train.json
``kspace_sim#validate``). The same x is "acquired": 8 smooth coils (``SimulateCoils``), 2× readout oversampling
(the object padded to a 64-wide FOV), correlated coil noise of known covariance Ψ, a noise scan, 12 calibration-only
lines (ISMRMRD); files are written with the ``ismrmrd`` package and h5py (``scanner_files``) and read back.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

ismrmrd = pytest.importorskip("ismrmrd")

from kmtr_monai.io import write_kspace_h5  # noqa: E402
from kmtr_monai.io.scanner import ScannerFileError, detect_format, read_scanner_kspace  # noqa: E402
from kmtr_monai.io.scanner_prep import (  # noqa: E402
    noise_covariance,
    prewhiten,
    remove_readout_oversampling,
    svd_coil_compression,
    whitening_matrix,
)
from kmtr_monai.io.scanner_model import to_kspace_item, to_model_kspace  # noqa: E402
from kmtr_monai.transforms import fft2c  # noqa: E402
from kmtr_monai.transforms.fft import fft1c  # noqa: E402
from scanner_files import (  # noqa: E402
    C,
    CALIB,
    N_NOISE,
    OS,
    SIGMA,
    acquire,
    coil_covariance,
    coil_noise,
    header_xml,
    internal_input,
    write_fastmri,
    write_ismrmrd,
    write_mat,
)


# ------------------------------------------------------------------------------------------------- the subject
@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """The internal path: image x (S, T, H, W) complex, masked k-space and mask, for one tiny subject."""
    from kmtr_monai.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("scanner") / "cohort"
    simulate_cohort(str(root), subjects=1, preset="tiny", seed=3)
    eid = sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    return internal_input(root, eid, ("sax_0", "sax_1"))


def _rel_err(a, b, mask):
    m = mask[..., None]
    return float(np.linalg.norm((a - b) * m) / np.linalg.norm(b * m))


@pytest.fixture(scope="module")
def files(subject, tmp_path_factory):
    coil_k, maps = acquire(subject["x"])
    d = tmp_path_factory.mktemp("files")
    return {"ismrmrd": write_ismrmrd(d / "sub.h5", coil_k, subject["mask"]),
            "fastmri": write_fastmri(d / "sub_fastmri.h5", coil_k, subject["mask"]), "maps": maps,
            "coil_k": coil_k}  # fmt: skip


# ------------------------------------------------------------------------------------ reading and the model input
def test_ismrmrd_read_back(files, subject):
    scan = read_scanner_kspace(files["ismrmrd"])
    assert detect_format(files["ismrmrd"]) == "ismrmrd" and scan.format == "ismrmrd"
    assert scan.kspace.shape == (C, 2, 4, 32, 32) and scan.whitened and scan.oversampling == 2
    assert scan.oversampling_removed and scan.pixel_spacing == (4.0, 4.0) and scan.slice_thickness_mm == 8.0
    np.testing.assert_array_equal(scan.mask, subject["mask"])  # calibration-only lines are not imaging lines
    assert scan.calib_mask[:, 0][:, CALIB].all() and scan.calib_mask.sum() == 2 * CALIB.size
    assert scan.calib_only_lines == 2 * CALIB.size and scan.n_noise_acquisitions == 2
    assert scan.noise.shape == (C, N_NOISE)
    np.testing.assert_allclose(noise_covariance(scan.noise), np.eye(C), atol=1e-4)  # whitened with its own noise
    np.testing.assert_allclose(scan.acceleration, 4.0)
    np.testing.assert_allclose(scan.position[:, 2], [0.0, 10.0])
    raw = read_scanner_kspace(files["ismrmrd"], prewhiten=False, remove_oversampling=False)
    assert raw.kspace.shape[-1] == 64 and not raw.whitened
    np.testing.assert_allclose(raw.kspace * raw.mask[None, ..., None],
                               raw.kspace, atol=0)  # zeros at unsampled lines  # fmt: skip


@pytest.mark.parametrize("fmt", ["ismrmrd", "fastmri"])
def test_coil_combined_input_matches_the_internal_path(files, subject, fmt):
    """Whitened / de-oversampled coil data, combined by CG-SENSE with the true maps carried through the same coil
    matrix (what the reader did to the coils), give the internal ``mask · fft2c(x)`` within 2 % at the sampled
    lines (noise σ = 2e-3 per coil and 30 CG iterations); the mask is the internal mask exactly."""
    scan = read_scanner_kspace(files[fmt])
    maps = files["maps"][:, :, 16:48]  # the prescribed FOV of the oversampled maps
    white = np.eye(C)
    if scan.whitened:
        white = whitening_matrix(noise_covariance(read_scanner_kspace(files[fmt], prewhiten=False).noise))
    eff = np.tensordot(white, maps, axes=(1, 0))[:, None].repeat(2, 1).astype(np.complex64)  # (C, S, H, W)
    out = to_model_kspace(scan, sens_maps=eff)
    np.testing.assert_array_equal(out["mask"], subject["mask"])
    assert out["kspace"].shape == subject["kspace"].shape
    assert _rel_err(out["kspace"], subject["kspace"], subject["mask"]) < 0.02
    assert np.all(out["kspace"][~subject["mask"]] == 0)


@pytest.mark.parametrize("fmt", ["ismrmrd", "fastmri"])
def test_estimated_maps_give_the_input_up_to_a_smooth_gain(files, subject, fmt):
    """Maps estimated from the calibration lines (ISMRMRD: 12 calibration-only lines) or the time-averaged centre
    (fastMRI, VISTA) point the way of the true maps (|cos| 0.995 / 0.998 weighted by |x|², measured), and the
    combined input equals ``mask · fft2c(g · x)`` with g = Ŝᴴ S' the smooth gain those maps imply within 6 % at the
    sampled lines (measured 4.2 % / 3.7 %; true unit-norm maps: 1.8 %)."""
    scan = read_scanner_kspace(files[fmt])
    white = np.eye(C)
    if scan.whitened:
        white = whitening_matrix(noise_covariance(read_scanner_kspace(files[fmt], prewhiten=False).noise))
    true = np.tensordot(white, files["maps"][:, :, 16:48], axes=(1, 0))  # (C, H, W)
    out = to_model_kspace(scan)
    est = out["sens_maps"]  # (C, S, H, W)
    x = subject["x"]
    energy = (np.abs(x) ** 2).mean(1)  # (S, H, W)
    gain = (est.conj() * true[:, None]).sum(0)  # (S, H, W)
    cos = np.abs(gain) / (np.linalg.norm(est, axis=0) * np.linalg.norm(true, axis=0)[None] + 1e-12)
    assert (cos * energy).sum() / energy.sum() > 0.99
    ref = fft2c(torch.from_numpy((gain[:, None] * x).astype(np.complex64))).numpy() * subject["mask"][..., None]
    assert _rel_err(out["kspace"], ref, subject["mask"]) < 0.06


def test_kspace_item_writes_a_kmtr_kspace_file(files, subject, tmp_path):
    """The scanner file on the model grid (here the same 32² grid, 4 frames) is a valid kmtr-kspace file."""
    from kmtr_monai.io import read_kspace_h5, time_average_max

    scan = read_scanner_kspace(files["ismrmrd"])
    item = to_kspace_item(scan, grid=(32, 32), n_frames=4, frame_interval_ms=40.0, eid="s1", n_virtual=6)
    p = write_kspace_h5(str(tmp_path / "s1.h5"), **item)
    r = read_kspace_h5(p, expected_views=["sax_0", "sax_1"], expected_shape=(2, 4, 32, 32))
    np.testing.assert_array_equal(r["mask"], subject["mask"])
    np.testing.assert_allclose(r["pixel_spacing"], [4.0, 4.0])
    assert time_average_max(r["kspace"], r["mask"]) == pytest.approx(np.sqrt(2), rel=1e-4)  # the training scale
    np.testing.assert_allclose(np.abs(r["affine"][:, :3, :3]).sum(1), [[4.0, 4.0, 8.0]] * 2)
    small = to_kspace_item(scan, grid=(16, 24), n_frames=2, slices=[1], views=["sax_0"], frame_interval_ms=40.0)
    assert small["kspace"].shape == (1, 2, 16, 24) and small["pixel_spacing"].tolist() == [8.0, 4.0]
    with pytest.raises(ScannerFileError, match="frame_interval_ms"):
        to_kspace_item(scan, grid=(32, 32))


# ------------------------------------------------------------------------------------------------ exact identities
def test_oversampling_removal_is_exact():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16, 24)) + 1j * rng.standard_normal((3, 16, 24))
    xp = np.zeros((3, 16, 48), complex)
    xp[..., 12:36] = x
    k_os = fft1c(fft1c(xp, -1), -2)  # 2x oversampled readout
    np.testing.assert_allclose(remove_readout_oversampling(k_os, 2), fft1c(fft1c(x, -1), -2), atol=1e-5)
    np.testing.assert_allclose(fft2c(torch.from_numpy(x)).numpy(), fft1c(fft1c(x, -1), -2), atol=1e-10)
    with pytest.raises(ValueError, match="not divisible"):
        remove_readout_oversampling(k_os[..., :47], 2)


def test_whitening_gives_identity_noise_covariance():
    rng = np.random.default_rng(1)
    psi = coil_covariance()
    train, test = coil_noise((20000,), rng), coil_noise((20000,), rng)
    w = whitening_matrix(noise_covariance(train))
    np.testing.assert_allclose(noise_covariance(prewhiten(train, w)), np.eye(C), atol=1e-5)  # exact on its own data
    np.testing.assert_allclose(noise_covariance(prewhiten(test, w)), np.eye(C), atol=0.05)  # and on new noise
    np.testing.assert_allclose(noise_covariance(train), psi, atol=0.05 * SIGMA**2 * np.abs(psi).max() / SIGMA**2)
    with pytest.raises(ValueError, match="positive definite"):
        whitening_matrix(np.zeros((C, C)))


def test_svd_compression_keeps_the_energy_it_claims(files):
    scan = read_scanner_kspace(files["ismrmrd"])
    for v in (1, 3, 6, C):
        comp = svd_coil_compression(scan.kspace, scan.mask, n_virtual=v)
        out = comp.apply(scan.kspace)
        assert out.shape[0] == v and np.all(out[:, ~scan.mask] == 0)
        kept = (np.abs(out) ** 2).sum((0, 2, 3, 4)) / (np.abs(scan.kspace) ** 2).sum((0, 2, 3, 4))
        np.testing.assert_allclose(kept, comp.energy, rtol=1e-4)
    assert comp.energy == pytest.approx(1.0)
    comp = svd_coil_compression(scan.kspace, scan.mask, energy=0.99)
    assert comp.energy.min() >= 0.99 and comp.n_virtual < C
    m = comp.matrices[0]
    np.testing.assert_allclose(m @ m.conj().T, np.eye(comp.n_virtual), atol=1e-5)  # whitened noise stays white


def test_reversed_readouts_and_dropped_lines(tmp_path):
    """ACQ_IS_REVERSE lines are flipped back; navigator lines are dropped and counted, not imaging lines."""
    rng = np.random.default_rng(2)
    k = (rng.standard_normal((C, 1, 2, 8, 32)) + 1j * rng.standard_normal((C, 1, 2, 8, 32))).astype(np.complex64)
    m = np.zeros((1, 2, 8), bool)
    m[..., ::2] = True
    plain = read_scanner_kspace(write_ismrmrd(tmp_path / "a.h5", k, m, noise=False, calib=False))

    def reverse(a, kind):
        a.data[:] = a.data[:, ::-1].copy()
        a.set_flag(ismrmrd.ACQ_IS_REVERSE)
        return a

    def navigator(a, kind):
        if a.idx.kspace_encode_step_1 == 0:
            a.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
        return a

    rev = read_scanner_kspace(write_ismrmrd(tmp_path / "r.h5", k, m, noise=False, calib=False, edit=reverse))
    np.testing.assert_allclose(rev.kspace, plain.kspace, atol=1e-5)
    nav = read_scanner_kspace(write_ismrmrd(tmp_path / "n.h5", k, m, noise=False, calib=False, edit=navigator))
    assert nav.dropped["navigation"] == 2 and not nav.mask[..., 0].any() and nav.mask[..., 2::2].all()
    assert nav.noise is None and not nav.whitened and nav.calib is None


# ---------------------------------------------------------------------------------------------------- bad input
def _small(tmp_path, name, **kw):
    s, t, h, w = 1, 2, 8, 16
    k = np.ones((C, s, t, h, OS * w), np.complex64)
    m = np.zeros((s, t, h), bool)
    m[..., ::2] = True
    return write_ismrmrd(tmp_path / name, k, m, noise=False, calib=False, **kw)


def _set(field, value, kind="imaging"):
    def edit(a, k):
        if k == kind:
            obj = a.idx if field.startswith("idx.") else a
            setattr(obj, field.split(".")[-1], value)
        return a

    return edit


BAD = {
    "radial": ({"header": header_xml(1, 2, 8, 16, trajectory="radial")}, "encoding.trajectory"),
    "no_recon": ({"header": header_xml(1, 2, 8, 16, drop=["reconSpace"])}, "dataset/xml:encoding.reconSpace"),
    "no_fov": ({"header": header_xml(1, 2, 8, 16, drop=["fieldOfView_mm"])}, "fieldOfView_mm"),
    "channels": ({"header": header_xml(1, 2, 8, 16, channels=4)}, "receiverChannels"),
    "line": ({"edit": _set("idx.kspace_encode_step_1", 9)}, "idx.kspace_encode_step_1"),
    "slice": ({"edit": _set("idx.slice", 3)}, "idx.slice"),
    "kz": ({"edit": _set("idx.kspace_encode_step_2", 1)}, "idx.kspace_encode_step_2"),
    "repetition": ({"edit": lambda a, k: (setattr(a.idx, "repetition", a.idx.phase), a)[1]},
                   "idx.repetition"),
    "centre": ({"edit": _set("center_sample", 2)}, "center_sample"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ismrmrd_names_file_and_field(tmp_path, case):
    kw, fieldname = BAD[case]
    p = _small(tmp_path, f"{case}.h5", **kw)
    with pytest.raises(ScannerFileError) as err:
        read_scanner_kspace(p)
    msg = str(err.value)
    assert msg.startswith(p) and fieldname in msg and "\n" not in msg, msg


def test_bad_fastmri_and_other_files_name_file_and_field(tmp_path, files):
    def fastmri(name, **over):
        p = str(tmp_path / name)
        with h5py.File(files["fastmri"], "r") as src, h5py.File(p, "w") as f:
            for k in ("kspace", "ismrmrd_header", "mask"):
                if over.get(k, src[k]) is not None:
                    f.create_dataset(k, data=over.get(k, src[k][()]))
        return p

    cases = {
        fastmri("real.h5", kspace=np.ones((2, 4, C, 64, 32), np.float32)): "kspace",
        fastmri("shape.h5", kspace=np.ones((2, 4, C, 32, 64), np.complex64)): "kspace",
        fastmri("mask.h5", mask=np.ones(31, np.uint8)): "mask",
        fastmri("header.h5", ismrmrd_header=b"<ismrmrdHeader>"): "ismrmrd_header",
        fastmri("nan.h5", kspace=np.full((2, 4, C, 64, 32), np.nan, np.complex64)): "kspace",
    }
    p = str(tmp_path / "nohdr.h5")
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=np.ones((2, C, 64, 32), np.complex64))
    cases[p] = "ismrmrd_header"
    p = str(tmp_path / "text.h5")
    with open(p, "w") as fh:
        fh.write("not hdf5")
    cases[p] = "'/'"
    own = write_kspace_h5(str(tmp_path / "own.h5"), np.ones((1, 2, 8, 8), np.complex64), np.ones((1, 2, 8)),
                          ["sax_0"], np.stack([np.eye(4)]), (1, 1), 30.0)  # fmt: skip
    cases[own] = "read_kspace_h5"
    for path, fieldname in cases.items():
        with pytest.raises(ScannerFileError) as err:
            read_scanner_kspace(path)
        assert str(err.value).startswith(path) and fieldname in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------------ CMRxRecon
def test_cmrxrecon_mat(tmp_path, files, subject):
    """CMRxRecon cine: k-space (time, slice, coil, ky, kx) as h5py sees it, a (ky, kx) mask file."""
    coil_k = files["coil_k"][..., 16:48] * subject["mask"][None, ..., None]  # (C, S, T, H, W) (no oversampling)
    p = write_mat(tmp_path / "cine_sax.mat", "kspace_sub04", coil_k.transpose(2, 1, 0, 3, 4))
    scan = read_scanner_kspace(p)  # no mask file: the lines holding data
    assert scan.format == "cmrxrecon" and scan.kspace.shape == (C, 2, 4, 32, 32) and scan.pixel_spacing is None
    np.testing.assert_array_equal(scan.mask, subject["mask"])
    np.testing.assert_allclose(scan.kspace, coil_k, atol=1e-6)
    m2 = np.zeros((32, 32), np.uint8)
    m2[::4] = 1
    mp = write_mat(tmp_path / "mask.mat", "mask04", m2, compound=False)
    with pytest.warns(UserWarning, match="field 'kspace_sub04': nonzero values at lines the mask leaves out"):
        masked = read_scanner_kspace(p, mask_path=mp)
    assert masked.mask[:, :, ::4].all() and masked.mask.sum() == 2 * 4 * 8
    bad = write_mat(tmp_path / "badmask.mat", "mask04", np.eye(32, dtype=np.uint8), compound=False)
    with pytest.raises(ScannerFileError, match="badmask.mat: field 'mask04': varies along kx"):
        read_scanner_kspace(p, mask_path=bad)
    with pytest.raises(ScannerFileError, match="field 'pixel_spacing'"):
        to_kspace_item(scan, grid=(32, 32), frame_interval_ms=40.0)


def test_kspace_info_cli(files, capsys):
    from kmtr_monai.cli import kspace_info

    kspace_info(files["ismrmrd"], virtual_coils=4)
    out = capsys.readouterr().out
    for text in ("format: ismrmrd", "coils: 8 (pre-whitened); 4 virtual coils keep", "matrix (ky x kx): 32 x 32",
                 "readout oversampling: 2x (removed)", "noise scans: 2 acquisitions", "R per frame, slice 0: 4.00",
                 "calibration lines: 12 per slice", "slices: 2; frames: 4", "pixel spacing (mm, ky x kx): 4 x 4"):
        assert text in out, out
