"""Pre-norm ViT encoder (also used as the MAE decoder) with fused attention and key-padding masks.

Why not MONAI's ``TransformerBlock(use_flash_attention=True)``: its ``SABlock`` passes ``attn_mask`` straight to
``scaled_dot_product_attention`` in the fused path, where a ``(B, N)`` key-padding mask broadcasts against the
wrong axes (the non-fused path reshapes it, so the two paths disagree), and the fused path applies attention
dropout in eval mode too. k-space line tokens need a correct key-padding mask when sampled-line counts differ
across a batch, so we write a minimal block on ``torch.nn.functional.scaled_dot_product_attention`` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Attention", "Block", "TransformerEncoder", "init_vit_weights"]


def init_vit_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: truncated-normal(0.02) Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    """Multi-head self-attention. x (B, N, dim), attn_mask (B, 1, 1, N) bool (True = attend) or None → (B, N, dim)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (MLP hidden = mlp_ratio·dim, GELU)."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, attn_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Stack of pre-norm blocks with a final LayerNorm, optional class token and gradient checkpointing.

    Args:
        dim, depth, heads: width, number of blocks, attention heads.
        mlp_ratio: MLP hidden width / dim (4).
        qkv_bias, dropout: as in ViT; dropout 0 by default.
        cls_token: prepend a learned class token; the output then has ``1 + N`` tokens (class token first).
        grad_checkpoint: recompute each block in backward (``torch.utils.checkpoint``, ``use_reentrant=False``).

    ``forward(x (B, N, dim), valid (B, N) bool | None) -> (B, N[+1], dim)``: ``valid`` False marks padding
    tokens, which no token attends to (they still get outputs, computed from the valid tokens).
    With ``return_hidden=True`` it returns ``(out, hidden)``, ``hidden`` a tuple of ``depth`` tensors (B, N[+1], dim):
    the output of every block before the final LayerNorm (the skips of a UNETR-style decoder).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        cls_token: bool = False,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.grad_checkpoint = grad_checkpoint
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(init_vit_weights)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if cls_token else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, return_hidden: bool = False):
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"tokens: expected (B, N, {self.dim}), got {tuple(x.shape)}")
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            if valid is not None:
                valid = F.pad(valid, (1, 0), value=True)
        # a traced graph keeps the trace input's branch as a constant: keep the mask there whatever the input holds
        all_valid = valid is None or (not torch.jit.is_tracing() and bool(valid.all()))
        attn_mask = None if all_valid else valid[:, None, None, :]
        hidden = []
        for blk in self.blocks:
            if self.grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask)
            hidden.append(x)
        return (self.norm(x), tuple(hidden)) if return_hidden else self.norm(x)
