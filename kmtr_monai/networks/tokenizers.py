"""Tokenizers for multi-view cine images and undersampled k-space (DESIGN §4).

Token order is always view-major: all tokens of ``la_2ch`` first, then the next view, so tokens of every view are
concatenated along the sequence. Each tokenizer adds the fixed code of :mod:`.pos_embed` (position + LAX/SAX flag).

Why our own ``nn.Conv3d`` rather than MONAI's ``PatchEmbeddingBlock``: that block always adds a trainable
``position_embeddings`` parameter (even with ``pos_embed_type="none"``, a zero-initialised learnable one), its
built-in codes cover only (t, h, w) and not the view axis, and it needs an unrelated ``num_heads`` argument.
The patch embedding itself is one strided Conv3d, shared across views by folding views into the batch.

No-leakage (k-space tokenizers): values at unsampled ky lines never reach the output. The line tokenizer only
gathers sampled lines (indices from the mask alone); the patch tokenizer zero-fills with ``torch.where`` (not a
multiply, so even inf/NaN at unsampled lines cannot propagate) and feeds the mask as a third channel. The hybrid
tokenizer zero-fills the same way and then gathers only the (t, ky, x) cells that hold a sampled line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from ..transforms.fft import fft1c, ifft1c
from ..view_sharing import view_share
from .pos_embed import position_code

__all__ = [
    "check_real",
    "check_shape",
    "patchify",
    "unpatchify",
    "ImageTokenizer",
    "KspacePatchTokenizer",
    "KspaceLineTokenizer",
    "KspaceHybridTokenizer",
    "LineTokens",
    "HybridTokens",
    "to_hybrid",
    "from_hybrid",
    "gather_valid",
]


def check_real(name: str, x: torch.Tensor) -> None:
    """TypeError unless ``x`` is a real floating tensor (complex k-space must be given as 2 real channels)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(
            f"{name}: got complex dtype {x.dtype}; expected float with real and imaginary parts as a channel axis "
            "of size 2 (e.g. torch.stack([k.real, k.imag], 1))"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int], layout: str) -> None:
    """ValueError unless ``x.shape[1:] == expected`` (batch axis free). ``layout`` names the axes, e.g. 'B,S,T,H,W'."""
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape ({layout}) = (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
        )


def _check_kspace_mask(kspace: torch.Tensor, mask: torch.Tensor, swhw: Sequence[int], channels: int = 2) -> None:
    """Type/shape checks of a k-space tokenizer's inputs; ``swhw`` = (S, T, H, W)."""
    check_real("kspace", kspace)
    check_shape("kspace", kspace, (channels, *swhw), f"B, {channels}, S, T, H, W")
    check_shape("mask", mask, tuple(swhw[:3]), "B, S, T, H")


def _as_patch(patch: Sequence[int] | int) -> tuple[int, int, int]:
    p = (patch,) * 3 if isinstance(patch, int) else tuple(int(v) for v in patch)
    if len(p) != 3 or min(p) < 1:
        raise ValueError(f"patch must be 3 positive ints (pt, ph, pw), got {patch}")
    return p  # type: ignore[return-value]


