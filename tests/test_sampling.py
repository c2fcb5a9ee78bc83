"""Tests for kmtr_monai.sampling: exact line budgets, coverage, density fall-off, determinism, files, errors."""

import math

import numpy as np
import pytest

from kmtr_monai.sampling import (
    PATTERNS,
    _dedup_sorted,
    _fill_time_average,
    lines_per_frame,
    make_mask,
    vista_density,
)

GENERATED = ("vista", "gaussian", "equispaced")
ACCELS = (2, 4, 8, 16)
SIZES = ((96, 1), (128, 50), (160, 8), (256, 20))


def _expected_lines(n_pe, r):
    return max(1, round(n_pe / r))


def _band_means(mask):
    """Mean sampling frequency over frames and lines in the central (|k-c| < n/8) and outer (|k-c| >= 3n/8) bands."""
    n = mask.shape[1]
    dist = np.abs(np.arange(n) - n // 2)
    freq = mask.mean(axis=0)
    return freq[dist < n / 8].mean(), freq[dist >= 3 * n / 8].mean()


# ------------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("pattern", GENERATED)
@pytest.mark.parametrize("r", ACCELS)
@pytest.mark.parametrize("n_pe,n_frames", SIZES)
def test_exact_lines_per_frame(pattern, r, n_pe, n_frames):
    mask = make_mask(pattern, n_pe, n_frames, r, seed=1)
    assert mask.dtype == np.bool_ and mask.shape == (n_frames, n_pe)
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(n_frames, _expected_lines(n_pe, r)))


@pytest.mark.parametrize("pattern", GENERATED)
@pytest.mark.parametrize("n_pe,r", [(100, 3.7), (97, 2.5), (130, 1.5), (10, 4), (2, 2), (3, 1000.0), (512, 16)])
def test_float_accelerations_and_small_sizes(pattern, n_pe, r):
    mask = make_mask(pattern, n_pe, 5, r, seed=0)
    # Python round semantics (half to even) and at least one line
    expected = max(1, int(round(n_pe / r)))
    assert expected == lines_per_frame(n_pe, r)
    np.testing.assert_array_equal(mask.sum(axis=1), expected)


def test_lines_per_frame_round_half_even():
    assert lines_per_frame(10, 4) == 2  # 2.5 -> 2
    assert lines_per_frame(14, 4) == 4  # 3.5 -> 4
    assert lines_per_frame(96, 1000) == 1


@pytest.mark.parametrize("pattern", GENERATED)
def test_acceleration_one_returns_all_lines(pattern):
    assert make_mask(pattern, 64, 7, 1, seed=3).all()
    assert make_mask(pattern, 64, 7, 1.0, seed=3).all()


@pytest.mark.parametrize("pattern", GENERATED)
@pytest.mark.parametrize("r", ACCELS)
def test_density_falls_off_from_centre(pattern, r):
    centre, outer = _band_means(make_mask(pattern, 128, 50, r, seed=2))
    assert centre > outer


@pytest.mark.parametrize("pattern", GENERATED)
def test_deterministic_for_a_seed(pattern):
    a = make_mask(pattern, 128, 12, 4, seed=11)
    np.testing.assert_array_equal(a, make_mask(pattern, 128, 12, 4, seed=11))
    np.testing.assert_array_equal(
        make_mask(pattern, 128, 12, 4, seed=(5, 99)), make_mask(pattern, 128, 12, 4, seed=(5, 99))
    )


@pytest.mark.parametrize("pattern", ("vista", "gaussian"))
def test_seed_changes_random_patterns(pattern):
    assert not np.array_equal(make_mask(pattern, 128, 12, 4, seed=0), make_mask(pattern, 128, 12, 4, seed=1))


def test_seed_changes_equispaced_offset():
    masks = {make_mask("equispaced", 128, 3, 8, seed=s).tobytes() for s in range(8)}
    assert len(masks) > 1  # the starting phase is drawn from the seed (8 phases here)


@pytest.mark.parametrize("pattern", GENERATED)
def test_frames_differ(pattern):
    mask = make_mask(pattern, 128, 10, 4, seed=4)
    assert (mask[1:] != mask[:-1]).any(axis=1).all()  # every frame differs from the previous one


