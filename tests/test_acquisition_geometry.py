"""kspace_geometry="acquisition" (issue 26 item 4): the whole phase-encode FOV, only the readout cropped.

Checked against independent truth: numpy FFTs of the full-FOV NIfTI frames (the readout-crop identity), a synthetic
off-centre disc (the PE axis keeps the FOV, the heart stays where it is), exact mask line counts on ``pe_lines``, the
default ``image_crop`` unchanged, and the bundles training at the tiny preset in acquisition mode.
"""

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from kmtr_monai.bundle import config_files
from kmtr_monai.cli import root_cause
from kmtr_monai.data.cohort import LoadCohortSubjectd, kspace_pe_lines

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
CROP, PE = 32, 48  # tiny preset: crop 32, cohort matrix 48 (the default pe_lines)
AX = (-2, -1)
ACQUISITION = {"kspace_geometry": "acquisition"}


def _first_eid(cohort: Path) -> str:
    return json.loads((cohort / "datalist.json").read_text())["training"][0]["eid"]


def _parser(bundle: str, cohort: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "train", "tiny"))
    parser.update({"bundle_root": str(BUNDLES / bundle), "dataset_dir": str(cohort), **overrides})
    return parser


def np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AX), axes=AX, norm="ortho"), axes=AX)


def np_fft1c(x, inverse=False):
    f = np.fft.ifft if inverse else np.fft.fft
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)


