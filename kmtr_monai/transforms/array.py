"""Array k-space transforms (DESIGN §2, §3, §12.4), batched over all views and frames at once.

Layouts: image ``(S, T, H, W)`` float32; complex image / k-space ``(S, T, H, W)`` complex64 (k-space may carry
leading dims, e.g. coils ``(C, S, T, H, W)``); ky is axis H, kx axis W; mask ``(S, T, H)`` float32 in {0, 1},
broadcast along W. Inputs may be torch tensors (any device, MetaTensor included) or numpy arrays; outputs are the
same kind (``convert_to_dst_type``), as MONAI transforms do.

Why our own transforms: MONAI's ``monai.apps.reconstruction`` masks are static 1-D column masks on a ``(..., 2)``
real layout; the paper needs ky-t masks that change per frame (VISTA), a synthetic smooth phase, exact k-space
augmentations and synthetic coils, none of which MONAI provides. The base classes are MONAI's.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms import Randomizable, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type

from kmtr_monai.transforms.fft import _checkerboards, fft2c, ifft2c

__all__ = [
    "ComplexToChannel", "ChannelToComplex", "FFT2c", "IFFT2c", "RandSmoothPhase", "RandKspaceMask",
    "ApplyKspaceMask", "ZeroFilled", "RandKspaceShift", "RandGlobalPhase", "RandViewRotate", "SimulateCoils",
    "CoilCombine", "cached_make_mask", "subject_random_state", "validate",
]  # fmt: skip

MAX_SEED = 2**31 - 1


# ----------------------------------------------------------------------------------------------------- helpers
def validate(x, name: str, *, kind: str = "any", ndim: int | None = None, min_ndim: int | None = None,
             layout: str = "", check_finite: bool = True) -> torch.Tensor:  # fmt: skip
    """Check ``x`` and return it as a torch tensor; errors name ``name`` (the dict key) and what was expected.

    kind: "complex" (complex dtype required), "real" (real dtype required), "any". TypeError for a wrong type or
    dtype, ValueError for a wrong ndim or NaN/Inf values.
    """
    if isinstance(x, np.ndarray):
        t = torch.as_tensor(x)
    elif isinstance(x, torch.Tensor):
        t = x
    else:
        raise TypeError(f"{name!r}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")
    if kind == "complex" and not t.is_complex():
        raise TypeError(f"{name!r}: expected a complex tensor (complex64 k-space or image), got dtype {t.dtype}.")
    if kind == "real" and t.is_complex():
        raise TypeError(f"{name!r}: expected a real tensor (e.g. float32 image), got complex dtype {t.dtype}.")
    lay = f" {layout}" if layout else ""
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name!r}: expected {ndim} dims{lay}, got shape {tuple(t.shape)}.")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{name!r}: expected at least {min_ndim} dims{lay}, got shape {tuple(t.shape)}.")
    if check_finite and (t.is_floating_point() or t.is_complex()) and t.numel():
        # one cheap reduction; the exact per-element test only runs when the sum is not finite (NaN/Inf or overflow)
        s = t.sum()
        if not bool(torch.isfinite(s)) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name!r}: contains NaN or Inf values.")
    return t


def _check_fft_output(out: torch.Tensor, name: str) -> None:
    """NaN/Inf check of an FFT's *input* for free: every 2-D FFT output is a sum over all inputs of its slice with
    unit-modulus weights, so one non-finite input makes every output of that slice non-finite; one sample per slice
    ((..., 0, 0)) is therefore enough, instead of a full pass over the data."""
    if out.numel() and not bool(torch.isfinite(out[..., 0, 0]).all()):
        raise ValueError(f"{name!r}: contains NaN or Inf values.")


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Drop MetaTensor metadata for the arithmetic (it is restored on output by ``_like``)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _like(out: torch.Tensor, src):
    """Return ``out`` as the same kind as ``src`` (numpy / torch / MetaTensor), keeping ``out``'s dtype."""
    return convert_to_dst_type(out, dst=src, dtype=out.dtype)[0]


