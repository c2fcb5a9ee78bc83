"""Scanner k-space preparation: noise pre-whitening, readout-oversampling removal, SVD coil compression and coil
maps from calibration lines (arrays in, arrays out). :mod:`kmtr_monai.io.scanner_model` combines the coils and puts
the result on the model's grid.

Which input the model takes, and why: **coil-combined, single-coil-equivalent k-space** ``mask · fft2c(x)``
(S, T, H, W) with x the complex image (DESIGN §2). The networks were trained on exactly that (one complex image per
view and frame, simulated from images), so their input layer has no coil axis, and coil count, coil geometry and
coil ordering differ between scanners and sessions. Every step below is linear in the measured data and uses the
sampled ky lines only; the combination (CG-SENSE, :func:`~kmtr_monai.io.kspace_h5.combine_coils`) re-masks its output,
so nothing is invented at unsampled lines.

Order (:func:`kmtr_monai.io.scanner_model.to_model_kspace`): pre-whiten (coil noise covariance from the noise scans → ``L⁻¹`` with
``Ψ = L Lᴴ``) → remove readout oversampling (exact: inverse FFT along kx, keep the central 1/os, FFT back) →
optional SVD coil compression (unitary, so whitened noise stays white) → coil maps from the calibration lines (or
the fully-sampled time-averaged centre) → CG-SENSE → ``mask · fft2c(x)``. :func:`read_scanner_kspace
<kmtr_monai.io.scanner.read_scanner_kspace>` does the first two by default.

The combined image equals x only up to a smooth complex gain: the measured coil images are ``S_c · x`` and the split
into maps and object is not unique (the estimated maps are normalised to Σ_c |Ŝ_c|² = 1 and carry the phase of the
low-resolution calibration image). The models are trained with a random smooth phase per subject for this reason;
the magnitude gain is the usual receive-coil intensity bias.
"""

from __future__ import annotations

import numpy as np
import torch

from kmtr_monai.transforms.fft import fft1c, ifft1c

__all__ = ["noise_covariance", "whitening_matrix", "prewhiten", "remove_readout_oversampling",
           "calibration_block", "CoilCompression", "svd_coil_compression", "estimate_sens_maps"]  # fmt: skip


# ----------------------------------------------------------------------------------------------- noise whitening
def noise_covariance(noise: np.ndarray, dwell_ratio: float = 1.0) -> np.ndarray:
    """Coil noise covariance Ψ (C, C) complex128 from noise samples (C, N): ``Ψ = X Xᴴ / N`` (zero-mean noise).

    ``dwell_ratio`` = noise-scan dwell time / imaging dwell time: white noise variance scales with the receiver
    bandwidth (1 / dwell), so the imaging data see ``Ψ_noise · dwell_ratio``.
    """
    x = np.asarray(noise, dtype=np.complex128)
    if x.ndim != 2 or x.shape[1] < x.shape[0]:
        raise ValueError(f"noise samples must be (C, N) with N >= C, got {x.shape}")
    return (x @ x.conj().T) / x.shape[1] * float(dwell_ratio)


def whitening_matrix(cov: np.ndarray) -> np.ndarray:
    """``L⁻¹`` (C, C) with ``cov = L Lᴴ`` (Cholesky): ``L⁻¹ n`` has identity covariance. Raises ValueError when
    ``cov`` is not positive definite (a dead or duplicated coil)."""
    try:
        chol = np.linalg.cholesky(np.asarray(cov, dtype=np.complex128))
    except np.linalg.LinAlgError as err:
        raise ValueError("the noise covariance is not positive definite (a dead or duplicated coil?)") from err
    return np.linalg.inv(chol)