# --------------------------------------------------------------------------------- the readout-crop identity
def test_kspace_is_the_scanner_kspace_with_the_readout_cropped(tiny_cohort):
    """fft2c(loader image) == the full-FOV k-space, inverse 1-D FFT along kx, cropped to the loader's readout window,
    FFT back (what a scanner gives after readout cropping); the full-FOV frames are read with nibabel."""
    eid = _first_eid(tiny_cohort)
    views = ("sax_0", "sax_1")
    load = LoadCohortSubjectd(str(tiny_cohort), n_sax=2, n_frames=4, crop=CROP, load_seg=False, views=views,
                              pixel_mm=4.0, geometry="acquisition", pe_lines=PE, return_geometry=True)  # fmt: skip
    d = load({"eid": eid})
    assert d["image"].shape == (2, 4, PE, CROP)
    src = np.asarray(nib.load(tiny_cohort / eid / "sa.nii.gz").dataobj, dtype=np.float32)  # (X, Y, Z, T)
    assert src.shape[0] == PE  # the cohort matrix: the PE window is the whole FOV
    t = [round(i * (src.shape[3] - 1) / 3) for i in range(4)]
    full = np.stack([src[:, :, z][..., t].transpose(2, 0, 1) for z in d["source_slice"].tolist()])  # (S, K, X, Y)
    assert d["crop_centre"][:, 0].tolist() == [PE // 2] * 2  # the PE window is centred on the FOV, not the heart
    y0 = int(d["crop_centre"][0, 1]) - CROP // 2
    window = full[..., y0 : y0 + CROP]
    lo, hi = window.min(), window.max()
    np.testing.assert_allclose(d["image"].numpy(), (window - lo) / (hi - lo), atol=1e-6)

    from kmtr_monai.transforms import FFT2cd

    k_model = FFT2cd(keys="image")({"image": d["image"]})["image"].numpy()
    k_scanner = np_fft2c((full - lo) / (hi - lo))  # the acquisition's k-space: whole FOV both ways
    hybrid = np_fft1c(k_scanner, inverse=True)[..., y0 : y0 + CROP]  # exact: a crop in x-ky space
    np.testing.assert_allclose(k_model, np_fft1c(hybrid), atol=1e-4 * np.abs(k_scanner).max())


# --------------------------------------------------------------------------------- PE FOV kept (synthetic disc)
NX, NY, NZ, NT = 40, 48, 4, 6
DISC = (12, 34)  # (x, y): off centre along both axes


def _disc_subject(root: Path) -> Path:
    """sa.nii.gz / seg_sa.nii.gz: a static body (0.3 + 0.01 y) filling the FOV and a beating disc (1.0, LV label)
    at DISC."""
    folder = root / "disc"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.meshgrid(np.arange(NX), np.arange(NY), indexing="ij")
    r2 = (x - DISC[0]) ** 2 + (y - DISC[1]) ** 2
    img = np.broadcast_to((0.3 + 0.01 * y)[..., None, None], (NX, NY, NZ, NT)).astype(np.float32)
    seg = np.zeros((NX, NY, NZ, NT), dtype=np.uint8)
    for t in range(NT):
        inside = r2 <= (3 + t % 3) ** 2
        img[inside, :, t], seg[inside, :, t] = 1.0, 1
    for name, arr in (("sa", img), ("seg_sa", seg)):
        nib.save(nib.Nifti1Image(arr, np.diag([4.0, 4.0, 10.0, 1.0])), folder / f"{name}.nii.gz")
    return folder


def _centroid(seg: torch.Tensor) -> tuple[float, float]:
    xs, ys = np.nonzero(seg.numpy() > 0)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("pe_lines, x0", [(48, -4), (40, 0), (32, 4)])  # zero-padded, as is, centre-cropped
def test_phase_encode_keeps_the_fov_and_the_heart_off_centre(tmp_path, pe_lines, x0):
    _disc_subject(tmp_path)
    kw = dict(n_sax=2, n_frames=NT, crop=16, views=("sax_0", "sax_1"), load_seg=True)
    d = LoadCohortSubjectd(str(tmp_path), geometry="acquisition", pe_lines=pe_lines, **kw)({"eid": "disc"})
    assert d["image"].shape == d["seg"].shape == (2, NT, pe_lines, 16)
    # PE rows are source rows x0 .. x0 + pe_lines about the FOV centre; the readout is cut about the disc's y
    cx, cy = _centroid(d["seg"][0, 0])
    assert (cx, cy) == (DISC[0] - x0, 8.0)  # the disc keeps its PE position (off centre), readout-centred
    inside = slice(max(-x0, 0), min(NX - x0, pe_lines))
    img = d["image"][0, 0].numpy()
    np.testing.assert_array_equal(img[: inside.start], 0.0)  # zero padding outside the acquired FOV
    np.testing.assert_array_equal(img[inside.stop :], 0.0)
    assert (img[inside, 1:] > 0).all()  # every acquired PE row is there (column 0: the window's minimum, 0)
    assert _centroid(torch.from_numpy((img == 1.0).astype(np.uint8))) == (cx, cy)  # label and image crop agree
    ref = LoadCohortSubjectd(str(tmp_path), **kw)({"eid": "disc"})  # image_crop: the disc at the crop centre
    assert ref["image"].shape == (2, NT, 16, 16) and _centroid(ref["seg"][0, 0]) == (8.0, 8.0)


# --------------------------------------------------------------------------------- masks on pe_lines lines
@pytest.mark.parametrize("pattern", ["vista", "gaussian", "equispaced"])
def test_exact_line_counts_on_pe_lines(pattern):
    from kmtr_monai.transforms import RandKspaceMaskd

    k = torch.ones(5, 4, PE, CROP, dtype=torch.complex64)
    for r in (2, 4, 8, 16):
        out = RandKspaceMaskd(pattern=pattern, accelerations=[r], seed_key="eid")({"kspace_full": k, "eid": "a"})
        assert out["mask"].shape == (5, 4, PE)
        assert (out["mask"].sum(-1) == round(PE / r)).all(), (pattern, r)
        assert (out["kspace"].abs().sum(-1) > 0).eq(out["mask"] > 0).all()  # lines along kx, broadcast over W


def test_bundle_chain_masks_pe_lines(tiny_cohort):
    parser = _parser("kspace-mae", tiny_cohort, kspace_geometry="acquisition")
    item = {"eid": _first_eid(tiny_cohort)}
    val = parser.get_parsed_content("validate#preprocessing")(dict(item))
    assert val["kspace"].shape == val["kspace_full"].shape == (2, 5, 4, PE, CROP)
    assert (val["mask"].sum(-1) == PE // 4).all()  # val_acceleration 4
    train = parser.get_parsed_content("train#preprocessing")(dict(item))
    counts = train["mask"].sum(-1)
    assert counts.unique().numel() == 1 and int(counts.flatten()[0]) in (24, 12, 6)  # R in (2, 4, 8)


# --------------------------------------------------------------------------------- defaults and bad input
def test_image_crop_is_the_default_and_unchanged(tiny_cohort):
    parser = _parser("kspace-mae", tiny_cohort)
    assert parser.get_parsed_content("kspace_geometry") == "image_crop"
    assert parser.get_parsed_content("n_pe") == CROP
    assert parser.get_parsed_content("load_subject").out_hw == (CROP, CROP)
    assert parser.get_parsed_content("kspace_mae").shape == (2, 5, 4, CROP, CROP)
    assert parser.get_parsed_content("image_mae").tokenizer.hw == (CROP, CROP)
    kw = dict(n_sax=2, n_frames=4, crop=CROP, pixel_mm=4.0, return_geometry=True)
    a = LoadCohortSubjectd(str(tiny_cohort), **kw)({"eid": _first_eid(tiny_cohort)})
    b = LoadCohortSubjectd(str(tiny_cohort), geometry="image_crop", pe_lines=PE, **kw)({"eid": _first_eid(tiny_cohort)})
    for key in ("image", "seg", "crop_centre", "view_affine"):
        assert torch.equal(a[key], b[key]), key
    from kmtr_monai.networks.mae import ImageMAE

    sizes = dict(n_views=5, n_lax=3, n_frames=4, patch=(2, 8, 8), dim=32, depth=1, heads=2, dec_dim=32, dec_depth=1,
                 dec_heads=2)  # fmt: skip
    torch.manual_seed(0)
    old = ImageMAE(size=CROP, **sizes).state_dict()
    torch.manual_seed(0)
    new = ImageMAE(size=(CROP, CROP), **sizes).state_dict()  # the config now passes (n_pe, crop)
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_bad_geometry_is_a_one_line_error_naming_the_key(tiny_cohort):
    with pytest.raises(ValueError, match=r"kspace_geometry .*'image_crop', 'acquisition'.*'scanner'"):
        kspace_pe_lines("scanner", CROP, PE)
    with pytest.raises(ValueError, match=r"pe_lines .*>= crop \(32\).*got 16"):
        kspace_pe_lines("acquisition", CROP, 16)
    with pytest.raises(ValueError, match="pe_lines"):
        LoadCohortSubjectd(str(tiny_cohort), n_sax=2, n_frames=4, crop=CROP, geometry="acquisition", pe_lines=None)
    with pytest.raises(Exception) as err:  # through the bundle config: the root cause is the one-line message
        _parser("kspace-mae", tiny_cohort, kspace_geometry="scanner").get_parsed_content("kspace_mae")
    cause = root_cause(err.value)
    assert isinstance(cause, ValueError) and str(cause).startswith("kspace_geometry (bundles/common/train.json)")
    assert kspace_pe_lines("image_crop", CROP, None) == CROP and kspace_pe_lines("acquisition", CROP, PE) == PE


# --------------------------------------------------------------------------------- training at the tiny preset
def _run(name: str, cohort: Path, out: Path, **overrides) -> ConfigWorkflow:
    bundle = BUNDLES / name
    args = {"bundle_root": str(bundle), "dataset_dir": str(cohort), "ckpt_dir": str(out / name / "models"),
            "output_dir": str(out / name / "eval"), "max_epochs": 1, "kspace_geometry": "acquisition",
            "image_mae_ckpt": str(out / "image-mae/models/model.pt"),
            "kspace_mae_ckpt": str(out / "kspace-mae/models/model.pt"),
            "stage1_ckpt": str(out / "kspace-mae/models/model.pt"),
            "align_ckpt": str(out / "align/models/model.pt"), **overrides}  # fmt: skip
    wf = ConfigWorkflow(config_file=config_files(name, "train", "tiny"),
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train",
                        **args)  # fmt: skip
    wf.initialize()
    seen = {}
    from ignite.engine import Events

    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1),
                              lambda e: seen.update({k: tuple(v.shape) for k, v in e.state.batch.items()
                                                     if isinstance(v, torch.Tensor)}))  # fmt: skip
    wf.run()
    wf.finalize()
    wf.batch_shapes = seen
    assert (out / name / "models" / "model.pt").is_file()
    return wf