def subject_random_state(subject_id, global_seed: int = 0, salt: str = "") -> np.random.RandomState:
    """A RandomState derived from a stable hash (zlib.crc32) of ``subject_id`` plus ``global_seed`` and a salt.

    The same (subject, seed, salt) gives the same stream in every run and process (Python's ``hash`` would not).
    """
    ss = np.random.SeedSequence([zlib.crc32(str(subject_id).encode()), int(global_seed), zlib.crc32(salt.encode())])
    return np.random.RandomState(int(ss.generate_state(1)[0]))


def _rng(transform: Randomizable, subject_id, global_seed: int, salt: str) -> np.random.RandomState:
    return transform.R if subject_id is None else subject_random_state(subject_id, global_seed, salt)


def _freeze(v):
    """Make option values hashable for the mask cache (lists -> tuples, dicts -> sorted tuples)."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


_DISK_CACHED_PATTERNS = ("vista",)  # the others compute faster than a file is read


@functools.lru_cache(maxsize=1)
def _mask_disk_cache():
    """``make_mask`` memoised on disk with ``joblib.Memory`` (atomic writes, safe for concurrent workers) under
    ``$KMTR_CACHE_DIR/masks`` (default ``~/.cache/kmtr_monai/masks``; ``KMTR_CACHE_DIR=off`` disables it). The key
    includes a digest of ``kmtr_monai/sampling.py``, so a changed mask generator never reads old masks. ``None``
    when disabled or not writable (then masks are computed, as before).

    Why on disk: DataLoader workers start with an empty in-process cache, so without it every worker recomputed
    up to ``mask_pool`` VISTA masks per R in every epoch (about 25 ms each at 48 lines; BENCHMARKS)."""
    root = os.environ.get("KMTR_CACHE_DIR", str(Path.home() / ".cache" / "kmtr_monai"))
    if root.strip().lower() in ("", "off", "none", "0"):
        return None
    try:
        (Path(root) / "masks").mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import joblib

    from kmtr_monai import sampling

    digest = hashlib.sha256(Path(sampling.__file__).read_bytes()).hexdigest()[:16]
    cached = joblib.Memory(Path(root) / "masks", verbose=0).cache(_make_mask_of_version)
    return functools.partial(cached, sampling_digest=digest)


def _make_mask_of_version(pattern, n_pe, n_frames, acceleration, seed, options, sampling_digest):
    return _make_mask(pattern, n_pe, n_frames, acceleration, seed, dict(options))


@functools.lru_cache(maxsize=4096)
def _make_mask_cached(pattern: str, n_pe: int, n_frames: int, acceleration: int, seed: int, options: tuple):
    disk = _mask_disk_cache() if pattern in _DISK_CACHED_PATTERNS else None
    if disk is None:
        return _make_mask(pattern, n_pe, n_frames, acceleration, seed, dict(options))
    m = np.array(disk(pattern, n_pe, n_frames, acceleration, seed, options), dtype=bool)
    if m.shape != (n_frames, n_pe):  # a damaged cache entry: compute it again
        m = _make_mask(pattern, n_pe, n_frames, acceleration, seed, dict(options))
    m.setflags(write=False)
    return m


def _make_mask(pattern, n_pe, n_frames, acceleration, seed, options) -> np.ndarray:
    from kmtr_monai.sampling import make_mask  # imported lazily: the sampling module is optional at import time

    m = np.asarray(make_mask(pattern, n_pe, n_frames, acceleration, seed=seed, **options), dtype=bool)
    if m.shape != (n_frames, n_pe):
        raise ValueError(f"make_mask({pattern!r}) returned shape {m.shape}, "
                         f"expected (n_frames, n_pe)={(n_frames, n_pe)}.")
    m.setflags(write=False)  # shared by the cache: never mutate
    return m


def cached_make_mask(pattern: str, n_pe: int, n_frames: int, acceleration: int, seed: int = 0, **options) -> np.ndarray:
    """``kmtr_monai.sampling.make_mask`` memoised on the full argument tuple: read-only bool ``(n_frames, n_pe)``.

    VISTA masks take long to compute, so every (pattern, size, R, seed, options) is computed once per process, and
    VISTA masks once per machine (:func:`_mask_disk_cache`). Options that cannot be hashed (e.g. an array) bypass
    both caches.
    """
    key = (str(pattern), int(n_pe), int(n_frames), int(acceleration), int(seed))
    frozen = _freeze(options)
    try:
        hash(frozen)
    except TypeError:
        return _make_mask(*key, options)
    return _make_mask_cached(*key, tuple(sorted(frozen)) if options else ())


cached_make_mask.cache_info = _make_mask_cached.cache_info  # type: ignore[attr-defined]
cached_make_mask.cache_clear = _make_mask_cached.cache_clear  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------- layout conversions
class ComplexToChannel(Transform):
    """complex (...) -> float32 (2, ...) with channels [real, imag] first (or at ``dim``)."""

    def __init__(self, dim: int = 0, name: str = "input") -> None:
        self.dim, self.name = dim, name

    def __call__(self, x):
        t = _plain(validate(x, self.name, kind="complex", min_ndim=1))
        out = torch.stack((t.real, t.imag), dim=self.dim).to(torch.float32)
        return _like(out, x)


class ChannelToComplex(Transform):
    """float (2, ...) [real, imag] channels at ``dim`` -> complex64 (...); inverse of :class:`ComplexToChannel`."""

    def __init__(self, dim: int = 0, name: str = "input") -> None:
        self.dim, self.name = dim, name

    def __call__(self, x):
        t = _plain(validate(x, self.name, kind="real", min_ndim=1))
        if t.shape[self.dim] != 2:
            raise ValueError(f"{self.name!r}: expected size 2 (real, imag) on dim {self.dim}, "
                             f"got shape {tuple(t.shape)}.")
        t = t.to(torch.float32)
        out = torch.complex(t.select(self.dim, 0), t.select(self.dim, 1))
        return _like(out, x)


class FFT2c(Transform):
    """Centred orthonormal FFT over (H, W): (..., H, W) -> complex64 k-space (..., H, W). Real input is allowed."""

    def __init__(self, name: str = "input") -> None:
        self.name = name

    def __call__(self, x):
        t = _plain(validate(x, self.name, min_ndim=2, layout="(..., H, W)", check_finite=False))
        if not t.is_complex():
            t = t.to(torch.float32)
        out = fft2c(t)
        _check_fft_output(out, self.name)
        return _like(out, x)


class IFFT2c(Transform):
    """Inverse centred orthonormal FFT: complex k-space (..., H, W) -> complex image (..., H, W)."""

    def __init__(self, name: str = "input") -> None:
        self.name = name

    def __call__(self, x):
        t = _plain(validate(x, self.name, kind="complex", min_ndim=2, layout="(..., H, W)", check_finite=False))
        out = ifft2c(t)
        _check_fft_output(out, self.name)
        return _like(out, x)


# ----------------------------------------------------------------------------------------------- synthetic phase
class RandSmoothPhase(Randomizable, Transform):
    """DiSK/KMAE synthetic phase: magnitude image (S, T, H, W) real -> complex image (S, T, H, W) complex64.

    Per view a smooth complex random field is drawn (complex Gaussian white noise, low-pass filtered by a Gaussian of
    std ``sigma`` cycles per field of view, applied in the Fourier domain); its angle φ is the phase map, shared by
    all frames: ``x = magnitude * exp(iφ)``. The FFT of white noise is white noise, so the noise is drawn directly in
    k-space and only inside ±4σ, where the filter is non-negligible; one small inverse FFT gives the field.
    ``magnitude_range=(lo, hi)`` first min-max rescales the whole stack to [lo, hi] (DiSK: [0, √2]); None keeps it.
    ``subject_id`` (with ``global_seed``) makes the map deterministic per subject.
    """

    def __init__(self, sigma: float = 2.0, magnitude_range: tuple[float, float] | None = (0.0, math.sqrt(2.0)),
                 global_seed: int = 0, name: str = "image") -> None:  # fmt: skip
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0 (cycles per FOV), got {sigma}.")
        if magnitude_range is not None and not magnitude_range[1] > magnitude_range[0]:
            raise ValueError(f"magnitude_range must be (lo, hi) with hi > lo, got {magnitude_range}.")
        self.sigma, self.magnitude_range, self.global_seed, self.name = float(sigma), magnitude_range, global_seed, name
        self._noise: np.ndarray | None = None

    def _half_width(self, h: int, w: int) -> int:
        return int(min(math.ceil(4 * self.sigma), (h - 1) // 2, (w - 1) // 2))

    def randomize(self, shape: Sequence[int], subject_id=None) -> None:
        """Draw the k-space noise (S, 2m+1, 2m+1) for a (S, T, H, W) input."""
        s, _, h, w = shape
        m = self._half_width(h, w)
        rng = _rng(self, subject_id, self.global_seed, "phase")
        self._noise = rng.standard_normal((s, 2 * m + 1, 2 * m + 1, 2)).astype(np.float32)

    def phase_map(self, n_views: int, h: int, w: int, device=None) -> torch.Tensor:
        """Unit phasors exp(iφ) (S, H, W) complex64 from the last randomize()."""
        m = self._half_width(h, w)
        if self._noise is None or self._noise.shape[:3] != (n_views, 2 * m + 1, 2 * m + 1):
            raise RuntimeError("RandSmoothPhase.randomize() was not called for this shape.")
        k = torch.arange(-m, m + 1, dtype=torch.float32)
        gauss = torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * self.sigma**2))
        box = torch.view_as_complex(torch.from_numpy(self._noise)) * gauss
        spec = torch.zeros(n_views, h, w, dtype=torch.complex64)
        spec[:, h // 2 - m : h // 2 + m + 1, w // 2 - m : w // 2 + m + 1] = box
        return torch.polar(torch.ones(n_views, h, w), torch.angle(ifft2c(spec))).to(device)

    def __call__(self, img, subject_id=None, randomize: bool = True):
        rescale = self.magnitude_range is not None  # then the min/max below double as the NaN/Inf check
        t = _plain(validate(img, self.name, kind="real", ndim=4, layout="(S, T, H, W)", check_finite=not rescale))
        t = t.to(torch.float32)
        if randomize:
            self.randomize(t.shape, subject_id)
        pr = torch.view_as_real(self.phase_map(t.shape[0], t.shape[2], t.shape[3], t.device))[:, None]  # (S,1,H,W,2)
        if self.magnitude_range is None:
            out = t[..., None] * pr
        else:  # (lo + (t - min) * a) * phasor as one fused t * (a phasor) + (b phasor), b = lo - min * a
            lo, hi = self.magnitude_range
            tmin, tmax = torch.aminmax(t)  # NaN-propagating
            if not bool(torch.isfinite(tmin) & torch.isfinite(tmax)):
                raise ValueError(f"{self.name!r}: contains NaN or Inf values.")
            a = torch.where(tmax > tmin, (hi - lo) / (tmax - tmin), torch.zeros_like(tmax))
            out = torch.addcmul((lo - tmin * a) * pr, t[..., None], a * pr)
        return _like(torch.view_as_complex(out), img)


# ------------------------------------------------------------------------------------------------------ masks
def _mask_tensor(mask, name: str, kshape: torch.Size) -> torch.Tensor:
    """Validate a (S, T, H) mask against k-space (..., S, T, H, W); return it float32 with a trailing W axis."""
    m = _plain(validate(mask, name, kind="real", ndim=3, layout="(S, T, H)"))
    if tuple(m.shape) != tuple(kshape[-4:-1]):
        raise ValueError(f"{name!r}: mask shape {tuple(m.shape)} does not match k-space "
                         f"(S, T, H)={tuple(kshape[-4:-1])}.")
    return m.to(torch.float32)[..., None]


class ApplyKspaceMask(Transform):
    """k-space (..., S, T, H, W) complex, mask (S, T, H) -> ``mask * k`` (mask broadcast along kx = W)."""

    def __init__(self, name: str = "kspace") -> None:
        self.name = name

    def __call__(self, kspace, mask):
        k = _plain(validate(kspace, self.name, kind="complex", min_ndim=4, layout="(..., S, T, H, W)"))
        m = _mask_tensor(mask, "mask", k.shape).to(k.device)
        return _like(k * m, kspace)


class RandKspaceMask(Randomizable, Transform):
    """Undersample k-space (..., S, T, H, W) with ky-t masks from ``kmtr_monai.sampling.make_mask``.

    Per call an acceleration R is chosen from ``accelerations`` and each view gets its own (T, H) mask (a different
    seed per view). Returns ``(masked k-space, mask (S, T, H) float32)``; ``self.acceleration`` holds R.
    Seeds come from a finite pool of ``mask_pool`` per R (None: unbounded), so the memoised masks are reused across
    epochs; with ``subject_id`` the choice is derived from crc32(subject_id) and ``global_seed`` (same mask every run).
    """

    def __init__(self, pattern: str = "vista", accelerations: Sequence[int] = (4,), mask_options: dict | None = None,
                 mask_pool: int | None = 256, global_seed: int = 0, name: str = "kspace") -> None:  # fmt: skip
        accelerations = tuple(int(r) for r in np.atleast_1d(accelerations))
        if not accelerations or min(accelerations) < 1:
            raise ValueError(f"accelerations must be a non-empty sequence of ints >= 1, got {accelerations}.")
        if mask_pool is not None and mask_pool < 1:
            raise ValueError(f"mask_pool must be >= 1 or None, got {mask_pool}.")
        self.pattern, self.accelerations, self.mask_options = pattern, accelerations, dict(mask_options or {})
        self.mask_pool, self.global_seed, self.name = mask_pool, global_seed, name
        self.acceleration: int | None = None
        self.seeds: np.ndarray | None = None

    def randomize(self, n_views: int, subject_id=None) -> None:
        rng = _rng(self, subject_id, self.global_seed, "mask")
        self.acceleration = int(self.accelerations[rng.randint(len(self.accelerations))])
        if self.mask_pool is None:
            self.seeds = rng.randint(0, MAX_SEED, size=n_views)
        else:
            self.seeds = rng.choice(self.mask_pool, size=n_views, replace=n_views > self.mask_pool)

    def make_masks(self, n_frames: int, n_pe: int, device=None) -> torch.Tensor:
        """The (S, T, H) float32 masks for the last randomize() (one cached make_mask call per view)."""
        if self.seeds is None or self.acceleration is None:
            raise RuntimeError("RandKspaceMask.randomize() was not called.")
        masks = [cached_make_mask(self.pattern, n_pe, n_frames, self.acceleration, int(s), **self.mask_options)
                 for s in self.seeds]  # fmt: skip
        return torch.from_numpy(np.stack(masks)).to(device=device, dtype=torch.float32)

    def __call__(self, kspace, subject_id=None, randomize: bool = True):
        k = _plain(validate(kspace, self.name, kind="complex", min_ndim=4, layout="(..., S, T, H, W)"))
        s, t, h, _ = k.shape[-4:]
        if randomize:
            self.randomize(s, subject_id)
        elif self.seeds is None or len(self.seeds) != s:
            raise RuntimeError(f"RandKspaceMask: randomize=False but no masks drawn for {s} views.")
        mask = self.make_masks(t, h, k.device)
        return _like(k * mask[..., None], kspace), _like(mask, kspace)


class ZeroFilled(Transform):
    """Zero-filled magnitude: (masked) k-space (..., H, W) complex -> ``|ifft2c(k)|`` float32 (..., H, W).

    With ``mask`` (S, T, H) the mask is applied first. For even H, W the post-multiplying checkerboard of
    :func:`ifft2c` has modulus 1 and is skipped: ``|s c F⁻¹(c k)| = |F⁻¹(c k)|``.
    """

    def __init__(self, name: str = "kspace") -> None:
        self.name = name

    def __call__(self, kspace, mask=None):
        k = _plain(validate(kspace, self.name, kind="complex", min_ndim=2, layout="(..., H, W)", check_finite=False))
        if mask is not None:
            k = k * _mask_tensor(mask, "mask", k.shape).to(k.device)
        h, w = k.shape[-2:]
        if h % 2 == 0 and w % 2 == 0:
            pre, _ = _checkerboards(h, w, k.device, k.real.dtype)
            img = torch.fft.ifft2(k.mul_(pre) if mask is not None else k * pre, norm="ortho")
        else:
            img = ifft2c(k)
        _check_fft_output(img, self.name)
        ri = torch.view_as_real(img)  # |z| = sqrt(re^2 + im^2): much faster than torch.abs (hypot) on CPU
        out = ri[..., 0].square().addcmul_(ri[..., 1], ri[..., 1]).sqrt_()
        return _like(out.to(torch.float32), kspace)


# ------------------------------------------------------------------------------------ exact k-space augmentations
def _roll_views(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Per-view circular roll of (..., S, T, H, W) by (dy[s], dx[s]) via two gathers (torch.roll has one shift)."""
    h, w = x.shape[-2:]
    lead = (1,) * (x.ndim - 4)
    ih = (torch.arange(h, device=x.device)[None] - dy[:, None]) % h  # (S, H)
    iw = (torch.arange(w, device=x.device)[None] - dx[:, None]) % w  # (S, W)
    x = torch.take_along_dim(x, ih.view(*lead, -1, 1, h, 1), dim=-2)
    return torch.take_along_dim(x, iw.view(*lead, -1, 1, 1, w), dim=-1)


