"""k-space transforms: checked against NumPy's centred FFT, analytic identities and exact counts."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from kmtr_monai.sampling import lines_per_frame
from kmtr_monai.transforms import (
    ApplyKspaceMask, ApplyKspaceMaskd, ChannelToComplex, ChannelToComplexd, CoilCombine, CoilCombined,
    ComplexToChannel, ComplexToChanneld, FFT2c, FFT2cd, IFFT2c, IFFT2cd, RandGlobalPhase, RandGlobalPhased,
    RandKspaceMask, RandKspaceMaskd, RandKspaceShift, RandKspaceShiftd, RandSmoothPhase, RandSmoothPhased,
    RandViewRotate, RandViewRotated, SimulateCoils, SimulateCoilsd, ZeroFilled, ZeroFilledd, cached_make_mask,
    fft2c, ifft2c,
)  # fmt: skip
from kmtr_monai.transforms.fft import checkerboard

RNG = np.random.default_rng(0)


def crandn(*shape, dtype=np.complex64):
    return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dtype)


def np_fft2c(x):
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=ax), norm="ortho"), axes=ax)


def np_ifft2c(k):
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=ax), norm="ortho"), axes=ax)


def views_roll(x, shifts):
    """Independent reference: torch.roll view by view."""
    return torch.stack([torch.roll(x[..., s, :, :, :], tuple(int(v) for v in shifts[s]), (-2, -1))
                        for s in range(x.shape[-4])], dim=-4)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ FFT
SHAPES = [(8, 6), (7, 5), (8, 5), (5, 8), (2, 3, 8, 6), (3, 1, 9, 10), (2, 2, 3, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_matches_numpy_centred_fft(shape):
    x = crandn(*shape, dtype=np.complex128)
    k_ref, x_ref = np_fft2c(x), np_ifft2c(x)
    k = fft2c(torch.from_numpy(x.astype(np.complex64)))
    assert k.dtype == torch.complex64 and k.shape == shape
    np.testing.assert_allclose(k.numpy(), k_ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x.astype(np.complex64))).numpy(), x_ref, atol=2e-5, rtol=0)
    # float64 / complex128 keep their precision and numpy in -> numpy out
    k64 = fft2c(x)
    assert isinstance(k64, np.ndarray) and k64.dtype == np.complex128
    np.testing.assert_allclose(k64, k_ref, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 8, 6), (3, 7, 9)])
def test_fft_round_trip_and_parseval(shape):
    x = torch.from_numpy(crandn(*shape))
    k = fft2c(x)
    np.testing.assert_allclose(ifft2c(k).numpy(), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(fft2c(ifft2c(x)).numpy(), x.numpy(), atol=1e-5)
    e_img = (x.abs() ** 2).sum((-2, -1))
    e_k = (k.abs() ** 2).sum((-2, -1))
    np.testing.assert_allclose(e_k.numpy(), e_img.numpy(), rtol=1e-5)


def test_real_input_and_checkerboard_cache():
    x = RNG.random((3, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(fft2c(torch.from_numpy(x)).numpy(), np_fft2c(x), atol=2e-5)
    cb = checkerboard(8, 6)
    assert cb is checkerboard(8, 6)  # cached per (H, W, device, dtype)
    assert cb[0, 0] == 1 and cb[0, 1] == -1 and cb[1, 0] == -1 and cb[1, 1] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fft2c_on_gpu_matches_cpu():
    x = torch.from_numpy(crandn(2, 3, 16, 10))
    np.testing.assert_allclose(fft2c(x.cuda()).cpu().numpy(), fft2c(x).numpy(), atol=1e-5)


def test_fft_transforms_and_dict_versions_keep_kind():
    x = crandn(2, 3, 8, 8)
    k = FFT2c()(x)
    assert isinstance(k, np.ndarray)
    np.testing.assert_allclose(k, np_fft2c(x), atol=2e-5)
    mt = MetaTensor(torch.from_numpy(x), meta={"eid": "7"})
    kt = FFT2c()(mt)
    assert isinstance(kt, MetaTensor) and kt.meta["eid"] == "7"
    d = IFFT2cd("k")(FFT2cd("k")({"k": torch.from_numpy(x)}))
    np.testing.assert_allclose(d["k"].numpy(), x, atol=1e-5)


# ------------------------------------------------------------------------------------------ complex <-> channels
def test_complex_channel_round_trip():
    x = torch.from_numpy(crandn(2, 3, 8, 6))
    c = ComplexToChannel()(x)
    assert c.shape == (2, 2, 3, 8, 6) and c.dtype == torch.float32
    assert torch.equal(c[0], x.real) and torch.equal(c[1], x.imag)
    assert torch.equal(ChannelToComplex()(c), x)
    d = ChannelToComplexd("x", output_key="y")(ComplexToChanneld("x")({"x": x.numpy()}))
    assert isinstance(d["x"], np.ndarray) and d["x"].shape == (2, 2, 3, 8, 6)
    np.testing.assert_array_equal(d["y"], x.numpy())
    with pytest.raises(ValueError, match="size 2"):
        ChannelToComplex()(torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------------------------- smooth phase
def test_smooth_phase_shared_across_frames_magnitude_preserved_and_smooth():
    img = torch.rand(3, 4, 64, 64) * 0.8 + 0.1
    t = RandSmoothPhase(sigma=2.0, magnitude_range=None)
    t.set_random_state(1)
    x = t(img)
    assert x.dtype == torch.complex64 and x.shape == img.shape
    np.testing.assert_allclose(x.abs().numpy(), img.numpy(), rtol=1e-5)
    phasor = x / x.abs()
    assert torch.allclose(phasor, phasor[:, :1].expand_as(phasor), atol=1e-5)  # shared by every frame
    assert not torch.allclose(phasor[0, 0], phasor[1, 0], atol=0.1)  # but differs per view

    def roughness(p):  # mean |phasor step| between neighbours; uniform random phase gives 4/pi ~ 1.27
        return float(((p[..., 1:, :] - p[..., :-1, :]).abs().mean() + (p[..., 1:] - p[..., :-1]).abs().mean()) / 2)

    smooth = roughness(phasor[:, 0])
    rough_t = RandSmoothPhase(sigma=12.0, magnitude_range=None)
    rough_t.set_random_state(1)
    rough = roughness(rough_t(img)[:, 0] / img[:, 0])
    assert smooth < 0.3 < rough < 1.2  # smooth, and the filter width controls it


def test_smooth_phase_magnitude_range_and_subject_determinism():
    img = torch.rand(2, 3, 16, 16) * 5 + 2
    x = RandSmoothPhase()(img)
    ref = (img - img.min()) / (img.max() - img.min()) * math.sqrt(2)
    np.testing.assert_allclose(x.abs().numpy(), ref.numpy(), atol=1e-5)
    assert abs(float(x.abs().max()) - math.sqrt(2)) < 1e-5 and float(x.abs().min()) < 1e-5
    a = RandSmoothPhased(seed_key="eid").set_random_state(1)({"image": img, "eid": "1001"})
    b = RandSmoothPhased(seed_key="eid").set_random_state(2)({"image": img, "eid": "1001"})
    c = RandSmoothPhased(seed_key="eid")({"image": img, "eid": "1002"})
    assert torch.equal(a["kspace_full"], b["kspace_full"]) and torch.equal(a["image"], img)
    assert not torch.allclose(a["kspace_full"], c["kspace_full"])


# ------------------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("pattern", ["vista", "gaussian", "equispaced"])
def test_mask_broadcast_exact_and_lines_per_frame(pattern):
    s, t, h, w, r = 3, 6, 32, 12, 4
    k = torch.from_numpy(crandn(s, t, h, w))
    tr = RandKspaceMask(pattern=pattern, accelerations=(r,))
    tr.set_random_state(0)
    km, mask = tr(k)
    assert mask.shape == (s, t, h) and mask.dtype == torch.float32 and tr.acceleration == r
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(-1) == lines_per_frame(h, r)).all()  # exactly round(H/R) lines in every frame
    sampled = mask.bool()
    assert torch.equal(km[sampled], k[sampled])  # sampled lines untouched (whole kx rows)
    assert (km[~sampled] == 0).all()  # unsampled lines exactly zero
    assert not torch.equal(mask[0], mask[1])  # a different seed per view
    # the same masks broadcast over a leading coil axis
    kc = torch.from_numpy(crandn(2, s, t, h, w))
    kcm, mask_c = tr(kc, randomize=False)
    assert torch.equal(mask_c, mask) and (kcm[:, ~sampled] == 0).all() and torch.equal(kcm[:, sampled], kc[:, sampled])


def test_mask_acceleration_choice_and_dict_outputs():
    k = crandn(2, 4, 32, 8)
    tr = RandKspaceMaskd("kspace_full", pattern="gaussian", accelerations=(2, 8), seed_key=None)
    tr.set_random_state(3)
    seen = set()
    for _ in range(12):
        d = tr({"kspace_full": k})
        r = d["acceleration"]
        seen.add(r)
        assert isinstance(d["kspace"], np.ndarray) and isinstance(d["mask"], np.ndarray)
        assert (d["mask"].sum(-1) == lines_per_frame(32, r)).all()
        np.testing.assert_array_equal(d["kspace"], k * d["mask"][..., None])
    assert seen == {2, 8}


def test_per_subject_mask_determinism_with_seed_key():
    k = torch.from_numpy(crandn(3, 4, 32, 8))

    def masks(eid, seed, global_seed=0):
        tr = RandKspaceMaskd("k", pattern="vista", accelerations=(4, 8), seed_key="eid", global_seed=global_seed)
        c = Compose([tr]).set_random_state(seed)  # the transform's own RNG must not matter
        d = c({"k": k, "eid": eid})
        return d["mask"], d["acceleration"]

    m1, r1 = masks("1001", 0)
    m2, r2 = masks("1001", 99)
    assert torch.equal(m1, m2) and r1 == r2
    assert not torch.equal(m1, masks("1002", 0)[0])
    assert not torch.equal(m1, masks("1001", 0, global_seed=1)[0])
    # without seed_key the Compose seed decides, reproducibly
    tr = Compose([RandKspaceMaskd("k", pattern="gaussian")])
    a = tr.set_random_state(5)({"k": k})["mask"]
    b = tr.set_random_state(5)({"k": k})["mask"]
    assert torch.equal(a, b)


def test_vista_masks_are_cached_on_disk_per_generator_version(tmp_path, monkeypatch):
    from kmtr_monai.sampling import make_mask
    from kmtr_monai.transforms import array

    def fresh(cache_dir):
        monkeypatch.setenv("KMTR_CACHE_DIR", str(cache_dir))
        array._mask_disk_cache.cache_clear()
        cached_make_mask.cache_clear()

    fresh(tmp_path)
    first = cached_make_mask("vista", 24, 6, 4, 3)
    files = sorted(p.name for p in tmp_path.rglob("output.pkl"))
    assert len(files) == 1  # one VISTA mask, one entry
    cached_make_mask("gaussian", 24, 6, 4, 3)
    assert len(list(tmp_path.rglob("output.pkl"))) == 1  # cheap patterns are not written
    fresh(tmp_path)  # a new process: empty in-memory cache, the disk entry read back
    again = cached_make_mask("vista", 24, 6, 4, 3)
    assert np.array_equal(again, first) and np.array_equal(again, make_mask("vista", 24, 6, 4, seed=3))
    assert again.dtype == bool and not again.flags.writeable
    calls = []
    monkeypatch.setattr(array, "_make_mask", lambda *a: calls.append(a) or np.zeros((6, 24), bool))
    fresh(tmp_path)
    assert np.array_equal(cached_make_mask("vista", 24, 6, 4, 3), first) and not calls  # from disk, not computed
    sha256 = array.hashlib.sha256
    monkeypatch.setattr(array.hashlib, "sha256", lambda b: sha256(b + b"changed"))
    fresh(tmp_path)  # another sampling.py: its masks are computed, never read from the old entries
    cached_make_mask("vista", 24, 6, 4, 3)
    assert len(calls) == 1
    fresh("off")
    cached_make_mask("vista", 24, 6, 4, 5)
    assert len(calls) == 2 and len(list(tmp_path.rglob("output.pkl"))) == 2


def test_mask_pool_bounds_the_cache():
    cached_make_mask.cache_clear()
    tr = RandKspaceMask(pattern="gaussian", accelerations=(2, 4), mask_pool=3)
    tr.set_random_state(0)
    k = torch.from_numpy(crandn(2, 3, 16, 4))
    for _ in range(30):
        tr(k)
    info = cached_make_mask.cache_info()
    assert info.currsize == 6  # 3 seeds per R, 2 R values: every pool entry reached, none beyond
    assert info.hits == 60 - 6


def test_apply_mask_and_zero_filled_match_numpy():
    k = crandn(2, 3, 10, 8)
    mask = (RNG.random((2, 3, 10)) < 0.4).astype(np.float32)
    ref_k = k * mask[..., None]
    np.testing.assert_array_equal(ApplyKspaceMask()(k, mask), ref_k)
    ref = np.abs(np_ifft2c(ref_k.astype(np.complex128)))
    np.testing.assert_allclose(ZeroFilled()(torch.from_numpy(k), torch.from_numpy(mask)).numpy(), ref, atol=1e-5)
    odd = crandn(2, 3, 9, 7)
    np.testing.assert_allclose(ZeroFilled()(odd), np.abs(np_ifft2c(odd)), atol=1e-5)
    d = ZeroFilledd("kspace", mask_key="mask")({"kspace": k, "mask": mask})
    assert d["zero_filled"].dtype == np.float32
    np.testing.assert_allclose(d["zero_filled"], ref, atol=1e-5)
    d = ApplyKspaceMaskd("kspace", output_key="masked")({"kspace": k, "mask": mask})
    np.testing.assert_array_equal(d["masked"], ref_k)


def test_full_simulation_chain():
    img = torch.rand(2, 4, 32, 32)
    chain = Compose([
        RandSmoothPhased("image", output_key="kspace_full", seed_key="eid"),
        FFT2cd("kspace_full"),
        RandKspaceMaskd("kspace_full", output_key="kspace", pattern="vista", seed_key="eid"),
        ZeroFilledd("kspace", output_key="zero_filled"),
    ])  # fmt: skip
    d = chain({"image": img, "eid": "42"})
    x = ifft2c(d["kspace_full"])
    scaled = (img - img.min()) / (img.max() - img.min()) * math.sqrt(2)
    np.testing.assert_allclose(x.abs().numpy(), scaled.numpy(), atol=1e-5)
    ref = np.abs(np_ifft2c(d["kspace_full"].numpy() * d["mask"].numpy()[..., None]))
    np.testing.assert_allclose(d["zero_filled"].numpy(), ref, atol=1e-5)
    assert torch.equal(chain({"image": img, "eid": "42"})["zero_filled"], d["zero_filled"])


# ----------------------------------------------------------------------------------------------- augmentations
@pytest.mark.parametrize("hw", [(16, 12), (15, 9)])
def test_kspace_shift_equals_roll(hw):
    img = torch.from_numpy(crandn(3, 2, *hw))
    k = fft2c(img)
    tr = RandKspaceShift(max_shift=4)
    tr.set_random_state(2)
    ks = tr(k)
    shifts = tr.shifts
    assert shifts.shape == (3, 2) and np.abs(shifts).max() <= 4 and len({tuple(s) for s in shifts}) > 1
    np.testing.assert_allclose(ifft2c(ks).numpy(), views_roll(img, shifts).numpy(), atol=1e-5)
    seg = torch.from_numpy(RNG.integers(0, 6, (3, 2, *hw)))
    assert torch.equal(tr.roll_image(seg), views_roll(seg, shifts))


def test_kspace_shift_dict_keeps_image_and_seg_aligned():
    img = torch.rand(2, 3, 16, 16)
    seg = (img > 0.5).long()
    x = img.to(torch.complex64)
    d = {"kspace": fft2c(x), "image": img, "seg": seg}
    tr = RandKspaceShiftd(keys="kspace", image_keys=["image", "seg"], max_shift=3, per_view=False)
    tr.set_random_state(4)
    out = tr(d)
    dy, dx = tr.t.shifts[0]
    assert (tr.t.shifts == tr.t.shifts[0]).all() and (dy, dx) != (0, 0)
    assert torch.equal(out["image"], torch.roll(img, (int(dy), int(dx)), (-2, -1)))
    assert torch.equal(out["seg"], torch.roll(seg, (int(dy), int(dx)), (-2, -1)))
    np.testing.assert_allclose(ifft2c(out["kspace"]).real.numpy(), out["image"].numpy(), atol=1e-5)


def test_global_phase_is_constant_per_view():
    k = torch.from_numpy(crandn(3, 2, 8, 8))
    tr = RandGlobalPhase()
    tr.set_random_state(0)
    out = tr(k)
    ratio = out / k
    np.testing.assert_allclose(ratio.abs().numpy(), 1.0, atol=1e-5)
    expected = torch.polar(torch.ones(3, dtype=torch.float64), torch.as_tensor(tr.theta)).to(torch.complex64)
    np.testing.assert_allclose(ratio.numpy(), expected[:, None, None, None].expand_as(ratio).numpy(), atol=1e-5)
    d = RandGlobalPhased(["a", "b"]).set_random_state(0)({"a": k, "b": 2 * k})
    np.testing.assert_allclose((d["b"] / d["a"]).numpy(), 2.0, atol=1e-5)  # the same draw for every key
    assert isinstance(RandGlobalPhase(prob=0.0)(k), torch.Tensor) and torch.equal(RandGlobalPhase(prob=0.0)(k), k)


def _centroid(img: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2) intensity centroid (row, column) relative to the in-plane centre."""
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    m = img.sum((-2, -1))
    return torch.stack([(img * ys).sum((-2, -1)) / m, (img * xs).sum((-2, -1)) / m], -1)