@pytest.fixture(scope="module")
def stage_one_two(tiny_cohort, tmp_path_factory):
    """Image MAE, k-space MAE and align trained one epoch each in acquisition mode (PE 48 × readout 32)."""
    out = tmp_path_factory.mktemp("acquisition")
    return out, {name: _run(name, tiny_cohort, out) for name in ("image-mae", "kspace-mae", "align")}


def test_kspace_mae_trains_in_acquisition_mode(stage_one_two):
    out, wfs = stage_one_two
    wf = wfs["kspace-mae"]
    assert wf.parser.get_parsed_content("network_def").shape == (2, 5, 4, PE, CROP)
    assert wf.batch_shapes["kspace"] == (4, 2, 5, 4, PE, CROP) and wf.batch_shapes["mask"] == (4, 5, 4, PE)
    assert wfs["align"].batch_shapes["image"] == (4, 5, 4, PE, CROP)  # the image encoder sees the same FOV
    state = torch.load(out / "kspace-mae/models/model.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("name, overrides, target", [
    ("regress", {}, ("phenotypes", (4, 12))),  # k-MTR (aligned encoder)
    ("regress", {"init": "stage1"}, ("phenotypes", (4, 12))),
    ("classify", {"init": "scratch"}, ("diseases", (4, 3))),
    ("segment-unetr", {}, ("seg", (4, 5, 4, PE, CROP))),
    ("recon", {}, ("image", (4, 5, 4, PE, CROP))),
])  # fmt: skip
def test_stage3_trains_in_acquisition_mode(stage_one_two, tiny_cohort, tmp_path, name, overrides, target):
    out, _ = stage_one_two
    for upstream in ("image-mae", "kspace-mae", "align"):
        (tmp_path / upstream).symlink_to(out / upstream, target_is_directory=True)
    wf = _run(name, tiny_cohort, tmp_path, **overrides)
    assert wf.batch_shapes["kspace"] == (4, 2, 5, 4, PE, CROP)
    assert wf.batch_shapes[target[0]] == target[1]