class RandKspaceShift(RandomizableTransform):
    """Exact random integer in-plane shift applied in k-space as a linear phase ramp.

    k-space (..., S, T, H, W) complex -> same, equal to ``fft2c(torch.roll(ifft2c(k), (dy, dx), (-2, -1)))``.
    Shifts are uniform integers in [-max_shift, max_shift], per view (``per_view=True``) or one per subject; the
    same draw can roll image-domain arrays with :meth:`roll_image` (any dtype, e.g. segmentations).
    The ramp for centred index j is exp(-2πi ((j - N//2)·d mod N) / N), computed from integers so it stays exact.
    """

    def __init__(self, max_shift: int = 4, per_view: bool = True, prob: float = 1.0, name: str = "kspace") -> None:
        RandomizableTransform.__init__(self, prob)
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
        self.max_shift, self.per_view, self.name = int(max_shift), per_view, name
        self.shifts: np.ndarray | None = None  # (S, 2) int: (dy, dx)

    def randomize(self, n_views: int) -> None:
        super().randomize(None)
        n = n_views if self.per_view else 1
        d = self.R.randint(-self.max_shift, self.max_shift + 1, size=(n, 2))
        self.shifts = np.repeat(d, n_views, axis=0) if not self.per_view else d
        if not self._do_transform:
            self.shifts = np.zeros((n_views, 2), dtype=int)

    def _check_views(self, n_views: int) -> torch.Tensor:
        if self.shifts is None or len(self.shifts) != n_views:
            raise RuntimeError(f"RandKspaceShift: no shifts drawn for {n_views} views; call randomize() first.")
        return torch.as_tensor(self.shifts, dtype=torch.int64)

    def ramp(self, n_views: int, h: int, w: int, device=None) -> torch.Tensor:
        """The (S, 1, H, W) complex64 phase ramp of the current shifts."""
        d = self._check_views(n_views)
        jh = torch.arange(h) - h // 2
        jw = torch.arange(w) - w // 2
        ph = ((jh[None] * d[:, :1]) % h).to(torch.float64) * (-2 * math.pi / h)  # (S, H)
        pw = ((jw[None] * d[:, 1:]) % w).to(torch.float64) * (-2 * math.pi / w)  # (S, W)
        ang = ph[:, :, None] + pw[:, None, :]
        return torch.polar(torch.ones_like(ang), ang).to(device=device, dtype=torch.complex64)[:, None]

    def __call__(self, kspace, randomize: bool = True):
        k = _plain(validate(kspace, self.name, kind="complex", min_ndim=4, layout="(..., S, T, H, W)"))
        if randomize:
            self.randomize(k.shape[-4])
        if not self._do_transform:
            return kspace
        s, _, h, w = k.shape[-4:]
        return _like(k * self.ramp(s, h, w, k.device).to(k.dtype), kspace)

    def roll_image(self, img, name: str = "image"):
        """Apply the current shifts to an image-domain array (..., S, T, H, W) of any dtype (exact roll)."""
        t = _plain(validate(img, name, min_ndim=4, layout="(..., S, T, H, W)"))
        if not self._do_transform:
            return img
        d = self._check_views(t.shape[-4]).to(t.device)
        return _like(_roll_views(t, d[:, 0], d[:, 1]), img)