def test_view_rotation_turns_each_view_by_its_own_angle():
    h = 33
    ys, xs = torch.meshgrid(torch.arange(h) - 16.0, torch.arange(h) - 16.0, indexing="ij")
    blob = torch.exp(-((ys - 3.0) ** 2 + (xs - 9.0) ** 2) / 4.0)  # a small spot 9.5 px from the centre
    img = blob.expand(4, 3, h, h).clone()  # (S, T, H, W): every view and frame the same
    tr = RandViewRotate(max_angle_deg=180.0).set_random_state(1)
    out = tr(img)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert len(set(np.round(tr.angles, 6))) == 4  # one angle per view
    assert torch.equal(out[:, 0], out[:, 2])  # frames of a view turn together
    before, after = _centroid(img)[:, 0], _centroid(out)[:, 0]  # (S, 2)
    np.testing.assert_allclose(after.norm(dim=-1).numpy(), before.norm(dim=-1).numpy(), atol=0.1)  # radius kept
    turned = torch.atan2(after[:, 0], after[:, 1]) - torch.atan2(before[:, 0], before[:, 1])
    turned = torch.remainder(turned + math.pi, 2 * math.pi) - math.pi
    sign = np.sign(turned[0].item() * tr.angles[0])  # one rotation sense for every view
    np.testing.assert_allclose(turned.numpy(), sign * tr.angles, atol=0.02)
    assert torch.equal(RandViewRotate(max_angle_deg=0.0)(img), img)
    assert torch.equal(RandViewRotate(prob=0.0)(img), img)


