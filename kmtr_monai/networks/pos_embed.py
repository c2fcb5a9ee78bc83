"""Fixed sin–cos position codes over token grids, with the LAX/SAX flag channel (DESIGN §4).

Layout of a code vector of width ``dim`` (the token width of the model):

* channels ``[0, dim - 1)``: sin–cos code of the token position. The position has one coordinate per grid axis
  (``(view, t, h, w)`` for patch tokens, ``(view, t, ky)`` for k-space line tokens); the channels are split into
  even-sized blocks, one per axis, each block ``[sin(p·ω_0..), cos(p·ω_0..)]`` with ``ω_i = 10000^(-i/(n/2))``.
  Blocks differ by at most 2 channels; an odd left-over channel is zero.
* channel ``dim - 1``: the **LAX/SAX flag**, +1 for LAX views (the first ``n_lax`` views), -1 for SAX views.

ViTa widens its tokens to 1024 + 1 and puts the flag in the extra channel. We instead reserve the last channel of
``dim`` for the flag, so the width stays divisible by the number of heads (1024 = 16 × 64) while the model still
receives the flag as a fixed, explicit channel rather than something it must learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["split_dims", "sincos_1d", "sincos_code", "grid_positions", "lax_flag", "position_code"]


def split_dims(dim: int, n_axes: int) -> tuple[int, ...]:
    """Even channel counts per axis for a ``dim``-wide code, as equal as possible (sum is ``dim`` or ``dim - 1``)."""
    if n_axes < 1:
        raise ValueError(f"n_axes must be >= 1, got {n_axes}")
    pairs, extra = divmod(dim // 2, n_axes)
    if pairs < 1:
        raise ValueError(f"dim={dim} is too small for a sin-cos code over {n_axes} axes (need >= {2 * n_axes})")
    return tuple(2 * (pairs + (i < extra)) for i in range(n_axes))


def sincos_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sin–cos code. ``pos`` (N,) → (N, dim) = ``[sin(pos·ω), cos(pos·ω)]``; ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    omega = temperature ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angle = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(torch.float32)


def sincos_code(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Multi-axis sin-cos: ``positions`` (N, A) → (N, dim), axis blocks from :func:`split_dims`, zero-padded."""
    if positions.ndim != 2:
        raise ValueError(f"positions must be (N, n_axes), got shape {tuple(positions.shape)}")
    blocks = [sincos_1d(positions[:, a], d) for a, d in enumerate(split_dims(dim, positions.shape[1]))]
    code = torch.cat(blocks, dim=1)
    return torch.nn.functional.pad(code, (0, dim - code.shape[1]))


def grid_positions(sizes: Sequence[int]) -> torch.Tensor:
    """Integer coordinates of a C-ordered grid: ``sizes`` (A values) → (prod(sizes), A) long."""
    axes = [torch.arange(int(s)) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


def lax_flag(view_index: torch.Tensor, n_lax: int) -> torch.Tensor:
    """+1.0 where ``view_index < n_lax`` (LAX), -1.0 otherwise (SAX). Same shape as ``view_index``."""
    return torch.where(view_index < n_lax, 1.0, -1.0).to(torch.float32)


def position_code(sizes: Sequence[int], dim: int, n_lax: int) -> torch.Tensor:
    """Fixed code for every cell of a grid whose FIRST axis is the view.

    Args:
        sizes: grid sizes, e.g. ``(S, nt, nh, nw)`` for patches or ``(S, T, H)`` for k-space lines.
        dim: token width; channels ``[0, dim-1)`` hold the position code, channel ``dim-1`` the LAX/SAX flag.
        n_lax: number of leading LAX views.

    Returns:
        (prod(sizes), dim) float32, rows in C order of the grid (view slowest).
    """
    if not 0 <= n_lax <= sizes[0]:
        raise ValueError(f"n_lax must be in [0, n_views={sizes[0]}], got {n_lax}")
    pos = grid_positions(sizes)
    return torch.cat([sincos_code(pos, dim - 1), lax_flag(pos[:, 0], n_lax)[:, None]], dim=1)