def _patch_grid(n_views: int, n_frames: int, hw: tuple[int, int], patch: tuple[int, int, int]) -> tuple[int, ...]:
    for name, size, p in zip(("n_frames", "H", "W"), (n_frames, *hw), patch):
        if size % p:
            raise ValueError(f"{name}={size} is not divisible by its patch size {p} (patch={patch})")
    return (n_views, n_frames // patch[0], hw[0] // patch[1], hw[1] // patch[2])


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(B, C, S, T, H, W) → (B, S·nt·nh·nw, C·pt·ph·pw); tokens in (view, t, h, w), values in (c, pt, ph, pw) order."""
    pt, ph, pw = patch
    return rearrange(x, "b c s (t pt) (h ph) (w pw) -> b (s t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(p: torch.Tensor, patch: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C·pt·ph·pw) with ``grid`` = (S, nt, nh, nw) → (B, C, S, T, H, W)."""
    (pt, ph, pw), (s, t, h, w) = patch, grid
    return rearrange(
        p, "b (s t h w) (c pt ph pw) -> b c s (t pt) (h ph) (w pw)", s=s, t=t, h=h, w=w, pt=pt, ph=ph, pw=pw
    )


def register_input_shape(module: nn.Module, n_views: int, n_frames: int, h: int, w: int) -> None:
    """Record the input grid (S, T, H, W) as a persistent buffer ``input_shape``, saved with the weights.

    Why: the sin-cos position codes are computed, not learned, so an encoder trained on one input grid (e.g. a
    48 × 48 image crop) loads without a shape error into one built for another (the 64-line phase-encode FOV of
    ``kspace_geometry="acquisition"``) and silently reads its tokens at the wrong positions.
    :func:`kmtr_monai.engines.checkpoint.load_encoder_weights` compares this buffer's values and refuses the mismatch.
    """
    module.register_buffer("input_shape", torch.tensor([n_views, n_frames, h, w], dtype=torch.int64))


class _PatchTokenizer(nn.Module):
    """Shared Conv3d patch embedding over (t, h, w) for every view + fixed code on the (view, t, h, w) grid."""

    def __init__(self, in_channels, n_views, n_lax, n_frames, size, patch, dim) -> None:
        super().__init__()
        self.hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        self.patch = _as_patch(patch)
        self.n_views, self.n_frames = n_views, n_frames
        self.grid = _patch_grid(n_views, n_frames, self.hw, self.patch)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch, stride=self.patch)
        register_input_shape(self, n_views, n_frames, *self.hw)
        w = self.proj.weight.data  # MAE init: xavier on the flattened kernel, as for a Linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("pos", position_code(self.grid, dim, n_lax), persistent=False)

    @property
    def num_tokens(self) -> int:
        s, t, h, w = self.grid
        return s * t * h * w

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, T, H, W) → (B, N, dim)."""
        b, s = x.shape[0], x.shape[2]
        tok = self.proj(rearrange(x, "b c s t h w -> (b s) c t h w"))
        return rearrange(tok, "(b s) d t h w -> b (s t h w) d", b=b, s=s) + self.pos


class ImageTokenizer(_PatchTokenizer):
    """Patch tokens of a multi-view cine stack.

    Args:
        n_views, n_lax: views S (LAX first) and how many of them are LAX.
        n_frames: frames T. size: in-plane size, int or (H, W). patch: (pt, ph, pw). dim: token width.

    ``forward(image (B, S, T, H, W)) -> (B, N, dim)`` with N = S·(T/pt)·(H/ph)·(W/pw).
    """

    def __init__(self, n_views: int, n_lax: int, n_frames: int, size, patch, dim: int) -> None:
        super().__init__(1, n_views, n_lax, n_frames, size, patch, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_real("image", image)
        check_shape("image", image, (self.n_views, self.n_frames, *self.hw), "B, S, T, H, W")
        return self._embed(image[:, None])


class KspacePatchTokenizer(_PatchTokenizer):
    """Patch tokens on the zero-filled k-space grid, channels [real, imag, magnitude, mask].

    The magnitude channel (normalised like the real and imaginary parts by the caller) is invariant to the global
    phase and to in-plane shifts (a linear phase ramp), which otherwise scramble every linear read-out of real and
    imaginary parts across subjects.

    ``fill`` decides what unsampled lines hold: ``"zero"`` (zero-filled; ``valid`` is False for patches that
    contain no sampled ky line, the MAE's masked patches) or ``"view_sharing"`` (the nearest sampled frame's line,
    :func:`kmtr_monai.view_sharing.view_share`; every patch is valid). Either way only sampled values are read.
    With zero filling, the pooled features of a Stage I encoder were dominated by the mask pattern: the same
    subjects under two different masks were matched 3.7% of the time (top-1 of 135) against 59% for block means of
    the raw |k| (``BENCHMARKS.md``).

    ``forward(kspace (B, 3, S, T, H, W) [real, imag, magnitude], mask (B, S, T, H) bool) -> (tokens (B, N, dim),
    valid (B, N) bool)``.
    """

    channels = 3

    def __init__(self, n_views: int, n_lax: int, n_frames: int, n_pe: int, n_readout: int, patch, dim: int,
                 fill: str = "zero") -> None:  # fmt: skip
        if fill not in ("zero", "view_sharing"):
            raise ValueError(f"fill must be 'zero' or 'view_sharing', got {fill!r}")
        super().__init__(self.channels + 1, n_views, n_lax, n_frames, (n_pe, n_readout), patch, dim)
        self.fill = fill

    def patch_valid(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, S, T, H) bool → (B, N) bool: patch holds at least one sampled line."""
        pt, ph, _ = self.patch
        nw = self.grid[3]
        any_line = rearrange(mask, "b s (t pt) (h ph) -> b s t h (pt ph)", pt=pt, ph=ph).any(-1)
        return any_line[..., None].expand(*any_line.shape, nw).flatten(1)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_kspace_mask(kspace, mask, (self.n_views, self.n_frames, *self.hw), channels=self.channels)
        mask = mask.bool()
        m = mask[:, None, :, :, :, None]  # (B, 1, S, T, H, 1)
        if self.fill == "view_sharing":
            filled = view_share(kspace, mask)
            valid = torch.ones(mask.shape[0], self.num_tokens, dtype=torch.bool, device=mask.device)
        else:
            filled = torch.where(m, kspace, torch.zeros((), dtype=kspace.dtype, device=kspace.device))
            valid = self.patch_valid(mask)
        x = torch.cat([filled, m.to(kspace.dtype).expand_as(kspace[:, :1])], dim=1)
        return self._embed(x), valid