def test_view_rotation_dict_shares_a_draw_and_checks_input():
    img = torch.rand(3, 2, 16, 16)
    d = RandViewRotated(["a", "b"]).set_random_state(0)({"a": img, "b": img.clone()})
    assert torch.equal(d["a"], d["b"]) and not torch.equal(d["a"], img)
    other = RandViewRotated("a").set_random_state(1)({"a": img})["a"]  # a second instance draws its own angles
    assert not torch.allclose(other, d["a"])
    with pytest.raises(TypeError, match="'kspace'.*complex"):
        RandViewRotated("kspace")({"kspace": img.to(torch.complex64)})
    with pytest.raises(ValueError, match="'image'.*4 dims"):
        RandViewRotated("image")({"image": img[0]})
    with pytest.raises(ValueError, match="max_angle_deg"):
        RandViewRotate(max_angle_deg=200.0)


# ------------------------------------------------------------------------------------------------- multi-coil
def test_simulated_coils_are_normalised_and_combine_back():
    x = torch.from_numpy(crandn(2, 3, 16, 12))
    sim = SimulateCoils(n_coils=6)
    maps = sim.maps(16, 12)
    assert maps.shape == (6, 16, 12)
    np.testing.assert_allclose((maps.abs() ** 2).sum(0).numpy(), 1.0, atol=1e-5)
    assert float(maps.abs().std(0).mean()) > 0.05  # the coils really differ
    coils = sim(x)
    assert coils.shape == (6, 2, 3, 16, 12)
    kc = fft2c(coils)
    sense = CoilCombine("sense")(kc, maps)
    np.testing.assert_allclose(sense.numpy(), x.numpy(), atol=1e-5)
    rss = CoilCombine("rss")(kc)
    np.testing.assert_allclose(rss.numpy(), x.abs().numpy(), atol=1e-5)
    d = SimulateCoilsd("x", output_key="kc", n_coils=4, to_kspace=True)({"x": x})
    d = CoilCombined("kc", output_key="y")(d)
    np.testing.assert_allclose(d["y"].numpy(), x.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ errors
def test_errors_name_key_and_expectation():
    real = torch.rand(2, 3, 8, 8)
    cplx = real.to(torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        IFFT2c()(real)
    with pytest.raises(TypeError, match="'kspace'.*complex"):
        ZeroFilledd("kspace")({"kspace": real})
    with pytest.raises(TypeError, match="'image'.*real"):
        RandSmoothPhased("image")({"image": cplx})
    with pytest.raises(TypeError, match="real"):
        ChannelToComplex()(torch.zeros(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"'image'.*4 dims.*\(S, T, H, W\)"):
        RandSmoothPhased("image")({"image": real[0]})
    with pytest.raises(ValueError, match="'kf'.*at least 4 dims"):
        RandKspaceMaskd("kf", pattern="gaussian")({"kf": cplx[0]})
    bad = cplx.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="'kspace_full'.*NaN"):
        FFT2cd("kspace_full")({"kspace_full": bad})
    with pytest.raises(ValueError, match="'kspace'.*NaN"):
        RandKspaceMaskd("kspace", pattern="gaussian")({"kspace": bad})
    for key, tr in (("kspace", ZeroFilledd("kspace")), ("k", IFFT2cd("k"))):
        with pytest.raises(ValueError, match=f"'{key}'.*NaN"):
            tr({key: bad})
    bad_img = real.clone()
    bad_img[0, 1, 2, 3] = float("inf")
    for rng in ((0.0, 1.0), None):
        with pytest.raises(ValueError, match="'image'.*NaN or Inf"):
            RandSmoothPhased("image", magnitude_range=rng)({"image": bad_img})
    bad_img[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="'image'.*NaN or Inf"):
        RandSmoothPhased("image")({"image": bad_img})
    with pytest.raises(ValueError, match="'mask'.*does not match"):
        ApplyKspaceMask()(cplx, torch.ones(2, 3, 7))
    with pytest.raises(ValueError, match="'mask'.*does not match"):
        ZeroFilledd("kspace", mask_key="mask")({"kspace": cplx, "mask": torch.ones(2, 3, 9)})
    with pytest.raises(KeyError, match="seed_key 'eid'"):
        RandKspaceMaskd("k", pattern="gaussian", seed_key="eid")({"k": cplx})
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        FFT2c()([[1.0, 2.0]])
    with pytest.raises(ValueError, match="sensitivity maps"):
        CoilCombine("sense")(cplx)