class RandGlobalPhase(RandomizableTransform):
    """Random constant phase per view: complex (..., S, T, H, W) -> ``x * exp(iθ_s)``, θ_s ~ U[0, 2π).

    Exact in both domains (the FFT is linear), so it applies to k-space or complex images alike.
    """

    def __init__(self, prob: float = 1.0, name: str = "kspace") -> None:
        RandomizableTransform.__init__(self, prob)
        self.name = name
        self.theta: np.ndarray | None = None

    def randomize(self, n_views: int) -> None:
        super().randomize(None)
        self.theta = self.R.uniform(0.0, 2 * math.pi, size=n_views)

    def __call__(self, x, randomize: bool = True):
        t = _plain(validate(x, self.name, kind="complex", min_ndim=4, layout="(..., S, T, H, W)"))
        if randomize:
            self.randomize(t.shape[-4])
        if not self._do_transform:
            return x
        if self.theta is None or len(self.theta) != t.shape[-4]:
            raise RuntimeError("RandGlobalPhase: randomize() was not called for this number of views.")
        th = torch.as_tensor(self.theta, dtype=torch.float64)
        rot = torch.polar(torch.ones_like(th), th).to(device=t.device, dtype=t.dtype)
        return _like(t * rot[:, None, None, None], x)


# ---------------------------------------------------------------------------------------- image augmentations
class RandViewRotate(RandomizableTransform):
    """Random in-plane rotation of every view by its own angle: real image (S, T, H, W) -> same.

    Angles are uniform in [-max_angle_deg, max_angle_deg], one per view, shared by the view's frames; rotation is
    about the in-plane centre with bilinear interpolation, and pixels from outside the field of view are 0.
    MONAI's ``Rotate`` turns all channels by one angle; MONAI's batched ``AffineTransform`` takes one matrix per
    view (views as its batch, frames as its channels), so all views turn in one resampling call.
    """

    def __init__(self, max_angle_deg: float = 180.0, prob: float = 1.0, name: str = "image") -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= max_angle_deg <= 180.0:
            raise ValueError(f"max_angle_deg must be in [0, 180], got {max_angle_deg}.")
        self.max_angle_deg, self.name = float(max_angle_deg), name
        self.angles: np.ndarray | None = None  # (S,) radians

    def randomize(self, n_views: int) -> None:
        super().randomize(None)
        a = self.R.uniform(-self.max_angle_deg, self.max_angle_deg, size=n_views)
        self.angles = np.deg2rad(a) if self._do_transform else np.zeros(n_views)

    def __call__(self, img, randomize: bool = True):
        t = _plain(validate(img, self.name, kind="real", ndim=4, layout="(S, T, H, W)"))
        if randomize:
            self.randomize(t.shape[0])
        if self.angles is None or len(self.angles) != t.shape[0]:
            raise RuntimeError(f"RandViewRotate: no angles drawn for {t.shape[0]} views; call randomize() first.")
        if not self._do_transform or self.max_angle_deg == 0.0:
            return img
        cos, sin = (torch.as_tensor(f(self.angles), dtype=torch.float32, device=t.device) for f in (np.cos, np.sin))
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], -1),
                             torch.stack([sin, cos, torch.zeros_like(cos)], -1)], 1)  # (S, 2, 3), pixel units  # fmt: skip
        rotate = AffineTransform(normalized=False, mode="bilinear", padding_mode="zeros", zero_centered=True)
        return _like(rotate(t.float(), theta).to(t.dtype), img)