@pytest.mark.parametrize("upstream, overrides", [
    ("align", {"init": "aligned"}),  # k-MTR's k-space encoder (input grid PE x readout)
    ("image-mae", {"encoder": "@baselines#image_mae", "input": "image"}),  # the image MAE's ViT
])  # fmt: skip
def test_checkpoint_of_the_other_geometry_is_refused(stage_one_two, tiny_cohort, upstream, overrides):
    """The sin-cos position codes are not weights, so only the recorded input grid tells the geometries apart."""
    out, _ = stage_one_two
    ckpt = out / upstream / "models" / "model.pt"
    overrides = {"align_ckpt": str(ckpt), "image_mae_ckpt": str(ckpt), **overrides}
    with pytest.raises(Exception) as err:  # MONAI wraps it in "Failed to evaluate": the root cause is the message
        _parser("regress", tiny_cohort, **overrides).get_parsed_content("encoder", lazy=False)
    cause = str(root_cause(err.value))
    assert re.search(r"input_shape = \(S, T, H, W\) \(5, 4, 48, 32\) .* \(5, 4, 32, 32\)", cause), cause
    assert str(ckpt) in cause and "kspace_geometry" in cause
    own = _parser("regress", tiny_cohort, **overrides, **ACQUISITION).get_parsed_content("encoder", lazy=False)
    assert own.tokenizer.input_shape.tolist() == [5, 4, PE, CROP]  # the same file loads in its own geometry


# --------------------------------------------------------------------------------- inference on the same grid
def _infer(bundle: str, weights: Path, input_path: Path, result: Path) -> None:
    wf = ConfigWorkflow(config_file=config_files(bundle, "inference", "tiny"),
                        meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"),
                        logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train",
                        bundle_root=str(BUNDLES / bundle), dataset_dir="/nonexistent", ckpt_dir=str(weights.parent),
                        output_dir=str(result), input_path=str(input_path), kspace_geometry="acquisition")  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()


