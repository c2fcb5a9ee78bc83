"""Dense decoders: k-space encoder tokens → image-grid outputs (B, out_channels, S, T, H, W) (DESIGN §4).

Used for segmentation (6 logits) and reconstruction (1 magnitude channel). Patch tokens cut from k-space do not
sit on the image grid (token (ky, kx) carries no image location), so two bridges are offered, to be chosen by
measurement:

* :class:`TokenGridUNETRDecoder`: UNETR over the token grid; the transformer must relocate information itself;
* :class:`ImageQueryDecoder`: learned image-grid queries cross-attend to all tokens (Perceiver/DiSK style), which
  relocates it explicitly.

Both run per view with shared weights (views folded into the batch) and use MONAI's UNETR blocks. ``valid`` is
accepted and ignored: every token, also one at a patch without sampled lines, is computed from sampled values only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.blocks import (
    CrossAttentionBlock,
    MLPBlock,
    UnetOutBlock,
    UnetrBasicBlock,
    UnetrPrUpBlock,
    UnetrUpBlock,
)
from torch import nn

from .heads import check_tokens
from .pos_embed import position_code
from .tokenizers import unpatchify

__all__ = ["TokenUnpatchify", "TokenGridUNETRDecoder", "ImageQueryDecoder", "evenly_spaced_layers"]


def _grid_patch(grid: Sequence[int], patch: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    grid, patch = tuple(int(v) for v in grid), tuple(int(v) for v in patch)
    if len(grid) != 4 or len(patch) != 3 or min(grid + patch) < 1:
        raise ValueError(f"grid must be (S, T', H', W') and patch (pt, ph, pw), positive ints; got {grid}, {patch}")
    return grid, patch


def evenly_spaced_layers(depth: int, n: int) -> tuple[int, ...]:
    """``n`` block indices spread over an encoder of ``depth`` blocks, as UNETR's 3, 6, 9 of 12 (0-based)."""
    if depth < 1 or n < 0:
        raise ValueError(f"need depth >= 1 and n >= 0, got depth={depth}, n={n}")
    return tuple(max(0, min(depth - 1, round((i + 1) * depth / (n + 1)) - 1)) for i in range(n))


class TokenUnpatchify(nn.Module):
    """Per-token Linear(dim → channels·pt·ph·pw) + :func:`unpatchify`: a learned 3-D pixel shuffle from the token
    grid to full resolution. tokens (B, N, dim) on ``grid`` (S, T', H', W') → (B·S, channels, T, H, W)."""

    def __init__(self, dim: int, channels: int, grid: Sequence[int], patch: Sequence[int]) -> None:
        super().__init__()
        self.grid, self.patch = _grid_patch(grid, patch)
        self.proj = nn.Linear(dim, channels * math.prod(self.patch))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = unpatchify(self.proj(tokens), self.patch, self.grid)  # (B, ch, S, T, H, W)
        return rearrange(x, "b c s t h w -> (b s) c t h w")


