"""ky–t Cartesian sampling masks (DESIGN §2–§3): ``make_mask(pattern, n_pe, n_frames, acceleration, seed)``.

Conventions
-----------
- A mask is a NumPy ``bool`` array of shape ``(n_frames, n_pe)``: ``mask[t, k]`` is True when phase-encoding line
  ``k`` (k-space axis H) is acquired in frame ``t``. It is broadcast along the readout (kx, axis W); a per-view
  stack ``(S, T, H)`` is one mask per view.
- ky indices follow the centred FFT convention ``K = fftshift(fft2(ifftshift(x)))``: the k-space centre (DC) is
  line ``n_pe // 2``; "density falls off" means with ``|k - n_pe // 2|``.
- Every pattern acquires EXACTLY ``lines_per_frame(n_pe, R) = max(1, round(n_pe / R))`` lines in every frame
  (Python ``round``, i.e. halves go to the even neighbour). ``R == 1`` gives all lines. Files are validated
  against the same count.
- Masks are deterministic for a given ``seed`` (a NumPy ``Generator`` is built from it; an int or a sequence of
  ints, e.g. ``(global_seed, hash(eid))``).

Patterns (options in brackets)
------------------------------
- ``"vista"`` [``alpha``, ``sigma``, ``time_scale``, ``iterations``]: a clean-room implementation of VISTA
  (Ahmad et al. 2015) from the description in DESIGN §3. Samples start at variable-density random ky in every
  frame and are pushed apart by a Coulomb-like repulsion in the (ky, t) plane with periodic boundaries. ky distances
  are measured in the metric of the Gaussian density envelope (the variable-density CDF), so the equilibrium
  spacing is inversely proportional to the target density. Positions are snapped to the grid at intervals, with
  collisions inside a frame resolved by order-preserving de-duplication. After the last snap, if
  ``n_frames * lines >= n_pe``, samples are moved from lines acquired in several frames to the nearest lines
  acquired in none, so the time average is fully sampled.
- ``"gaussian"`` [``n_center``, ``sigma``, ``floor``]: a fully sampled centre block plus random lines drawn
  independently per frame, without replacement, from a Gaussian pdf over ky (Schlemper et al. 2017 style).
- ``"equispaced"`` [``n_acs``]: an ACS centre block plus equispaced outer lines whose offset advances by one
  phase per frame (a sheared ky–t lattice), so consecutive frames differ and the outer lines are covered over time.
- ``"file"`` [``path``]: a ``.npy`` array, or a ``.npz`` array under key ``"mask"``, of shape
  ``(n_frames, n_pe)`` or ``(n_pe,)`` (the same lines in every frame). Its values must be 0/1 and its line count
  per frame must match.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["PATTERNS", "lines_per_frame", "make_mask", "vista_density"]

PATTERNS = ("vista", "gaussian", "equispaced", "file")
_OPTIONS = {
    "vista": ("alpha", "sigma", "time_scale", "iterations"),
    "gaussian": ("n_center", "sigma", "floor"),
    "equispaced": ("n_acs",),
    "file": ("path",),
}


def lines_per_frame(n_pe: int, acceleration: float) -> int:
    """Lines acquired per frame: ``max(1, round(n_pe / acceleration))`` (Python ``round``)."""
    return max(1, round(n_pe / acceleration))


def make_mask(
    pattern: str,
    n_pe: int,
    n_frames: int,
    acceleration: float,
    seed: int | Sequence[int] = 0,
    **options,
) -> np.ndarray:
    """Build a ky–t sampling mask, bool ``(n_frames, n_pe)``; True = ky line sampled in that frame.

    ``pattern`` is one of ``PATTERNS``; ``options`` are pattern specific (module docstring). Raises ``ValueError``
    for out-of-range arguments or an unknown pattern, ``TypeError`` for wrong types or an unknown option, and
    ``FileNotFoundError`` for a missing mask file.
    """
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise ValueError(f"pattern: unknown sampling pattern {pattern!r}; valid patterns are {PATTERNS}")
    n_pe = _check_int("n_pe", n_pe, 2)
    n_frames = _check_int("n_frames", n_frames, 1)
    if isinstance(acceleration, bool) or not isinstance(acceleration, numbers.Real):
        raise TypeError(f"acceleration: expected a real number >= 1, got {type(acceleration).__name__}")
    if not math.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration: expected a finite number >= 1, got {acceleration}")
    unknown = sorted(set(options) - set(_OPTIONS[pattern]))
    if unknown:
        raise TypeError(f"pattern {pattern!r}: unknown option(s) {unknown}; valid options are {_OPTIONS[pattern]}")
    n_lines = lines_per_frame(n_pe, acceleration)
    if pattern == "file":
        return _file_mask(n_pe, n_frames, n_lines, **options)
    rng = _make_rng(seed)
    builder = {"vista": _vista_mask, "gaussian": _gaussian_mask, "equispaced": _equispaced_mask}[pattern]
    return builder(n_pe, n_frames, n_lines, rng, **options)


# ----------------------------------------------------------------------------------------------------- checks
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _make_rng(seed) -> np.random.Generator:
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"seed: expected a non-negative int or a sequence of them, got {seed!r}") from err


def _default_centre(n_pe: int, n_lines: int) -> int:
    """Default fully sampled centre: ~8% of the lines, at most half the per-frame budget (so frames still differ)."""
    return min(round(0.08 * n_pe), n_lines // 2)


def _check_centre(name: str, value, n_lines: int, n_pe: int) -> int:
    value = _check_int(name, value, 0)
    if value > n_lines:
        raise ValueError(
            f"{name}: {value} centre lines exceed the per-frame budget of {n_lines} lines "
            f"(n_pe={n_pe}); expected 0 <= {name} <= {n_lines}"
        )
    return value


def _check_fraction(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (low <= value <= high):
        raise ValueError(f"{name}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def _centre_block(n_pe: int, n_center: int) -> np.ndarray:
    """Indices of ``n_center`` consecutive lines around the k-space centre ``n_pe // 2``."""
    start = n_pe // 2 - n_center // 2
    return np.arange(start, start + n_center)