def test_segmentation_inference_covers_the_whole_pe_fov_on_the_source_grid(tiny_cohort, tmp_path, random_weights):
    """A subject folder in acquisition mode: the output, on the source grid, covers every PE row and the ``crop``
    readout columns about the heart (the label predicted everywhere on the model grid shows that footprint)."""
    subject = tiny_cohort / _first_eid(tiny_cohort)
    weights = random_weights("segment-unetr", tmp_path / "w" / "model.pt", foreground=1, settings=ACQUISITION)
    _infer("segment-unetr", weights, subject, tmp_path / "out")
    src = nib.load(subject / "sa.nii.gz")
    seg = nib.load(tmp_path / "out" / subject.name / "seg_sa.nii.gz")
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    load = LoadCohortSubjectd(str(tiny_cohort), n_sax=2, n_frames=4, crop=CROP, load_seg=False, pixel_mm=4.0,
                              geometry="acquisition", pe_lines=PE, return_geometry=True)  # fmt: skip
    d = load({"eid": subject.name})
    y0 = int(d["crop_centre"][-1, 1]) - CROP // 2
    z = int(d["source_slice"][-1])
    t = [round(i * (src.shape[3] - 1) / 3) for i in range(4)]
    footprint = np.zeros(src.shape[:2], bool)
    footprint[:, max(y0, 0) : y0 + CROP] = True  # every PE row (the whole FOV), the readout window
    got = np.asanyarray(seg.dataobj)[:, :, z][..., t] > 0
    assert (got == footprint[..., None]).all()


def test_scanner_file_enters_on_the_acquisition_grid(tiny_cohort, tmp_path, random_weights):
    """An 8-coil ISMRMRD file (2x oversampled readout, R = 4, a noise scan; coil maps from the time-averaged
    imaging lines) of a 48-line PE FOV:
    the model input keeps all 48 ky lines (pixel size kept) and crops the readout to 32; regress runs on it."""
    pytest.importorskip("ismrmrd")
    from scanner_files import acquire, header_xml, internal_input, write_ismrmrd

    from kmtr_monai.constants import LAX_VIEWS, PHENOTYPES, sax_views
    from kmtr_monai.io import read_kspace_h5

    views = [*LAX_VIEWS, *sax_views(2)]
    sub = internal_input(tiny_cohort, _first_eid(tiny_cohort), views, n_frames=4, crop=PE)  # a 48 x 48 FOV
    coil_k, _ = acquire(sub["x"])
    file = write_ismrmrd(tmp_path / "cine.h5", coil_k, sub["mask"], calib=False, header=header_xml(5, 4, PE, PE))
    weights = random_weights("regress", tmp_path / "w" / "model.pt", settings=ACQUISITION)
    _infer("regress", weights, file, tmp_path / "out")
    got = read_kspace_h5(str(tmp_path / "out" / "model_input" / "cine.h5"), views, (5, 4, PE, CROP))
    np.testing.assert_array_equal(got["mask"], sub["mask"])  # every acquired ky line where it was
    np.testing.assert_allclose(got["pixel_spacing"], [4.0, 4.0])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "out" / "phenotypes.csv")))
    assert len(rows) == 1 and all(np.isfinite(float(rows[0][c])) for c in PHENOTYPES)


def test_export_carries_the_geometry_of_its_weights(stage_one_two, tmp_path):
    """An acquisition-trained checkpoint exports only with its geometry; the metadata's shapes follow it."""
    from kmtr_monai.bundle import export_bundle

    out, _ = stage_one_two
    weights = out / "kspace-mae" / "models" / "model.pt"
    with pytest.raises(ValueError, match=r"input_shape .* \(5, 4, 48, 32\) .* \(5, 4, 32, 32\)"):
        export_bundle("kspace-mae", tmp_path / "crop", preset="tiny", weights=weights)
    assert not (tmp_path / "crop").exists()  # the refused export leaves nothing behind
    exported = export_bundle("kspace-mae", tmp_path / "acq", preset="tiny", weights=weights, settings=ACQUISITION)
    assert json.loads((exported / "configs" / "train.json").read_text())["kspace_geometry"] == "acquisition"
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    shapes = [spec["spatial_shape"] for t in meta["network_data_format"].values() for spec in t.values()]
    assert [5, 4, PE, CROP] in shapes and [5, 4, CROP, CROP] not in shapes
    with pytest.raises(ValueError, match=r"settings \['no_such_key'\]"):
        export_bundle("kspace-mae", tmp_path / "bad", preset="tiny", settings={"no_such_key": 1})
