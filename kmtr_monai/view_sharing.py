"""View sharing: fill each unsampled k-space line from the nearest frame (cyclic in time) that sampled it.

The classic data-sharing reference for undersampled cine (k-t) acquisitions: the heart is periodic and mostly
static between neighbouring frames, so a line missing in frame t is well approximated by the same line in the
closest frame that measured it; when the nearest earlier and later frames are equally close, their mean is used.
Uses sampled values only (no leakage). Lines never sampled in any frame stay zero. MONAI has no k-t data sharing.
"""

from __future__ import annotations

import torch


def view_share(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """kspace (B, C, S, T, H, W) real, mask (B, S, T, H) bool (True = sampled line) → (B, C, S, T, H, W).

    Sampled lines are returned unchanged; time (axis T) is treated as cyclic, as in a cine cycle.
    """
    if kspace.ndim != 6 or mask.shape != (kspace.shape[0], *kspace.shape[2:5]):
        raise ValueError(f"view_share: expected kspace (B, C, S, T, H, W) and mask (B, S, T, H), got "
                         f"{tuple(kspace.shape)} and {tuple(mask.shape)}")  # fmt: skip
    n_t = mask.shape[2]
    t = torch.arange(n_t, device=mask.device)
    ahead = (t[None, :] - t[:, None]) % n_t  # (T, U): frames from t forward to u
    behind = (t[:, None] - t[None, :]) % n_t  # (T, U): frames from t back to u
    m = mask.bool()[:, :, None]  # (B, S, 1, U, H)
    inf = torch.tensor(n_t, device=mask.device)
    d_next, i_next = torch.where(m, ahead[None, None, :, :, None], inf).min(3)  # (B, S, T, H)
    d_prev, i_prev = torch.where(m, behind[None, None, :, :, None], inf).min(3)
    w_next = ((d_next <= d_prev) & (d_next < n_t)).to(kspace.dtype)
    w_prev = ((d_prev <= d_next) & (d_prev < n_t)).to(kspace.dtype)
    total = (w_next + w_prev).clamp_min(1.0)
    w_next, w_prev = w_next / total, w_prev / total
    zero = torch.zeros((), dtype=kspace.dtype, device=kspace.device)
    zero_filled = torch.where(mask.bool()[:, None, ..., None], kspace, zero)
    shape = (-1, kspace.shape[1], -1, -1, -1, kspace.shape[-1])

    def take(index: torch.Tensor) -> torch.Tensor:
        return zero_filled.gather(3, index[:, None, ..., None].expand(shape))

    return take(i_next) * w_next[:, None, ..., None] + take(i_prev) * w_prev[:, None, ..., None]