# ------------------------------------------------------------------------------------------------------ vista
@pytest.mark.parametrize("r", ACCELS)
@pytest.mark.parametrize("n_pe,n_frames", [(128, 50), (96, 25), (160, 20), (64, 16), (32, 16)])
def test_vista_time_average_fully_sampled(r, n_pe, n_frames):
    n_lines = _expected_lines(n_pe, r)
    assert n_frames * n_lines >= n_pe  # enough samples to cover (R = 16 with 64/16 or 32/16: exactly enough)
    mask = make_mask("vista", n_pe, n_frames, r, seed=5)
    assert mask.any(axis=0).all()
    np.testing.assert_array_equal(mask.sum(axis=1), n_lines)


@pytest.mark.parametrize("r", ACCELS)
def test_vista_follows_target_density(r):
    n_pe, n_frames = 128, 50
    n_lines = _expected_lines(n_pe, r)
    p = vista_density(n_pe, n_frames, n_lines)
    freq = make_mask("vista", n_pe, n_frames, r, seed=6).mean(axis=0)
    bands = np.arange(n_pe) // 16  # 8 bands of 16 lines
    ratio = np.bincount(bands, freq) / np.bincount(bands, p)
    np.testing.assert_allclose(ratio, 1.0, atol=0.3)


@pytest.mark.parametrize("r", (4, 8, 16))
def test_vista_repulsion_reduces_adjacent_lines(r):
    """Coulomb repulsion spreads samples: fewer adjacent-line pairs than the random variable-density start."""

    def adjacent_fraction(mask):
        ky = np.nonzero(mask)[1].reshape(mask.shape[0], -1)
        return (np.diff(ky, axis=1) == 1).mean()

    start = make_mask("vista", 128, 50, r, seed=7, iterations=0)
    relaxed = make_mask("vista", 128, 50, r, seed=7)
    assert adjacent_fraction(relaxed) < adjacent_fraction(start)


def test_vista_density_profile():
    n_pe, n_frames, n_lines = 128, 50, 16
    p = vista_density(n_pe, n_frames, n_lines)
    assert math.isclose(p.sum(), n_lines, rel_tol=1e-9)
    assert p.max() <= 1 + 1e-9 and p.min() >= 1 / n_frames - 1e-9  # floor 1/T: every line expects a sample
    dist = np.abs(np.arange(n_pe) - n_pe // 2)
    order = np.argsort(dist, kind="stable")
    assert (np.diff(p[order]) <= 1e-12).all()  # non-increasing with |k - centre|
    # a steep envelope at R = 2 saturates the centre (at most one sample per frame): fully sampled there
    steep = vista_density(256, 50, 128, alpha=1.0, sigma=0.1)
    assert steep[128] == pytest.approx(1.0) and steep.max() <= 1 + 1e-9 and steep.sum() == pytest.approx(128)
    # alpha = 0 is uniform
    np.testing.assert_allclose(vista_density(100, 50, 20, alpha=0.0), 0.2)


def test_dedup_sorted_gives_distinct_sorted_lines():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-0.5, 39.5, size=(200, 12)) ** 1.0, axis=1)
    x[:, 3] = x[:, 2]  # force collisions
    y = _dedup_sorted(x, 40)
    assert (np.diff(y, axis=1) >= 1).all() and y.min() >= 0 and y.max() <= 39
    # rows without collisions after rounding are left exactly at the rounded positions
    clean = np.sort(rng.choice(40, size=12, replace=False)).astype(float)[None, :] + 0.2
    np.testing.assert_array_equal(_dedup_sorted(clean, 40), np.rint(clean).astype(int))