def _gaussian_envelope(n_pe: int, sigma: float) -> np.ndarray:
    """``exp(-(k - n_pe//2)^2 / (2 (sigma n_pe)^2))`` over ky, shape ``(n_pe,)``; ``sigma`` is a fraction of n_pe."""
    k = np.arange(n_pe) - n_pe // 2
    return np.exp(-0.5 * (k / (sigma * n_pe)) ** 2)


# -------------------------------------------------------------------------------------------------- gaussian
def _weighted_choice_rows(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` distinct columns per row with probability ∝ ``weights`` (rows, cols), without replacement.

    Efraimidis–Spirakis keys ``log(u) / w`` with top-k per row: every row at once (``Generator.choice`` draws one
    row per call). Returns indices ``(rows, k)``.
    """
    with np.errstate(divide="ignore"):
        keys = np.log(rng.random(weights.shape)) / weights
    return np.argpartition(-keys, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((weights.shape[0], 0), int)


def _gaussian_mask(n_pe, n_frames, n_lines, rng, n_center=None, sigma=0.15, floor=0.02):
    """Centre block + per-frame random lines from ``exp(-k^2 / 2 (sigma n_pe)^2) + floor`` (k from centre)."""
    n_center = _default_centre(n_pe, n_lines) if n_center is None else _check_centre("n_center", n_center, n_lines, n_pe)
    sigma = _check_fraction("sigma", sigma, 1e-3, 10.0)
    floor = _check_fraction("floor", floor, 0.0, 1.0)
    centre = _centre_block(n_pe, n_center)
    outer = np.setdiff1d(np.arange(n_pe), centre)
    pdf = _gaussian_envelope(n_pe, sigma)[outer] + floor
    mask = np.zeros((n_frames, n_pe), dtype=bool)
    mask[:, centre] = True
    chosen = _weighted_choice_rows(np.broadcast_to(pdf, (n_frames, outer.size)), n_lines - n_center, rng)
    np.put_along_axis(mask, outer[chosen], True, axis=1)
    return mask


# ------------------------------------------------------------------------------------------------ equispaced
def _equispaced_mask(n_pe, n_frames, n_lines, rng, n_acs=None):
    """ACS block + ``n_lines - n_acs`` equispaced outer lines; the offset advances by one phase per frame."""
    n_acs = _default_centre(n_pe, n_lines) if n_acs is None else _check_centre("n_acs", n_acs, n_lines, n_pe)
    acs = _centre_block(n_pe, n_acs)
    outer = np.setdiff1d(np.arange(n_pe), acs)
    mask = np.zeros((n_frames, n_pe), dtype=bool)
    mask[:, acs] = True
    m = n_lines - n_acs
    if m > 0:
        step = outer.size / m  # >= 1, so floor((j + phase) * step) are distinct and < outer.size
        n_phase = max(1, round(step))
        phase = ((np.arange(n_frames) + rng.integers(n_phase)) % n_phase) / n_phase  # (T,)
        idx = np.floor((np.arange(m)[None, :] + phase[:, None]) * step).astype(np.int64)  # (T, m)
        np.put_along_axis(mask, outer[idx], True, axis=1)
    return mask


# ------------------------------------------------------------------------------------------------------ file
def _file_mask(n_pe, n_frames, n_lines, path=None):
    """Load and validate a mask file; returns bool ``(n_frames, n_pe)``."""
    if path is None:
        raise ValueError("path: pattern 'file' needs the option path=<.npy or .npz file>")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: mask file {str(p)!r} does not exist")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            if "mask" not in data:
                raise ValueError(f"path: {str(p)!r} has no array 'mask' (found {sorted(data.files)})")
            arr = data["mask"]
    else:
        raise ValueError(f"path: expected a .npy or .npz mask file, got {str(p)!r}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
            raise ValueError(f"path: mask in {str(p)!r} must be bool or 0/1 valued, got dtype {arr.dtype}")
        arr = arr != 0
    if arr.shape == (n_pe,):
        arr = np.broadcast_to(arr, (n_frames, n_pe))
    elif arr.shape != (n_frames, n_pe):
        raise ValueError(
            f"path: mask in {str(p)!r} has shape {arr.shape}; expected (n_frames, n_pe)=({n_frames}, {n_pe}) "
            f"or (n_pe,)=({n_pe},)"
        )
    counts = arr.sum(axis=1)
    bad = np.flatnonzero(counts != n_lines)
    if bad.size:
        raise ValueError(
            f"path: mask in {str(p)!r} must sample exactly {n_lines} lines per frame (round(n_pe / R)); "
            f"frame {bad[0]} has {counts[bad[0]]} ({bad.size} frame(s) wrong)"
        )
    return np.array(arr, dtype=bool)


# ----------------------------------------------------------------------------------------------------- vista
def vista_density(n_pe: int, n_frames: int, n_lines: int, alpha: float = 0.6, sigma: float = 0.15) -> np.ndarray:
    """VISTA target density ``p`` (n_pe,): expected fraction of frames sampling each ky line.

    ``p = clip(a * ((1 - alpha) + alpha * gauss(sigma)), floor, 1)`` with ``a`` found by bisection so that
    ``sum(p) == n_lines``; ``floor = 1 / n_frames`` when ``n_frames * n_lines >= n_pe`` (every line expects at
    least one sample over time), else 0. ``alpha`` in [0, 1]: 0 = uniform, 1 = pure Gaussian fall-off.
    """
    alpha = _check_fraction("alpha", alpha, 0.0, 1.0)
    sigma = _check_fraction("sigma", sigma, 1e-3, 10.0)
    shape = np.maximum((1.0 - alpha) + alpha * _gaussian_envelope(n_pe, sigma), 1e-6)  # bounded bisection range
    floor = 1.0 / n_frames if n_frames * n_lines >= n_pe else 0.0
    low, high = 0.0, n_lines / shape.min()  # sum(p(high)) >= n_lines
    for _ in range(60):  # bisection on a scalar; each step is one vector op over ky
        mid = 0.5 * (low + high)
        if np.clip(mid * shape, floor, 1.0).sum() < n_lines:
            low = mid
        else:
            high = mid
    p = np.clip(high * shape, floor, 1.0)
    return np.maximum(p * (n_lines / p.sum()), 1e-9)  # exact budget, strictly positive (invertible CDF)


def _vista_forces(s: np.ndarray, dt: np.ndarray, half: int, w2: float, eps2: float) -> np.ndarray:
    """Coulomb-like force along ky on every sample, ``(T, L)``.

    ``s`` (T, L): sorted positions per frame in the warped coordinate (period L, unit = mean spacing in a frame).
    Each sample interacts with the ``2*half+1`` samples nearest to it in every frame at a time offset in ``dt``
    (nD,), periodic in ky and t; the pairwise terms are one (T, L, nD, 2*half+1) array. Pair force along ky is
    ``d / (d^2 + (w dt)^2 + eps^2)^(3/2)`` (2-D Coulomb, softened by ``eps``). Written here because neither NumPy
    nor MONAI has a truncated periodic N-body kernel.
    """
    T, L = s.shape
    pad = half + 1
    rows = np.arange(T)
    g = (rows[:, None] + dt[None, :]) % T  # (T, nD) partner frames
    flat = (s + (2 * L) * rows[:, None]).ravel()  # rows are disjoint and sorted -> one searchsorted
    q = s[:, :, None] + (2 * L) * g[:, None, :]  # (T, L, nD)
    pos = np.searchsorted(flat, q).astype(np.int32) - (g * L)[:, None, :]  # insertion index in partner, [0, L]
    # periodic images: frames padded by `pad` samples each side, unwrapped by +-L, so no modulo below
    idx = np.arange(-pad, L + pad)
    padded = (s[:, idx % L] + L * (idx // L)).astype(s.dtype).ravel()  # (T * (L + 2 pad),)
    at = ((g * (L + 2 * pad))[:, None, :] + pad + pos).astype(np.int32)  # flat index of pos in partner frame
    si = s[:, :, None]
    left, right = padded.take(at - 1), padded.take(at)
    at -= (right - si >= si - left)  # nearest partner sample (left on ties)
    d = padded.take(at[..., None] + np.arange(-half, half + 1, dtype=np.int32)) - si[..., None]  # (T, L, nD, W)
    r2 = d * d + (w2 * dt.astype(s.dtype) ** 2)[None, None, :, None] + s.dtype.type(eps2)
    return -(d / (r2 * np.sqrt(r2))).sum(axis=(2, 3))  # pushed away from neighbours


def _dedup_sorted(x: np.ndarray, n_pe: int) -> np.ndarray:
    """Distinct integer lines per row close to sorted reals ``x`` (T, L), order kept; returns int (T, L).

    ``round(x) - rank`` is made non-decreasing inside ``[0, n_pe - L]`` from the left (pushing right) and from the
    right (pushing left); the floor-mean of the two strictly increasing integer rows is strictly increasing too.
    """
    T, L = x.shape
    rank = np.arange(L)
    z = np.clip(np.rint(x).astype(np.int64) - rank, 0, n_pe - L)
    fwd = np.maximum.accumulate(z, axis=1) + rank
    bwd = np.minimum.accumulate(z[:, ::-1], axis=1)[:, ::-1] + rank
    return (fwd + bwd) // 2


def _fill_time_average(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move samples from lines acquired in >= 2 frames to the nearest lines acquired in none (in place).

    Per round every empty line picks its nearest donor line; a donor gives at most ``count - 1`` samples (taken
    from frames in a seeded random order), so no line is emptied and per-frame counts are unchanged. Needs
    ``mask.sum() >= n_pe``; a few rounds suffice (each fills every empty line whose nearest donor has spare).
    """
    T, n = mask.shape
    priority = rng.random((T, n))
    counts = mask.sum(axis=0)
    while True:
        empty = np.flatnonzero(counts == 0)
        if empty.size == 0:
            return mask
        donors = np.flatnonzero(counts >= 2)
        i = np.clip(np.searchsorted(donors, empty), 1, donors.size - 1) if donors.size > 1 else np.zeros_like(empty)
        cand_l, cand_r = donors[np.maximum(i - 1, 0)], donors[i]
        pick = np.where(np.abs(cand_r - empty) < np.abs(empty - cand_l), cand_r, cand_l)  # (E,)
        dist = np.abs(pick - empty)
        order = np.lexsort((dist, pick))  # group by donor, nearest first
        pick, empty = pick[order], empty[order]
        first = np.r_[True, pick[1:] != pick[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(pick.size), 0))
        rank = np.arange(pick.size) - start  # rank inside each donor group
        ok = rank < counts[pick] - 1
        pick, empty, rank = pick[ok], empty[ok], rank[ok]
        frame_order = np.argsort(np.where(mask[:, pick], priority[:, pick], np.inf), axis=0)  # (T, E)
        frames = frame_order[rank, np.arange(pick.size)]
        mask[frames, pick] = False
        mask[frames, empty] = True
        np.add.at(counts, pick, -1)
        counts[empty] += 1


_REACH, _HALF = 2.0, 3  # interaction cut-off: time reach (mean spacings), neighbours per side


def _vista_mask(n_pe, n_frames, n_lines, rng, alpha=0.6, sigma=0.15, time_scale=None, iterations=60):
    """Clean-room VISTA (module docstring); returns bool ``(T, n_pe)``.

    ``alpha``/``sigma``: density envelope (``vista_density``). ``time_scale``: length of one frame in units of the
    mean in-frame spacing (default ``0.5 / sqrt(R)``; smaller couples more frames, spreading the ky offsets over
    time). ``iterations``: repulsion steps (annealed step size, grid snaps every ``iterations // 6``). One step
    costs O(T * L * nD * 7) with ``nD = 2 * ceil(2 / time_scale) + 1`` partner frames (at most T).
    """
    iterations = _check_int("iterations", iterations, 0)
    T, L = n_frames, n_lines
    w = 0.5 / math.sqrt(n_pe / L) if time_scale is None else _check_fraction("time_scale", time_scale, 1e-3, 100.0)
    p = vista_density(n_pe, T, L, alpha, sigma)
    if L == n_pe:
        return np.ones((T, n_pe), dtype=bool)
    edges_x = np.arange(n_pe + 1) - 0.5  # ky cell edges
    edges_s = np.r_[0.0, np.cumsum(p)] * (L / p.sum())  # warped coordinate at the cell edges, [0, L]
    centres_s = 0.5 * (edges_s[:-1] + edges_s[1:])
    reach = min(T // 2, math.ceil(_REACH / w))
    dt = np.arange(-reach, reach + 1) if 2 * reach + 1 <= T else np.arange(-reach + 1, reach + 1)  # distinct mod T
    half = max(1, min(_HALF, (L - 1) // 2))

    def snap(s):  # warped positions (T, L) -> distinct ky lines per frame (T, L)
        x = np.interp(s % L, edges_s, edges_x)
        return _dedup_sorted(np.sort(np.rint(x) % n_pe, axis=1), n_pe)

    # variable-density random start: stratified-jittered in the warped coordinate, random offset per frame
    s = ((np.arange(L)[None, :] + rng.random((T, L)) + L * rng.random((T, 1))) % L).astype(np.float32)
    snap_every = max(1, iterations // 6)
    for it in range(iterations):  # loop over relaxation steps; every step is vectorised over all samples
        s = np.sort(s % L, axis=1)
        f = _vista_forces(s, dt, half, w * w, 0.05)
        step = 0.4 * (1.0 - it / iterations) + 0.02  # annealed largest move, in mean spacings
        s = s + step * np.clip(f / (2.0 * np.abs(f).mean() + 1e-12), -1.0, 1.0)
        if (it + 1) % snap_every == 0 and it + 1 < iterations:
            s = centres_s[snap(s)].astype(np.float32)
    mask = np.zeros((T, n_pe), dtype=bool)
    np.put_along_axis(mask, snap(s), True, axis=1)
    if T * L >= n_pe:
        _fill_time_average(mask, rng)
    return mask