# ------------------------------------------------------------------------------------------------- multi-coil
@functools.lru_cache(maxsize=16)
def _coil_maps(n_coils: int, h: int, w: int, radius: float, width: float, device: torch.device) -> torch.Tensor:
    # coils on a circle of `radius` (FOV half-widths) around the centre; magnitude falls off as 1/(1 + (d/width)^2),
    # phase rotates with the coil angle and varies linearly along the coil direction: all smooth
    y = torch.linspace(-1, 1, h, dtype=torch.float64)[:, None]
    x = torch.linspace(-1, 1, w, dtype=torch.float64)[None, :]
    ang = 2 * math.pi * torch.arange(n_coils, dtype=torch.float64) / n_coils
    cy, cx = (radius * torch.sin(ang))[:, None, None], (radius * torch.cos(ang))[:, None, None]
    mag = 1.0 / (1.0 + ((y - cy) ** 2 + (x - cx) ** 2) / width**2)
    phase = ang[:, None, None] + 0.5 * math.pi * (y * torch.sin(ang)[:, None, None] + x * torch.cos(ang)[:, None, None])
    maps = torch.polar(mag, phase)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))  # sum_c |S_c|^2 = 1 at every pixel
    return maps.to(device=device, dtype=torch.complex64)


class SimulateCoils(Transform):
    """Synthetic coil sensitivities: complex image (S, T, H, W) -> coil images (C, S, T, H, W) complex64.

    Maps (C, H, W) are smooth (see ``_coil_maps``), shared by views and frames, normalised so Σ_c |S_c|² = 1.
    ``to_kspace=True`` returns coil k-space ``fft2c`` of the coil images instead. :meth:`maps` gives the maps.
    """

    def __init__(self, n_coils: int = 8, radius: float = 1.5, width: float = 1.0, to_kspace: bool = False,
                 name: str = "image") -> None:  # fmt: skip
        if n_coils < 1:
            raise ValueError(f"n_coils must be >= 1, got {n_coils}.")
        self.n_coils, self.radius, self.width, self.to_kspace, self.name = n_coils, radius, width, to_kspace, name

    def maps(self, h: int, w: int, device=None) -> torch.Tensor:
        """Sensitivity maps (C, H, W) complex64."""
        dev = torch.device(device or "cpu")
        return _coil_maps(self.n_coils, int(h), int(w), float(self.radius), float(self.width), dev)

    def __call__(self, img):
        t = _plain(validate(img, self.name, ndim=4, layout="(S, T, H, W)"))
        t = t if t.is_complex() else t.to(torch.float32)
        coils = self.maps(t.shape[-2], t.shape[-1], t.device)[:, None, None] * t
        return _like(fft2c(coils) if self.to_kspace else coils, img)


