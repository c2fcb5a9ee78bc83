"""Property-based tests (hypothesis): random shapes, accelerations and seeds for the k-space transforms, the ky–t
masks, view sharing, the loader's crop and frame rules, and the k-space encoder's no-leakage guarantee.

Every property is checked against an independent reference (NumPy FFT, Python loops) or an exact invariant.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kmtr_monai.data.cohort import crop_centred, frame_indices
from kmtr_monai.sampling import lines_per_frame, make_mask
from kmtr_monai.transforms import FFT2c, IFFT2c, RandKspaceMask, fft2c, ifft2c
from kmtr_monai.view_sharing import view_share

FEW = settings(max_examples=20, deadline=None)
SEEDS = st.integers(0, 2**31 - 1)


def complex_array(seed, shape):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


# ---- FFT -----------------------------------------------------------------------------------------------------
@FEW
@given(s=st.integers(1, 3), t=st.integers(1, 3), h=st.integers(2, 17), w=st.integers(2, 17), seed=SEEDS)
def test_fft_matches_numpy_round_trips_and_keeps_energy(s, t, h, w, seed):
    x = complex_array(seed, (s, t, h, w))
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    k = FFT2c()(torch.from_numpy(x))
    np.testing.assert_allclose(k.numpy(), ref, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(fft2c(x), ref, atol=2e-5 * np.abs(ref).max())  # the numpy path too
    back = IFFT2c()(k)
    np.testing.assert_allclose(back.numpy(), x, atol=1e-5 * np.abs(x).max())
    np.testing.assert_allclose(ifft2c(ref), x, atol=1e-5 * np.abs(x).max())
    energy = float(np.sum(np.abs(x.astype(np.complex128)) ** 2))
    assert float(torch.sum(k.abs().double() ** 2)) == pytest.approx(energy, rel=1e-5)  # Parseval (orthonormal FFT)


# ---- ky–t masks ----------------------------------------------------------------------------------------------
@FEW
@given(
    pattern=st.sampled_from(["vista", "gaussian", "equispaced"]),
    n_pe=st.integers(8, 48),
    n_frames=st.integers(1, 10),
    acceleration=st.one_of(st.integers(1, 16), st.floats(1.0, 16.0)),
    seed=SEEDS,
)
def test_masks_have_exact_line_counts(pattern, n_pe, n_frames, acceleration, seed):
    mask = make_mask(pattern, n_pe, n_frames, acceleration, seed=seed)
    n_lines = max(1, round(n_pe / acceleration))
    assert lines_per_frame(n_pe, acceleration) == n_lines
    assert mask.shape == (n_frames, n_pe) and mask.dtype == bool
    assert (mask.sum(axis=1) == n_lines).all()
    assert np.array_equal(mask, make_mask(pattern, n_pe, n_frames, acceleration, seed=seed))  # seeded
    if pattern == "vista" and n_lines * n_frames >= n_pe:
        assert mask.any(axis=0).all()  # VISTA: the time average is fully sampled when it can be


@FEW
@given(s=st.integers(1, 3), t=st.integers(1, 5), h=st.sampled_from([8, 12, 16, 20]), w=st.integers(2, 9),
       r=st.sampled_from([1, 2, 4, 8, 16]), seed=SEEDS)  # fmt: skip
def test_rand_kspace_mask_keeps_sampled_lines_and_zeros_the_rest(s, t, h, w, r, seed):
    k = torch.from_numpy(complex_array(seed, (s, t, h, w)))
    masked, mask = RandKspaceMask(pattern="gaussian", accelerations=(r,), global_seed=seed)(k, subject_id=str(seed))
    assert mask.shape == (s, t, h)
    assert (mask.sum(-1) == max(1, round(h / r))).all()  # round(nPE / R) lines in every frame of every view
    m = mask.bool()[..., None].expand_as(k)
    assert torch.equal(masked[m], k[m]) and not masked[~m].abs().any()


# ---- view sharing --------------------------------------------------------------------------------------------
def view_share_reference(k, mask):
    """Loop reference: each unsampled line takes the nearest sampled frame of the same ky (cyclic in time); a tie
    averages the two; a ky never sampled stays zero."""
    b_, c_, s_, t_, h_, _ = k.shape
    out = np.zeros_like(k)
    for b in range(b_):
        for s in range(s_):
            for t in range(t_):
                for h in range(h_):
                    if mask[b, s, t, h]:
                        out[b, :, s, t, h] = k[b, :, s, t, h]
                        continue
                    fwd = next((d for d in range(1, t_) if mask[b, s, (t + d) % t_, h]), None)
                    bwd = next((d for d in range(1, t_) if mask[b, s, (t - d) % t_, h]), None)
                    if fwd is None:
                        continue
                    nxt, prv = k[b, :, s, (t + fwd) % t_, h], k[b, :, s, (t - bwd) % t_, h]
                    out[b, :, s, t, h] = nxt if fwd < bwd else prv if bwd < fwd else (nxt + prv) / 2
    return out


@FEW
@given(b=st.integers(1, 2), s=st.integers(1, 3), t=st.integers(1, 6), h=st.integers(2, 10), w=st.integers(1, 4),
       density=st.floats(0.0, 1.0), seed=SEEDS)  # fmt: skip
def test_view_sharing_matches_reference_and_keeps_sampled_lines(b, s, t, h, w, density, seed):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(b, 2, s, t, h, w))
    mask = rng.random((b, s, t, h)) < density
    out = view_share(torch.from_numpy(k), torch.from_numpy(mask)).numpy()
    m = np.broadcast_to(mask[:, None, ..., None], k.shape)
    np.testing.assert_array_equal(out[m], k[m])  # sampled lines unchanged, bit for bit
    np.testing.assert_allclose(out, view_share_reference(k, mask), atol=1e-12)
    noisy = np.where(m, k, rng.normal(size=k.shape) * 1e3)  # unsampled values never leak into the output
    np.testing.assert_array_equal(view_share(torch.from_numpy(noisy), torch.from_numpy(mask)).numpy(), out)


# ---- loader rules --------------------------------------------------------------------------------------------
@FEW
@given(n_total=st.integers(1, 60), n_frames=st.integers(1, 60))
def test_frame_indices(n_total, n_frames):
    idx = frame_indices(n_total, n_frames)
    assert idx.shape == (n_frames,) and idx[0] == 0
    if n_frames > 1:
        assert all(idx[i] == round(i * (n_total - 1) / (n_frames - 1)) for i in range(n_frames))
        assert idx[-1] == n_total - 1 and (np.diff(idx) >= 0).all()


@FEW
@given(nx=st.integers(1, 12), ny=st.integers(1, 12), crop=st.integers(1, 16), cx=st.integers(-20, 30),
       cy=st.integers(-20, 30), seed=SEEDS)  # fmt: skip
def test_crop_centred_matches_loop(nx, ny, crop, cx, cy, seed):
    arr = np.random.default_rng(seed).normal(size=(2, nx, ny))
    out = crop_centred(arr, (cx, cy), crop, fill=np.nan)
    for i in range(crop):
        for j in range(crop):
            x, y = cx - crop // 2 + i, cy - crop // 2 + j
            want = arr[:, x, y] if 0 <= x < nx and 0 <= y < ny else np.full(2, np.nan)
            np.testing.assert_array_equal(out[:, i, j], want)


# ---- no leakage ----------------------------------------------------------------------------------------------
_MODELS = {}


def tiny_kspace_mae(tokenizer):
    """Built once per tokenizer (tiny preset: 5 views, 4 frames, 32 × 32), random weights, eval mode."""
    if tokenizer not in _MODELS:
        from kmtr_monai.networks import build_kspace_mae

        torch.manual_seed(0)
        _MODELS[tokenizer] = build_kspace_mae("tiny", tokenizer=tokenizer, pool="mean").eval()
    return _MODELS[tokenizer]


@settings(max_examples=10, deadline=None)
@given(tokenizer=st.sampled_from(["line", "patch", "hybrid"]), r=st.sampled_from([2, 4, 8, 16]), seed=SEEDS,
       pattern=st.sampled_from(["vista", "gaussian", "equispaced"]))  # fmt: skip
def test_encoder_ignores_unsampled_values(tokenizer, r, seed, pattern):
    model = tiny_kspace_mae(tokenizer)
    k = torch.from_numpy(complex_array(seed, (5, 4, 32, 32)))
    masked, mask = RandKspaceMask(pattern=pattern, accelerations=(r,), global_seed=seed)(k, subject_id=str(seed))
    full = torch.stack([k.real, k.imag])[None]  # (1, 2, S, T, H, W)
    under = torch.stack([masked.real, masked.imag])[None]
    noise = torch.randn(full.shape, generator=torch.Generator().manual_seed(seed)) * 50
    unsampled = (mask == 0)[None, None, ..., None].expand_as(full)
    garbage = torch.where(unsampled, noise, under)
    with torch.no_grad():
        t0, p0 = model.encode(under, mask[None])
        for other in (full, garbage):  # fully sampled, or noise where nothing was sampled
            t1, p1 = model.encode(other, mask[None])
            assert torch.equal(t0, t1) and torch.equal(p0, p1)