def prewhiten(kspace: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Apply a coil matrix (C', C) to k-space (C, ...) → (C', ...) complex64 (whitening or compression)."""
    k = np.asarray(kspace)
    out = np.tensordot(np.asarray(white, dtype=np.complex64), k.reshape(k.shape[0], -1), axes=(1, 0))
    return out.reshape(-1, *k.shape[1:]).astype(np.complex64, copy=False)


# ------------------------------------------------------------------------------------------ readout oversampling
def remove_readout_oversampling(kspace: np.ndarray, factor: float = 2.0, axis: int = -1) -> np.ndarray:
    """k-space (..., W) sampled with ``factor``× readout oversampling → (..., W / factor) complex64.

    Inverse centred FFT along the readout, keep the central ``W / factor`` samples (the prescribed field of view),
    centred FFT back. Exact: for an object inside the central FOV, the result is the k-space of the object sampled
    on the prescribed grid (:func:`~kmtr_monai.transforms.fft.fft1c` of the cropped hybrid-space line).
    """
    k = np.asarray(kspace)
    w = k.shape[axis]
    keep = w / float(factor)
    if factor < 1 or abs(keep - round(keep)) > 1e-9:
        raise ValueError(f"readout length {w} is not divisible by the oversampling factor {factor}")
    keep = int(round(keep))
    if keep == w:
        return k.astype(np.complex64, copy=False)
    start = w // 2 - keep // 2  # keeps the centre sample (index w // 2) at index keep // 2
    hybrid = np.take(ifft1c(k, axis), np.arange(start, start + keep), axis=axis)
    return fft1c(hybrid, axis).astype(np.complex64)


# ------------------------------------------------------------------------------------------------- calibration
def calibration_block(mask: np.ndarray, frames_all: bool = True) -> np.ndarray:
    """The fully-sampled centre: bool (S, H) marking, per slice, the contiguous run of ky lines around H // 2 that is
    sampled in every frame (``frames_all``) or in some frame (the time-averaged k-space, which VISTA samples fully).

    Args: mask: bool (S, T, H). Empty where the centre line itself is not sampled.
    """
    m = np.asarray(mask, dtype=bool)
    full = m.all(1) if frames_all else m.any(1)  # (S, H)
    out = np.zeros_like(full)
    c = full.shape[1] // 2
    for s in range(full.shape[0]):
        if not full[s, c]:
            continue
        lo, hi = c, c
        while lo > 0 and full[s, lo - 1]:
            lo -= 1
        while hi < full.shape[1] - 1 and full[s, hi + 1]:
            hi += 1
        out[s, lo : hi + 1] = True
    return out


# ------------------------------------------------------------------------------------------- coil compression
class CoilCompression:
    """SVD coil compression: per slice a matrix (V, C) with orthonormal rows, the V left singular vectors of the
    coil data (C, samples) with the largest singular values.

    Attributes: ``matrices`` complex64 (S, V, C); ``energy`` float (S,): fraction of the estimation data's energy
    (Σ |k|²) the V virtual coils keep (exact on that data: Σ of the V largest σ² over Σ σ²); ``singular_values``
    (S, C).
    """

    def __init__(self, matrices: np.ndarray, energy: np.ndarray, singular_values: np.ndarray) -> None:
        self.matrices, self.energy, self.singular_values = matrices, energy, singular_values

    @property
    def n_virtual(self) -> int:
        return int(self.matrices.shape[1])

    def apply(self, kspace: np.ndarray) -> np.ndarray:
        """Coil k-space (C, S, ...) → virtual-coil k-space (V, S, ...) complex64 (zeros stay zeros)."""
        k = np.asarray(kspace)
        out = np.einsum("svc,cs...->vs...", self.matrices, k, optimize=True)
        return out.astype(np.complex64, copy=False)


def svd_coil_compression(kspace: np.ndarray, mask: np.ndarray, n_virtual: int | None = None,
                         energy: float | None = None) -> CoilCompression:  # fmt: skip
    """Estimate SVD coil compression from the sampled lines of coil k-space (C, S, T, H, W) with mask (S, T, H).

    Give ``n_virtual`` (V virtual coils) or ``energy`` (the smallest V keeping that fraction of the energy, the
    largest V over slices used for all). Only sampled lines enter (pass calibration k-space and its mask to estimate
    on the calibration lines). Apply with :meth:`CoilCompression.apply`.
    """
    k, m = np.asarray(kspace), np.asarray(mask, dtype=bool)
    n_c, n_s = k.shape[:2]
    if (n_virtual is None) == (energy is None):
        raise ValueError("give exactly one of n_virtual or energy")
    if n_virtual is not None and not 1 <= int(n_virtual) <= n_c:
        raise ValueError(f"n_virtual must be in 1..{n_c} (the physical coils), got {n_virtual}")
    us, sv = [], []
    for s in range(n_s):
        rows = k[:, s][:, m[s]]  # (C, lines, W): sampled lines of all frames
        u, sig, _ = np.linalg.svd(rows.reshape(n_c, -1).astype(np.complex128), full_matrices=False)
        us.append(u)
        sv.append(np.pad(sig, (0, n_c - sig.size)))
    sv = np.stack(sv)  # (S, C)
    frac = np.cumsum(sv**2, 1) / np.maximum((sv**2).sum(1, keepdims=True), 1e-30)
    if n_virtual is None:
        n_virtual = int(max(np.searchsorted(f, float(energy) - 1e-12) + 1 for f in frac))
        n_virtual = min(n_virtual, n_c)
    v = int(n_virtual)
    mats = np.stack([u[:, :v].conj().T for u in us]).astype(np.complex64)  # (S, V, C)
    return CoilCompression(mats, frac[:, v - 1], sv)


# ------------------------------------------------------------------------------------------------- coil maps
def estimate_sens_maps(calib: np.ndarray, calib_mask: np.ndarray, kernel: int = 5, eps: float = 1e-3) -> np.ndarray:
    """Coil sensitivity maps (C, S, H, W) complex64 from calibration lines (Walsh's adaptive method).

    Args:
        calib: coil k-space (C, S, T, H, W) at the calibration lines (other lines ignored).
        calib_mask: bool (S, T, H). Each line is averaged over the frames that sampled it; the central contiguous
            block of lines sampled in some frame is kept, windowed (Hann) along ky and, over the same fraction of
            k-space, along kx, giving low-resolution coil images I (C, H, W).
        kernel: the neighbourhood (kernel × kernel pixels) of the coil correlation matrices.
    Map at a pixel: the dominant eigenvector of Σ_{neighbourhood} I Iᴴ (C × C), so Σ_c |Ŝ_c|² = 1, with its phase
    relative to the first SVD virtual coil (a smooth phase, like the coils' own: the combined image keeps the
    object's phase, and its k-space at the sampled lines stays determined by the sampled coil lines; a phase that
    follows the low-resolution image instead gave 30-40 % error at the sampled lines in the tests, against 4 %); 0
    where the low-resolution signal is below ``eps`` × its maximum. Walsh et al., MRM 2000. Written here because
    MONAI has no sensitivity estimator outside its learned ``CoilSensitivityModel`` (sigpy's ESPIRiT is not a
    dependency).
    """
    from scipy.ndimage import uniform_filter

    from kmtr_monai.transforms import ifft2c

    k, m = np.asarray(calib), np.asarray(calib_mask, dtype=bool)
    n_c, n_s, _, h, w = k.shape
    block = calibration_block(m, frames_all=False)  # (S, H)
    maps = np.zeros((n_c, n_s, h, w), np.complex64)

    def box(a: np.ndarray) -> np.ndarray:  # neighbourhood sum over the last two axes of complex a
        size = (1,) * (a.ndim - 2) + (kernel, kernel)
        return uniform_filter(a.real, size, mode="constant") + 1j * uniform_filter(a.imag, size, mode="constant")

    for s in range(n_s):
        rows = np.flatnonzero(block[s])
        if rows.size < 2:
            raise ValueError(f"slice {s}: no calibration region (fewer than 2 contiguous sampled centre lines)")
        cnt = m[s].sum(0)  # (H,) frames per line
        avg = (k[:, s] * m[s][None, :, :, None]).sum(1) / np.maximum(cnt, 1)[None, :, None]  # (C, H, W)
        win_y = np.zeros(h)
        win_y[rows] = np.hanning(rows.size + 2)[1:-1]
        nx = min(max(3, int(round(rows.size / h * w)) | 1), w - 1 + w % 2)  # same k-space fraction along kx
        win_x = np.zeros(w)
        win_x[w // 2 - nx // 2 : w // 2 - nx // 2 + nx] = np.hanning(nx + 2)[1:-1]
        low = ifft2c(torch.from_numpy((avg * win_y[None, :, None] * win_x[None, None, :]).astype(np.complex64)))
        low = low.numpy().astype(np.complex128)  # (C, H, W)
        corr = box(low[:, None] * low[None].conj())  # (C, C, H, W)
        _, vec = np.linalg.eigh(corr.transpose(2, 3, 0, 1))  # ascending eigenvalues
        v = vec[..., -1]  # (H, W, C) dominant eigenvector, unit norm
        u = np.linalg.svd(low.reshape(n_c, -1), full_matrices=False)[0][:, 0]  # (C,) the first virtual coil
        v = v * np.exp(-1j * np.angle(v @ u.conj()))[..., None]  # phase relative to it: smooth like the coils
        rss = np.sqrt((np.abs(box(low)) ** 2).sum(0))
        maps[:, s] = np.where(rss > eps * rss.max(), v.transpose(2, 0, 1), 0)
    return maps
