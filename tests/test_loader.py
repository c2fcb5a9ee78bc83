"""LoadCohortSubjectd / make_dataset against a loop-based reference on a tiny NIfTI cohort with coded pixel values."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from kmtr_monai.constants import LABELS
from kmtr_monai.data.cohort import LoadCohortSubjectd, crop_centred, frame_indices, make_dataset, sax_start

NX, NY, NZ, NT = 40, 36, 7, 10
FILES = ("la_2ch", "la_3ch", "la_4ch", "sa")


def code(view, x, y, z, t):
    """Pixel value that identifies (file, x, y, z, t) exactly in float32."""
    return FILES.index(view) * 100800 + x + NX * y + NX * NY * z + NX * NY * NZ * t + 1.0


def _save(path, arr, zooms=(2.0, 2.0, 8.0, 30.0)):
    img = nib.Nifti1Image(arr, np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms[: arr.ndim])
    nib.save(img, path)


def write_subject(root, eid, heart=(20, 18), lv_first=1, n_t=NT, box=5):
    """Coded images; a ``box``×``box`` heart block centred at ``heart`` (x, y) in every view and frame.

    SAX: LV (1) in slices >= ``lv_first`` (rows x0..x0+1), Myo (2) row x0+2, RV (3) rows x0+3.. ; 2ch LA=1;
    4ch LA=1 / RA=2. Block centre = ``heart`` exactly (odd box).
    """
    d = os.path.join(root, eid)
    os.makedirs(d, exist_ok=True)
    x, y, z, t = np.meshgrid(np.arange(NX), np.arange(NY), np.arange(NZ), np.arange(n_t), indexing="ij")
    h = box // 2
    xs, ys = slice(heart[0] - h, heart[0] + h + 1), slice(heart[1] - h, heart[1] + h + 1)
    for view in FILES:
        nz = NZ if view == "sa" else 1
        img = code(view, x[:, :, :nz], y[:, :, :nz], z[:, :, :nz], t[:, :, :nz]).astype(np.float32)
        _save(os.path.join(d, f"{view}.nii.gz"), img)
        if view == "la_3ch":
            continue
        seg = np.zeros((NX, NY, nz, n_t), dtype=np.uint8)
        if view == "sa":
            blk = np.zeros((box, box), dtype=np.uint8)
            blk[:2], blk[2], blk[3:] = 1, 2, 3
            seg[xs, ys, lv_first:, :] = blk[:, :, None, None]
        elif view == "la_2ch":
            seg[xs, ys] = 1
        else:
            seg[xs, ys] = 1
            seg[xs, ys.start : ys.start + 2] = 2
        _save(os.path.join(d, f"seg_{view}.nii.gz"), seg)
    return d


def reference_image(views_slices, centre_of, frames, crop):
    """Loop-based expected (S, K, crop, crop) raw values (NaN outside) for [(file, z)] in order."""
    out = np.full((len(views_slices), len(frames), crop, crop), np.nan)
    for s, (view, z) in enumerate(views_slices):
        cx, cy = centre_of[view]
        for k, t in enumerate(frames):
            for i in range(crop):
                for j in range(crop):
                    xx, yy = cx - crop // 2 + i, cy - crop // 2 + j
                    if 0 <= xx < NX and 0 <= yy < NY:
                        out[s, k, i, j] = code(view, xx, yy, z, t)
    lo, hi = np.nanmin(out), np.nanmax(out)
    return np.nan_to_num((out - lo) / (hi - lo), nan=0.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort"))
    write_subject(root, "1", heart=(20, 18), lv_first=1)
    write_subject(root, "2", heart=(3, 33), lv_first=6)  # near the corner; LV only in the last slice
    return root


def test_frame_indices_and_sax_start():
    np.testing.assert_array_equal(frame_indices(50, 4), [0, 16, 33, 49])
    np.testing.assert_array_equal(frame_indices(10, 10), np.arange(10))
    np.testing.assert_array_equal(frame_indices(7, 1), [0])
    lv = np.zeros(12, bool)
    lv[3:9] = True
    assert sax_start(lv, 6) == 5
    assert sax_start(lv, 9) == 3  # clamped: 5 + 9 > 12
    assert sax_start(np.zeros(12, bool), 6) == 3  # no LV: centred


def test_crop_centred_pads_with_fill():
    arr = np.arange(2 * 5 * 4, dtype=float).reshape(2, 5, 4)
    out = crop_centred(arr, (0, 3), 4, fill=-1)
    assert out.shape == (2, 4, 4)
    np.testing.assert_array_equal(out[:, :2], -1)  # x = -2, -1
    np.testing.assert_array_equal(out[:, 2:, :3], arr[:, 0:2, 1:4])
    np.testing.assert_array_equal(out[:, :, 3], -1)  # y = 4


def test_loader_matches_reference(cohort):
    item = {"eid": "1", "phenotypes": list(range(12)), "diseases": [0, 1, 0]}
    out = LoadCohortSubjectd(cohort, n_sax=2, n_frames=4, crop=16, crop_centre="image")(item)
    frames = [0, 3, 6, 9]
    # LV first at z=1 -> sax_0 = z3, sax_1 = z4
    order = [("la_2ch", 0), ("la_3ch", 0), ("la_4ch", 0), ("sa", 3), ("sa", 4)]
    centres = {"la_2ch": (20, 18), "la_3ch": (NX // 2, NY // 2), "la_4ch": (20, 18), "sa": (20, 18)}
    expected = reference_image(order, centres, frames, 16)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (5, 4, 16, 16)
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-6)
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0
    assert out["seg"].dtype == torch.int64 and out["seg"].shape == (5, 4, 16, 16)
    torch.testing.assert_close(out["seg_valid"], torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    seg = out["seg"].numpy()
    # block of 5x5 centred at (8, 8) in every labelled crop; unified labels
    block = (slice(6, 11), slice(6, 11))
    assert (seg[0][(slice(None), *block)] == LABELS["LA"]).all() and seg[0].sum() == 4 * 25 * LABELS["LA"]
    assert not seg[1].any()
    assert np.count_nonzero(seg[2] == LABELS["RA"]) == 4 * 10 and np.count_nonzero(seg[2] == LABELS["LA"]) == 4 * 15
    for s in (3, 4):
        assert [np.count_nonzero(seg[s] == LABELS[k]) for k in ("LV", "MYO", "RV")] == [4 * 10, 4 * 5, 4 * 10]
    assert out["phenotypes"].dtype == torch.float32 and out["phenotypes"].tolist() == list(range(12))
    assert out["diseases"].tolist() == [0.0, 1.0, 0.0] and out["eid"] == "1"


def test_loader_crop_ignores_labels_and_sax_clamp(cohort):
    """With ``crop_centre="image"`` the crop is image-centred whatever the labels (a heart near the corner is cut
    off, as it would be at inference); the SAX range still starts from the labels (clamped)."""
    out = LoadCohortSubjectd(cohort, n_sax=2, n_frames=2, crop=16, crop_centre="image")({"eid": "2"})
    # LV first at z=6 -> start 8 clamped to NZ - 2 = 5
    order = [("la_2ch", 0), ("la_3ch", 0), ("la_4ch", 0), ("sa", 5), ("sa", 6)]
    centres = dict.fromkeys(("la_2ch", "la_3ch", "la_4ch", "sa"), (NX // 2, NY // 2))
    expected = reference_image(order, centres, [0, 9], 16)
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-6)
    assert not out["seg"].any()  # the heart block at (3, 33) lies outside the central 16 x 16 window
    big = LoadCohortSubjectd(cohort, n_sax=2, n_frames=2, crop=44, crop_centre="image")({"eid": "2"})
    assert (big["image"][:, :, :2] == 0).all() and (big["image"][:, :, 42:] == 0).all()  # x < 0 and x >= 40 padded
    seg = big["seg"].numpy()
    assert not seg[3].any() and np.count_nonzero(seg[4]) == 2 * 25  # z5 has no labels, z6 does


def test_rand_crop_jitter(cohort):
    """Shifts within [-j, j] per file, reproducible with a seed, varying; zero jitter = the deterministic loader."""
    from kmtr_monai.data.cohort import RandLoadCohortSubjectd

    kw = dict(n_sax=2, n_frames=2, crop=12, crop_centre="image")
    ref = LoadCohortSubjectd(cohort, **kw)({"eid": "1"})
    same = RandLoadCohortSubjectd(cohort, crop_jitter=0, **kw)({"eid": "1"})
    torch.testing.assert_close(same["image"], ref["image"])
    wide = LoadCohortSubjectd(cohort, **{**kw, "crop": 18})({"eid": "1"})["seg"]  # the 12 x 12 crop ± 3
    seen = set()
    for seed in range(10):
        out = RandLoadCohortSubjectd(cohort, crop_jitter=3, **kw).set_random_state(seed)({"eid": "1"})
        again = RandLoadCohortSubjectd(cohort, crop_jitter=3, **kw).set_random_state(seed)
        torch.testing.assert_close(again({"eid": "1"})["image"], out["image"])
        for s in (0, 2, 3):  # la_2ch, la_4ch, sax_0: the 5 x 5 heart block sits at 4..8 without a shift
            xs, ys = np.nonzero(out["seg"][s, 0].numpy())
            dx, dy = 4 - xs.min(), 4 - ys.min()
            assert max(abs(dx), abs(dy)) <= 3
            seen.add((s, dx, dy))
            torch.testing.assert_close(out["seg"][s], wide[s, :, 3 + dx : 15 + dx, 3 + dy : 15 + dy])
        xs4, _ = np.nonzero(out["seg"][4, 0].numpy() == LABELS["LV"])
        xs3, _ = np.nonzero(out["seg"][3, 0].numpy() == LABELS["LV"])
        assert xs3.size and xs4.size and xs4.min() == xs3.min()  # the SAX slices share one shift
    assert len({k for k in seen if k[0] == 0}) > 3  # the shift really varies
    with pytest.raises(ValueError, match="crop_jitter"):
        RandLoadCohortSubjectd(cohort, n_sax=2, n_frames=2, crop=12, crop_jitter=-1)


def test_loader_without_seg_and_view_subset(cohort):
    out = LoadCohortSubjectd(cohort, n_sax=3, n_frames=1, crop=12, load_seg=False, views=("la_4ch", "sax_2"),
                               crop_centre="image")(
        {"eid": "2"}
    )
    assert "seg" not in out and "seg_valid" not in out
    # no seg: image centre (as with labels), SAX range centred: start (7 - 3) // 2 = 2 -> sax_2 = z4
    centres = {"la_4ch": (NX // 2, NY // 2), "sa": (NX // 2, NY // 2)}
    expected = reference_image([("la_4ch", 0), ("sa", 4)], centres, [0], 12)
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-6)


def test_make_dataset_and_collate(cohort):
    items = [{"eid": "1", "diseases": [1, 0, 0]}, {"eid": "2", "diseases": [0, 0, 1]}]
    ds = make_dataset(items, cohort, "tiny", cache=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 5, 4, 32, 32) and batch["seg"].shape == (2, 5, 4, 32, 32)
    assert batch["diseases"].shape == (2, 3) and list(batch["eid"]) == ["1", "2"]
    ds2 = make_dataset(items, cohort, dict(n_sax=1, n_frames=2, crop=8), transforms=lambda d: {**d, "flag": 1})
    assert ds2[0]["image"].shape == (4, 2, 8, 8) and ds2[0]["flag"] == 1
    with pytest.raises(ValueError, match="unknown data preset"):
        make_dataset(items, cohort, "huge")
    with pytest.raises(ValueError, match="'eid'"):
        make_dataset([{"id": 3}], cohort, "tiny")


@pytest.mark.parametrize(
    "breakage, exc, words",
    [
        ("missing_view", FileNotFoundError, ["'9'", "la_3ch.nii.gz"]),
        ("ndim", ValueError, ["'9'", "la_2ch.nii.gz", "4-D"]),
        ("shape_mismatch", ValueError, ["'9'", "seg_la_4ch.nii.gz", "la_4ch.nii.gz"]),
        ("empty", ValueError, ["'9'", "sa.nii.gz", "empty"]),
        ("corrupt", ValueError, ["'9'", "seg_sa.nii.gz", "cannot read"]),
        # any frame count is accepted (tests/test_sax_only_infer.py); an image and its segmentation must agree
        ("few_frames", ValueError, ["'9'", "seg_la_2ch.nii.gz", "la_2ch.nii.gz", "shape"]),
        ("nan", ValueError, ["'9'", "sa.nii.gz", "NaN"]),
        ("labels", ValueError, ["'9'", "seg_la_2ch.nii.gz", "[2]"]),
        ("slices", ValueError, ["'9'", "sa.nii.gz", "n_sax=2"]),
        ("phenotypes", ValueError, ["'9'", "phenotypes", "(12,)"]),
        ("no_folder", FileNotFoundError, ["'10'", "does not exist"]),
    ],
)
def test_loader_errors(tmp_path, breakage, exc, words):
    root = str(tmp_path)
    d = write_subject(root, "9")
    item = {"eid": "9"}
    p = lambda f: os.path.join(d, f)  # noqa: E731
    if breakage == "missing_view":
        os.remove(p("la_3ch.nii.gz"))
    elif breakage == "ndim":
        _save(p("la_2ch.nii.gz"), np.zeros((NX, NY), np.float32))
    elif breakage == "shape_mismatch":
        _save(p("seg_la_4ch.nii.gz"), np.zeros((NX, NY - 1, 1, NT), np.uint8))
    elif breakage == "empty":
        _save(p("sa.nii.gz"), np.zeros((NX, NY, 0, NT), np.float32))
    elif breakage == "corrupt":
        with open(p("seg_sa.nii.gz"), "wb") as f:
            f.write(b"garbage")
    elif breakage == "few_frames":
        _save(p("la_2ch.nii.gz"), np.ones((NX, NY, 1, 3), np.float32))
    elif breakage == "nan":
        arr = np.ones((NX, NY, NZ, NT), np.float32)
        arr[1, 2, 3, 4] = np.nan
        _save(p("sa.nii.gz"), arr)
    elif breakage == "labels":
        _save(p("seg_la_2ch.nii.gz"), np.full((NX, NY, 1, NT), 2, np.uint8))
    elif breakage == "slices":
        _save(p("sa.nii.gz"), np.ones((NX, NY, 1, NT), np.float32))
        _save(p("seg_sa.nii.gz"), np.zeros((NX, NY, 1, NT), np.uint8))
    elif breakage == "phenotypes":
        item["phenotypes"] = [1.0, 2.0]
    elif breakage == "no_folder":
        item = {"eid": "10"}
    with pytest.raises(exc) as err:
        LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=8)(item)
    for w in words:
        assert w in str(err.value)


def test_bad_views_rejected(tmp_path):
    with pytest.raises(ValueError, match="contract order"):
        LoadCohortSubjectd(str(tmp_path), 2, 4, 8, views=("sax_0", "la_2ch"))
    with pytest.raises(ValueError, match="not in the contract"):
        LoadCohortSubjectd(str(tmp_path), 2, 4, 8, views=("sax_2",))


def write_beating_subject(root, eid, centre, n_t=12, seed=0):
    """Static random texture plus a disc whose radius beats over frames, centred at ``centre`` (x, y); the labels
    are a block at a different place, so a label-based centre and the motion centre disagree."""
    d = os.path.join(root, eid)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(NX), np.arange(NY), indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
    for view in FILES:
        nz = NZ if view == "sa" else 1
        texture = rng.random((NX, NY, nz, 1)).astype(np.float32)
        radius = 4 + 2 * np.sin(2 * np.pi * np.arange(n_t) / n_t)  # (T,)
        disc = (r2[:, :, None, None] <= radius**2).astype(np.float32)  # (X, Y, 1, T)
        _save(os.path.join(d, f"{view}.nii.gz"), np.broadcast_to(texture + 2 * disc, (NX, NY, nz, n_t)).copy())
        if view != "la_3ch":
            seg = np.zeros((NX, NY, nz, n_t), np.uint8)
            seg[30:35, 3:8] = 1  # far from the beating disc
            _save(os.path.join(d, f"seg_{view}.nii.gz"), seg)


def test_motion_centre_finds_the_beating_region(tmp_path):
    from kmtr_monai.data.cohort import motion_centre

    write_beating_subject(str(tmp_path), "5", centre=(13, 24))
    img = nib.load(os.path.join(str(tmp_path), "5", "sa.nii.gz")).get_fdata()
    assert motion_centre(img) == (13, 24)
    assert motion_centre(img[..., :1]) == (NX // 2, NY // 2)  # one frame: nothing moves -> image centre
    assert motion_centre(np.ones((NX, NY, 2, 5))) == (NX // 2, NY // 2)


def test_default_crop_follows_motion_not_labels(tmp_path):
    """Default rule: the crop is centred on the beating disc in every view, and is the same with or without labels
    (the label block sits elsewhere), so training and inference crop alike."""
    root = str(tmp_path)
    write_beating_subject(root, "5", centre=(13, 24))
    with_seg = LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=12)({"eid": "5"})
    lax = ("la_2ch", "la_3ch", "la_4ch")  # (without labels the SAX range is chosen differently)
    lax_seg = LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=12, views=lax)({"eid": "5"})
    lax_no_seg = LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=12, views=lax, load_seg=False)({"eid": "5"})
    assert torch.equal(lax_seg["image"], lax_no_seg["image"])
    ed = with_seg["image"][:, 0].numpy()  # frame 0: radius 4, disc value 2 + texture
    bright = ed > 0.5 * ed.max()
    for s in range(5):
        xs, ys = np.nonzero(bright[s])
        assert (xs.mean(), ys.mean()) == pytest.approx((6.0, 6.0), abs=0.5)  # disc centre = crop centre (12 // 2)
    with pytest.raises(ValueError, match="crop_centre"):
        LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=12, crop_centre="heart")
    geo = LoadCohortSubjectd(root, n_sax=2, n_frames=4, crop=12, return_geometry=True)({"eid": "5"})
    assert geo["crop_centre"].tolist() == [[13, 24]] * 5
    assert geo["source_slice"].tolist() == [0, 0, 0, 2, 3]  # LV label in every slice: 0 + 2
    torch.testing.assert_close(geo["image"], with_seg["image"])


# ---- kspace_summary -------------------------------------------------------------------------------------------
def test_kspace_summary_fully_sampled_is_lossless(cohort, capsys):
    from kmtr_monai.data.summary import kspace_summary

    res = kspace_summary(cohort, preset="tiny", acceleration=1, pattern="gaussian")
    assert res["subjects"] == 2 and res["shape"] == [5, 4, 32, 32]
    assert res["lines_per_frame"] == 32 and res["effective_acceleration"] == 1.0
    assert res["psnr_mean"] > 80 and res["ssim_mean"] == pytest.approx(1.0, abs=1e-4)
    assert "effective acceleration" in capsys.readouterr().out


def test_kspace_summary_matches_numpy_reference(cohort):
    from kmtr_monai.data.summary import kspace_summary
    from kmtr_monai.transforms import RandKspaceMaskd, RandSmoothPhased

    res = kspace_summary(cohort, preset="tiny", acceleration=4, pattern="vista", seed=3)
    assert res["lines_per_frame"] == 8 and res["effective_acceleration"] == 4.0  # round(32 / 4) lines per frame
    assert res == {**kspace_summary(cohort, preset="tiny", acceleration=4, pattern="vista", seed=3),
                   "subjects_per_s": res["subjects_per_s"]}  # fmt: skip  (deterministic apart from timing)
    # NumPy reference for subject "2": same phase and masks, independent FFT / zero-fill / PSNR
    d = LoadCohortSubjectd(cohort, n_sax=2, n_frames=4, crop=32)({"eid": "2"})
    d = RandSmoothPhased("image", output_key="x", seed_key="eid", global_seed=3)(d)
    x = np.asarray(d["x"])
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    d = RandKspaceMaskd("k", output_key="ku", pattern="vista", accelerations=(4,), seed_key="eid", global_seed=3)(
        {"eid": "2", "k": torch.from_numpy(k.astype(np.complex64))}
    )
    mask = np.asarray(d["mask"])[..., None]
    zf = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k * mask, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    ref = np.abs(x)
    psnr = 10 * np.log10(ref.max() ** 2 / np.mean((zf - ref) ** 2))
    assert res["psnr"][1] == pytest.approx(psnr, abs=1e-3)
    assert 0 < res["ssim_mean"] < 1


def test_cli_kspace(cohort):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "kmtr_monai", "kspace", cohort, "--acceleration", "8", "--pattern", "equispaced"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "lines / frame             4.00 of 32" in res.stdout
    assert "effective_acceleration: 8.0" in res.stdout  # fire prints the returned figures as key: value lines


def test_loader_is_thread_safe(tiny_cohort):
    """CacheDataset fills its cache from a thread pool with one shared transform: no per-call state may live on the
    instance (a shared subject folder once mixed one subject's segmentation with another's image)."""
    from concurrent.futures import ThreadPoolExecutor

    from kmtr_monai.data.cohort import LoadCohortSubjectd

    load = LoadCohortSubjectd(str(tiny_cohort), n_sax=2, n_frames=4, crop=32, load_seg=True, return_geometry=True)
    eids = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())
    alone = [load({"eid": e}) for e in eids]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda e: load({"eid": e}), eids * 3))
    for i, d in enumerate(together):
        ref = alone[i % len(eids)]
        for key in ("image", "seg", "crop_centre", "source_slice"):
            assert torch.equal(d[key], ref[key]), (d["eid"], key)


def test_label_centred_crop_reference_centres_on_the_labels(tiny_cohort):
    """``crop_centre="label"`` (the old training rule, kept as a reference) centres each file's crop on its labelled
    voxels at frame 0; it needs segmentations."""
    from kmtr_monai.data.cohort import LoadCohortSubjectd

    eid = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    d = LoadCohortSubjectd(str(tiny_cohort), n_sax=2, n_frames=4, crop=32, crop_centre="label",
                           return_geometry=True)({"eid": eid})  # fmt: skip
    seg = nib.load(tiny_cohort / eid / "seg_la_4ch.nii.gz").get_fdata()
    xs, ys = np.nonzero((seg[..., 0] > 0).any(axis=2))
    assert d["crop_centre"][2].tolist() == [int(round(xs.mean())), int(round(ys.mean()))]  # la_4ch is view 2