def test_fill_time_average_moves_only_surplus():
    mask = np.zeros((6, 24), dtype=bool)
    mask[:, 8:16] = True  # every frame samples the same 8 lines: 16 lines empty, 40 surplus samples
    filled = _fill_time_average(mask.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(filled.sum(axis=1), 8)
    assert filled.any(axis=0).all()
    assert filled.sum() == mask.sum()


# ------------------------------------------------------------------------------------- gaussian / equispaced
@pytest.mark.parametrize("n_center", (0, 6, 16))
def test_gaussian_centre_fully_sampled(n_center):
    mask = make_mask("gaussian", 128, 20, 8, seed=0, n_center=n_center)
    np.testing.assert_array_equal(mask.sum(axis=1), 16)
    assert mask[:, 64 - n_center // 2 : 64 - n_center // 2 + n_center].all()


def test_gaussian_default_centre_is_about_8_percent():
    mask = make_mask("gaussian", 200, 30, 4, seed=0)
    assert mask[:, 100 - 8 : 100 + 8].all()  # round(0.08 * 200) = 16 lines, all frames


def test_equispaced_lattice_covers_outer_lines():
    # no ACS, R = 4: the four phases tile the lines exactly once every 4 frames
    mask = make_mask("equispaced", 128, 8, 4, seed=0, n_acs=0)
    np.testing.assert_array_equal(mask[:4].sum(axis=0), 1)
    np.testing.assert_array_equal(mask[:4], mask[4:])
    gaps = np.diff(np.nonzero(mask[0])[0])
    np.testing.assert_array_equal(gaps, 4)


def test_equispaced_acs_block():
    mask = make_mask("equispaced", 128, 6, 4, seed=0, n_acs=12)
    assert mask[:, 58:70].all()
    np.testing.assert_array_equal(mask.sum(axis=1), 32)


# ------------------------------------------------------------------------------------------------------ file
def test_file_round_trip_npy_and_npz(tmp_path):
    ref = make_mask("vista", 96, 10, 4, seed=3)
    np.save(tmp_path / "m.npy", ref)
    np.testing.assert_array_equal(make_mask("file", 96, 10, 4, path=tmp_path / "m.npy"), ref)
    np.savez(tmp_path / "m.npz", mask=ref.astype(np.uint8))
    out = make_mask("file", 96, 10, 4, path=str(tmp_path / "m.npz"))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, ref)


def test_file_1d_broadcasts_over_frames(tmp_path):
    line = np.zeros(64, dtype=np.int64)
    line[::4] = 1
    np.save(tmp_path / "line.npy", line)
    out = make_mask("file", 64, 5, 4, path=tmp_path / "line.npy")
    assert out.shape == (5, 64) and out.flags.writeable
    np.testing.assert_array_equal(out, np.tile(line.astype(bool), (5, 1)))


def test_file_errors(tmp_path):
    ref = make_mask("gaussian", 64, 4, 4, seed=0)
    np.save(tmp_path / "ok.npy", ref)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_mask("file", 64, 4, 4, path=tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="needs the option path"):
        make_mask("file", 64, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        make_mask("file", 64, 5, 4, path=tmp_path / "ok.npy")
    with pytest.raises(ValueError, match="exactly 8 lines per frame"):
        make_mask("file", 64, 4, 8, path=tmp_path / "ok.npy")
    np.savez(tmp_path / "nokey.npz", other=ref)
    with pytest.raises(ValueError, match="no array 'mask'"):
        make_mask("file", 64, 4, 4, path=tmp_path / "nokey.npz")
    np.save(tmp_path / "float.npy", ref * 0.5)
    with pytest.raises(ValueError, match="0/1"):
        make_mask("file", 64, 4, 4, path=tmp_path / "float.npy")
    (tmp_path / "m.txt").write_text("1 0")
    with pytest.raises(ValueError, match=".npy or .npz"):
        make_mask("file", 64, 4, 4, path=tmp_path / "m.txt")


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("r", (0.5, 0, -4, float("nan"), float("inf")))
def test_bad_acceleration(r):
    with pytest.raises(ValueError, match="acceleration"):
        make_mask("vista", 64, 4, r)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_pe=1, n_frames=4), "n_pe: expected an integer >= 2"),
        (dict(n_pe=64, n_frames=0), "n_frames: expected an integer >= 1"),
    ],
)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_bad_sizes(pattern, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_mask(pattern, acceleration=4, **kwargs)


def test_bad_types():
    with pytest.raises(TypeError, match="n_pe"):
        make_mask("vista", 64.0, 4, 4)
    with pytest.raises(TypeError, match="acceleration"):
        make_mask("vista", 64, 4, "4")
    with pytest.raises(TypeError, match="unknown option.*n_acs"):
        make_mask("vista", 64, 4, 4, n_acs=4)


def test_unknown_pattern_lists_valid_ones():
    with pytest.raises(ValueError, match="'radial'.*vista.*gaussian.*equispaced.*file"):
        make_mask("radial", 64, 4, 4)


@pytest.mark.parametrize("pattern,option", [("gaussian", "n_center"), ("equispaced", "n_acs")])
def test_centre_larger_than_budget(pattern, option):
    with pytest.raises(ValueError, match=f"{option}: 17 centre lines exceed the per-frame budget of 16"):
        make_mask(pattern, 128, 4, 8, **{option: 17})
    assert make_mask(pattern, 128, 4, 8, **{option: 16}).sum() == 4 * 16  # the whole budget is allowed


def test_bad_vista_options():
    with pytest.raises(ValueError, match="alpha"):
        make_mask("vista", 64, 4, 4, alpha=1.5)
    with pytest.raises(ValueError, match="iterations"):
        make_mask("vista", 64, 4, 4, iterations=-1)