def gather_valid(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cells (B, N) bool → (index (B, M) long, valid (B, M) bool): the True cells of each row in ascending order,
    padded to M = the largest count in the batch (padding: index 0, valid False). ValueError if a row has none.

    Under ``torch.jit.trace`` M = N: a traced graph keeps the trace input's M as a constant, so it pads to every cell
    and stays right for any mask (padding is left out of attention either way)."""
    counts, tracing = cells.sum(1), torch.jit.is_tracing()
    if not tracing and bool((counts == 0).any()):
        raise ValueError(f"mask: subjects {torch.nonzero(counts == 0).flatten().tolist()} have no sampled line")
    n_max = cells.shape[1] if tracing else int(counts.max())
    order = torch.argsort((~cells).to(torch.uint8), dim=1, stable=True)[:, :n_max]  # True cells first
    valid = torch.arange(n_max, device=cells.device)[None, :] < counts[:, None]
    return torch.where(valid, order, 0), valid


class LineTokens(NamedTuple):
    """Output of :class:`KspaceLineTokenizer` (M = most sampled lines of any subject in the batch).

    tokens (B, M, dim); index (B, M) long, flat line index into the (S, T, H) grid; positions (B, M, 3) long,
    (view, t, ky); valid (B, M) bool, False on padding (index/positions are 0 there and tokens are zero).
    """

    tokens: torch.Tensor
    index: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor


class KspaceLineTokenizer(nn.Module):
    """One token per (view, frame, sampled ky line): the whole readout [real(W), imag(W)] → Linear → dim.

    Only sampled lines are gathered, in (view, t, ky) order, so the acceleration mask is the MAE mask and compute
    falls as 1/R. When subjects in a batch have different numbers of sampled lines, shorter ones are padded and
    marked in ``valid``.

    ``forward(kspace (B, 2, S, T, H, W), mask (B, S, T, H) bool) -> LineTokens``.
    """

    def __init__(self, n_views: int, n_lax: int, n_frames: int, n_pe: int, n_readout: int, dim: int) -> None:
        super().__init__()
        self.grid = (n_views, n_frames, n_pe)
        self.n_readout = n_readout
        self.proj = nn.Linear(2 * n_readout, dim)
        register_input_shape(self, n_views, n_frames, n_pe, n_readout)
        self.register_buffer("pos", position_code(self.grid, dim, n_lax), persistent=False)

    @property
    def num_lines(self) -> int:
        s, t, h = self.grid
        return s * t * h

    def gather_index(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mask (B, S, T, H) → (index (B, M) long, valid (B, M) bool) of sampled lines in ascending flat order."""
        return gather_valid(mask.bool().flatten(1))

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> LineTokens:
        _check_kspace_mask(kspace, mask, (*self.grid, self.n_readout))
        index, valid = self.gather_index(mask)
        lines = rearrange(kspace, "b c s t h w -> b (s t h) (c w)")
        zero = torch.zeros((), dtype=kspace.dtype, device=kspace.device)
        x = lines.gather(1, index[..., None].expand(-1, -1, lines.shape[-1]))
        x = torch.where(valid[..., None], x, zero)  # padding slots point at line 0, which may be unsampled
        tokens = torch.where(valid[..., None], self.proj(x) + self.pos[index], zero)
        s, t, h = self.grid
        positions = torch.stack([index // (t * h), (index // h) % t, index % h], dim=-1)
        return LineTokens(tokens, index, positions, valid)


# ------------------------------------------------------------------------------------------ hybrid x-ky space
def to_hybrid(kspace: torch.Tensor) -> torch.Tensor:
    """k-space (B, 2, ..., W) real/imag → hybrid x-ky space (B, 2, ..., W): the centred orthonormal inverse FFT
    along the readout (last axis) only (:func:`kmtr_monai.transforms.fft.ifft1c`). Exact, and line by line: a zero
    (unsampled) ky line stays a zero line."""
    h = ifft1c(torch.complex(kspace[:, 0], kspace[:, 1]), dim=-1)
    return torch.stack([h.real, h.imag], dim=1)


def from_hybrid(hybrid: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`to_hybrid`: hybrid (B, 2, ..., W) → k-space (B, 2, ..., W)."""
    k = fft1c(torch.complex(hybrid[:, 0], hybrid[:, 1]), dim=-1)
    return torch.stack([k.real, k.imag], dim=1)


class HybridTokens(NamedTuple):
    """Output of :class:`KspaceHybridTokenizer` (M = most occupied cells of any subject in the batch).

    tokens (B, M, dim); index (B, M) long, flat cell index into the grid (S, T/pt, H/ph, W/px); valid (B, M) bool,
    False on padding (index 0, token zero); cells (B, N) bool, N = all grid cells, True where the cell holds at
    least one sampled line (the gathered ones).
    """

    tokens: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    cells: torch.Tensor


class KspaceHybridTokenizer(nn.Module):
    """Tokens local in x and in ky, cut from hybrid x-ky space (DESIGN §15) over SAMPLED ky lines only.

    Input is the zero-filled k-space already taken to hybrid space by :func:`to_hybrid` (an inverse FFT along
    the readout kx → x only) and normalised by the caller, with channels [real, imag, magnitude]. The grid is
    (view, t/pt, ky/ph, x/px) with ``patch = (pt, ph, px)``; a token is one cell: its pt·ph lines × px samples of
    [real, imag, magnitude, line-sampled flag] → Linear → dim, plus the fixed code over (view, t, ky, x) and the
    LAX/SAX flag. Only cells holding at least one sampled line are gathered (padded to the batch maximum, like
    line tokens), so encoder compute falls with R; with ``patch = (1, 1, px)`` that is exactly one token per
    (view, frame, sampled ky line, x segment), i.e. sampled lines × W/px tokens.

    Why this is still "no reconstruction": the only transform is a 1-D inverse FFT along kx, the axis a Cartesian
    acquisition always samples fully. It is exact and invertible, acts on each acquired ky line by itself, and
    touches, fills or estimates no unsampled ky line: the ky direction stays undersampled k-space. Inside a cell
    an unsampled line's slots hold a constant zero and flag 0 (``torch.where``, so even inf/NaN there cannot
    propagate), never a value derived from data, so the encoder output does not change when unsampled values do.

    ``forward(hybrid (B, 3, S, T, H, W) [real, imag, magnitude], mask (B, S, T, H) bool) -> HybridTokens``.
    """

    channels = 3

    def __init__(self, n_views: int, n_lax: int, n_frames: int, n_pe: int, n_readout: int, patch, dim: int) -> None:
        super().__init__()
        self.hw = (n_pe, n_readout)
        self.patch = _as_patch(patch)
        self.n_views, self.n_frames = n_views, n_frames
        self.grid = _patch_grid(n_views, n_frames, self.hw, self.patch)
        self.proj = nn.Linear((self.channels + 1) * math.prod(self.patch), dim)
        register_input_shape(self, n_views, n_frames, *self.hw)
        nn.init.xavier_uniform_(self.proj.weight)  # as the patch tokenizers' Conv3d (MAE init)
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("pos", position_code(self.grid, dim, n_lax), persistent=False)

    @property
    def num_tokens(self) -> int:
        """All grid cells N = S·(T/pt)·(H/ph)·(W/px) (the decoder's token count)."""
        return math.prod(self.grid)

    def cell_valid(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, S, T, H) bool → (B, N) bool: the cell holds at least one sampled ky line."""
        pt, ph, _ = self.patch
        any_line = rearrange(mask.bool(), "b s (t pt) (h ph) -> b s t h (pt ph)", pt=pt, ph=ph).any(-1)
        return any_line[..., None].expand(*any_line.shape, self.grid[3]).flatten(1)

    def forward(self, hybrid: torch.Tensor, mask: torch.Tensor) -> HybridTokens:
        _check_kspace_mask(hybrid, mask, (self.n_views, self.n_frames, *self.hw), channels=self.channels)
        mask = mask.bool()
        m = mask[:, None, :, :, :, None]  # (B, 1, S, T, H, 1)
        zero = torch.zeros((), dtype=hybrid.dtype, device=hybrid.device)
        x = torch.cat([torch.where(m, hybrid, zero), m.to(hybrid.dtype).expand_as(hybrid[:, :1])], dim=1)
        cells = self.cell_valid(mask)
        index, valid = gather_valid(cells)
        p = patchify(x, self.patch)  # (B, N, 4·pt·ph·px)
        p = p.gather(1, index[..., None].expand(-1, -1, p.shape[-1]))
        tokens = torch.where(valid[..., None], self.proj(p) + self.pos[index], zero)
        return HybridTokens(tokens, index, valid, cells)