class CoilCombine(Transform):
    """Coil k-space (C, ..., H, W) complex -> one image (..., H, W).

    mode "sense": adjoint SENSE ``Σ_c conj(S_c) ifft2c(k_c) / Σ_c |S_c|²`` (complex64; needs ``maps``
    (C, ..., H, W) broadcastable to the coil images); "rss": root-sum-of-squares ``sqrt(Σ_c |ifft2c(k_c)|²)``
    (float32).
    """

    def __init__(self, mode: str = "sense", name: str = "kspace") -> None:
        if mode not in ("sense", "rss"):
            raise ValueError(f"mode must be 'sense' or 'rss', got {mode!r}.")
        self.mode, self.name = mode, name

    def __call__(self, kspace, maps=None):
        k = _plain(validate(kspace, self.name, kind="complex", min_ndim=3, layout="(C, ..., H, W)"))
        imgs = ifft2c(k)
        if self.mode == "rss":
            return _like((imgs.abs() ** 2).sum(0).sqrt().to(torch.float32), kspace)
        if maps is None:
            raise ValueError(f"{self.name!r}: mode 'sense' needs sensitivity maps (C, ..., H, W).")
        s = _plain(validate(maps, "maps", kind="complex", min_ndim=3, layout="(C, ..., H, W)")).to(k.device)
        if s.shape[0] != k.shape[0] or s.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"'maps' shape {tuple(s.shape)} does not match coil k-space {tuple(k.shape)} (C, H, W).")
        s = s.view(s.shape[0], *([1] * (k.ndim - s.ndim)), *s.shape[1:])  # (C, H, W) -> (C, 1.., H, W)
        num = (s.conj() * imgs).sum(0)
        den = (s.abs() ** 2).sum(0).clamp_min(1e-12)
        return _like((num / den).to(torch.complex64), kspace)