def _to_grid(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, 1+N, C), class token first → (B·S, C, T', H', W') (class token dropped)."""
    s, t, h, w = grid
    return rearrange(tokens[:, 1:], "b (s t h w) c -> (b s) c t h w", s=s, t=t, h=h, w=w)


def _unfold_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    return rearrange(x, "(b s) c t h w -> b c s t h w", s=n_views)


class TokenGridUNETRDecoder(nn.Module):
    """UNETR decoder over the (view, t', h', w') token grid (Hatamizadeh et al. 2022), from MONAI blocks.

    In-plane patch size ``ph = pw = 2^k`` gives k upsampling stages, level j at in-plane resolution H'·2^j; time
    stays at T' until the last stage, whose transposed convolution also upsamples time by ``pt`` (so any pt works,
    e.g. 5). Skips at levels 1..k-1 come from encoder hidden states (``hidden_layers``, earliest block → highest
    resolution, as UNETR) or, when none are given, from the final tokens, each through ``UnetrPrUpBlock``.

    UNETR's full-resolution skip is a conv block on the raw image, which a k-space model does not have. It is
    replaced by a decoder-side projection: :class:`TokenUnpatchify` of the final tokens to (T, H, W) with
    ``feature_size`` channels, then a ``UnetrBasicBlock``.

    Args:
        dim: token width. grid: (S, T', H', W'). patch: (pt, ph, pw). out_channels: 6 (seg logits) or 1 (recon).
        feature_size: channels at full resolution (level j has feature_size·2^(k-j)).
        hidden_layers: k-1 encoder block indices for the skips, or None. encoder_depth: if given and
            ``hidden_layers`` is None, use :func:`evenly_spaced_layers`. norm_name, res_block: MONAI block options.

    ``forward(tokens (B, 1+N, dim), valid=None, hidden=None) -> (B, out_channels, S, T, H, W)``; ``hidden`` is the
    tuple of every encoder block's output (``KspaceMAE.encode(..., return_hidden=True)``), needed iff
    ``hidden_layers`` is set.
    """

    def __init__(self, dim: int, grid: Sequence[int], patch: Sequence[int], out_channels: int,
                 feature_size: int = 16, hidden_layers: Sequence[int] | None = None, encoder_depth: int | None = None,
                 norm_name: str | tuple = "instance", res_block: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.grid, self.patch = _grid_patch(grid, patch)
        pt, ph, pw = self.patch
        k = int(math.log2(ph)) if ph > 1 else 0
        if ph != pw or ph < 2 or 2**k != ph:
            raise ValueError(f"TokenGridUNETRDecoder needs in-plane patch ph = pw = a power of 2 >= 2, got {patch}")
        self.dim, self.out_channels, self.k = dim, out_channels, k
        if hidden_layers is None and encoder_depth is not None:
            hidden_layers = evenly_spaced_layers(encoder_depth, k - 1)
        if hidden_layers is not None:
            hidden_layers = tuple(sorted(int(i) for i in hidden_layers))
            if len(hidden_layers) != k - 1 or (hidden_layers and min(hidden_layers) < 0):
                raise ValueError(
                    f"hidden_layers: need {k - 1} block indices >= 0 for patch {patch}, got {hidden_layers}"
                )
        self.hidden_layers = hidden_layers or None
        fs, up = feature_size, (1, 2, 2)
        conv = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=res_block)
        # skip at level j (1..k-1): j upsamplings from the token grid
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(in_channels=dim, out_channels=fs * 2 ** (k - j), num_layer=j - 1, stride=1,
                           upsample_kernel_size=up, conv_block=True, **conv)  # fmt: skip
            for j in range(1, k)
        )
        self.full_proj = TokenUnpatchify(dim, fs, self.grid, self.patch)
        self.full_block = UnetrBasicBlock(in_channels=fs, out_channels=fs, stride=1, **conv)
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=dim if j == 1 else fs * 2 ** (k - j + 1), out_channels=fs * 2 ** (k - j),
                         upsample_kernel_size=up if j < k else (pt, 2, 2), **conv)  # fmt: skip
            for j in range(1, k + 1)
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None,
                hidden: Sequence[torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        check_tokens(tokens, self.dim, math.prod(self.grid))
        if self.hidden_layers is not None:
            if hidden is None or len(hidden) <= max(self.hidden_layers):
                n = "none" if hidden is None else len(hidden)
                raise ValueError(f"hidden: need encoder block outputs {self.hidden_layers}, got {n} "
                                 "(call encode(..., return_hidden=True))")  # fmt: skip
            sources = [hidden[i] for i in self.hidden_layers]  # earliest first → highest-resolution skip
        else:
            sources = [tokens] * (self.k - 1)
        skips = [blk(_to_grid(src, self.grid)) for blk, src in zip(self.skips, reversed(sources))]  # levels 1..k-1
        skips.append(self.full_block(self.full_proj(tokens[:, 1:])))  # level k (full resolution)
        x = _to_grid(tokens, self.grid)
        for up, skip in zip(self.ups, skips):
            x = up(x, skip)
        return _unfold_views(self.out(x), self.grid[0])


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention block: ``q + CrossAttn(LN(q), context)`` then ``q + MLP(LN(q))``.

    MONAI's ``CrossAttentionBlock`` with ``use_flash_attention=True`` (``F.scaled_dot_product_attention``); dropout
    is left at 0 because that fused path would also apply it in eval mode (DESIGN §9).
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(query_dim)
        self.attn = CrossAttentionBlock(query_dim, heads, context_input_size=context_dim, qkv_bias=True,
                                        use_flash_attention=True)  # fmt: skip
        self.norm2 = nn.LayerNorm(query_dim)
        self.mlp = MLPBlock(query_dim, int(query_dim * mlp_ratio))

    def forward(self, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.norm1(q), context)
        return q + self.mlp(self.norm2(q))


class ImageQueryDecoder(nn.Module):
    """Learned image-grid queries cross-attend to the k-space tokens, then a pixel-shuffle + conv head.

    One query per image-grid cell (view, t', h', w'): a learned vector plus the fixed sin-cos code of its position
    and LAX/SAX flag (:func:`position_code`). ``layers`` pre-norm cross-attention blocks read ALL encoder tokens
    (every view, frame and k-space patch, class token included), so each image cell gathers what it needs from
    anywhere in k-space. The queries are then mapped to full resolution by :class:`TokenUnpatchify` (a learned
    pixel shuffle, ``feature_size`` channels) and refined per view by a MONAI ``UnetrBasicBlock`` (3×3×3 residual
    convolutions, which smooth patch seams) and ``UnetOutBlock``.

    Args:
        dim: token width. grid: (S, T', H', W'). patch: (pt, ph, pw). out_channels: 6 (seg) or 1 (recon).
        n_lax: LAX views (for the flag). query_dim: query width (default ``dim``). layers, heads, mlp_ratio: the
        cross-attention blocks. feature_size, norm_name, res_block: the convolutional head.

    ``forward(tokens (B, 1+N, dim), valid=None) -> (B, out_channels, S, T, H, W)``.
    """

    def __init__(self, dim: int, grid: Sequence[int], patch: Sequence[int], out_channels: int, n_lax: int,
                 query_dim: int | None = None, layers: int = 1, heads: int = 4, mlp_ratio: float = 4.0,
                 feature_size: int = 16, norm_name: str | tuple = "instance",
                 res_block: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.grid, self.patch = _grid_patch(grid, patch)
        if layers < 1:
            raise ValueError(f"ImageQueryDecoder layers must be >= 1, got {layers}")
        qd = dim if query_dim is None else query_dim
        self.dim, self.out_channels = dim, out_channels
        n = math.prod(self.grid)
        self.queries = nn.Parameter(torch.randn(1, n, qd) * 0.02)
        self.register_buffer("query_pos", position_code(self.grid, qd, n_lax)[None], persistent=False)
        self.context_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(_CrossBlock(qd, dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(qd)
        self.to_pixels = TokenUnpatchify(qd, feature_size, self.grid, self.patch)
        self.refine = UnetrBasicBlock(3, feature_size, feature_size, 3, 1, norm_name, res_block=res_block)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=feature_size, out_channels=out_channels)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        context = self.context_norm(tokens)
        q = (self.queries + self.query_pos).expand(tokens.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(q, context)
        x = self.refine(self.to_pixels(self.norm(q)))
        return _unfold_views(self.out(x), self.grid[0])
