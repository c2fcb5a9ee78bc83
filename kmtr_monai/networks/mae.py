"""Stage I masked autoencoders: image MAE (random 70% patch masking) and k-space MAE (acceleration mask = MAE mask).

MONAI's ``MaskedAutoEncoderViT`` is not reused: it has no view axis / LAX flag in its position code, no key-padding
for variable token counts, no way to take the mask from the data (k-space), and returns no loss. The recipe is
the standard MAE one (He et al. 2022): encode visible tokens (+ class token), map to the decoder width, put a
shared learned mask token at every hidden position, add the decoder's fixed position code, decode, predict.

k-space normalisation (:func:`normalise_sampled`, used by :class:`KspaceMAE`; from SAMPLED values only, so no leakage):
    ``RMS_b`` = root-mean-square of the sampled real/imag values of subject b, ``c_b = alpha · RMS_b``;
    ``y = asinh(k / c_b) / asinh(1 / alpha)`` (``norm="asinh"``, default) or ``y = k / RMS_b`` (``norm="scale"``).
asinh is a signed log: linear for |k| << c_b (the ~1e-3 edges of k-space) and logarithmic for the large centre
(DC can be tens). Dividing by ``asinh(1/alpha)`` maps a value of size RMS_b to 1, so with alpha = 0.05 the whole
dynamic range lands in about [-2.5, 2.5] and the edges still weigh in the loss.
The target ``kspace_full`` is normalised with the SAME ``c_b``; predictions are mapped back with the exact inverse
(``c_b · sinh(y · asinh(1/alpha))``) so ``out["pred"]`` is in the original units, while ``loss`` is the weighted
MSE in normalised units.

Hybrid tokens (``tokenizer="hybrid"``, DESIGN §15) work in hybrid x-ky space: the zero-filled k-space is taken
along the readout to x (:func:`~kmtr_monai.networks.tokenizers.to_hybrid`, exact, line by line) and normalised with
the same ``c_b`` (the orthonormal 1-D FFT keeps each line's energy, so the RMS of the sampled values is the same in
both spaces). The decoder predicts the full hybrid space, and ``pred_norm``/``target_norm``/``ref_norm`` are hybrid
(normalised); ``pred`` is mapped back to k-space exactly. The loss keeps its form (per-line MSE over (real/imag,
readout), weighted per line): with ``norm="scale"`` it equals the k-space loss exactly (Parseval per line); with
``asinh`` the compression acts on hybrid values, so ``val_mse`` is comparable across tokenizers only through its
ratio to the zero-filled and view-sharing baselines, which are computed in the same space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from ..constants import LAX_VIEWS
from ..presets import DATA_PRESETS, MODEL_PRESETS
from .pos_embed import position_code
from .tokenizers import (
    ImageTokenizer,
    KspaceHybridTokenizer,
    KspaceLineTokenizer,
    KspacePatchTokenizer,
    check_real,
    check_shape,
    from_hybrid,
    patchify,
    to_hybrid,
    unpatchify,
)
from ..view_sharing import view_share
from .transformer import TransformerEncoder, init_vit_weights

__all__ = [
    "MODEL_PRESETS",
    "ImageMAE",
    "KspaceMAE",
    "apply_norm",
    "build_image_mae",
    "build_kspace_mae",
    "image_profiles",
    "invariance_term",
    "normalise_sampled",
    "profile_term",
    "pool_tokens",
]


_POOLS = ("cls", "mean", "view_time")


def _check_finite(name: str, x: torch.Tensor) -> None:
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{name}: contains NaN values")


def _token_view_weight(view_valid: torch.Tensor | None, batch: int, grid: tuple, like: torch.Tensor) -> torch.Tensor:
    """(B, N) per-token weight from ``view_valid`` (B, S) for tokens ordered (S, T', H', W') (1 when None)."""
    if view_valid is None:
        return like.new_ones(())
    if tuple(view_valid.shape) != (batch, grid[0]):
        raise ValueError(f"view_valid: expected (B, S) = {(batch, grid[0])}, got {tuple(view_valid.shape)}")
    return view_valid.to(like.dtype).repeat_interleave(math.prod(grid[1:]), dim=1)


def pool_tokens(
    tokens: torch.Tensor, pool: str, valid: torch.Tensor | None = None, cells: Sequence[int] | None = None
) -> torch.Tensor:
    """tokens (B, 1+N, D), class token first → pooled features.

    ``"cls"``: the class token (B, D). ``"mean"``: the mean of the valid other tokens (B, D). ``"view_time"``: the mean
    of the valid tokens of each (view, time step) cell, concatenated in (view, time) order (B, S·T'·D); it needs
    ``cells`` = (S, T'), the leading axes of a token grid with N = S·T'·(tokens per cell), so what differs between
    views and cardiac phases (ED against ES for an ejection fraction) is not averaged away.
    """
    if pool == "cls":
        return tokens[:, 0]
    rest = tokens[:, 1:]
    if pool == "view_time":
        if cells is None:
            raise ValueError("pool 'view_time' needs tokens on a (view, time, ...) grid (patch tokens), got none")
        n_cells = math.prod(cells)
        if rest.shape[1] % n_cells:
            raise ValueError(f"pool 'view_time': {rest.shape[1]} tokens do not split into {tuple(cells)} cells")
        rest = rest.reshape(rest.shape[0], n_cells, -1, rest.shape[-1])  # (B, cells, tokens per cell, D)
        valid = None if valid is None else valid.reshape(valid.shape[0], n_cells, -1)
        dim = 2
    else:
        dim = 1
    if valid is None:
        pooled = rest.mean(dim)
    else:
        w = valid.to(rest.dtype)[..., None]
        pooled = (rest * w).sum(dim) / w.sum(dim).clamp_min(1.0)
    return pooled.flatten(1)


def apply_norm(k: torch.Tensor, scale: torch.Tensor, norm: str = "asinh", alpha: float = 0.05) -> torch.Tensor:
    """k (B, C, S, T, H, W) in original units → normalised with per-subject ``scale`` (B,) (module docstring):
    ``asinh(k / (alpha·scale)) / asinh(1/alpha)`` (``norm="asinh"``) or ``k / scale`` (``norm="scale"``)."""
    s = scale.view(-1, 1, 1, 1, 1, 1)
    if norm == "scale":
        return k / s
    return torch.asinh(k / (alpha * s)) / math.asinh(1.0 / alpha)


def _zero_filled_rms(kspace: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (zero-filled k-space (``torch.where``), scale (B,) = RMS of the sampled real/imag values)."""
    mask = mask if mask.dtype == torch.bool else mask > 0
    ks = torch.where(mask[:, None, ..., None], kspace, torch.zeros((), dtype=kspace.dtype, device=kspace.device))
    count = mask.flatten(1).sum(1).to(kspace.dtype) * (2 * kspace.shape[-1])
    scale = (ks.square().flatten(1).sum(1) / count.clamp_min(1.0)).sqrt().clamp_min(1e-12)
    return ks, scale


def normalise_sampled(
    kspace: torch.Tensor, mask: torch.Tensor, norm: str = "asinh", alpha: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-filled, normalised k-space from SAMPLED values only (no leakage; module docstring).

    kspace (B, 2, S, T, H, W) real/imag, mask (B, S, T, H) (bool, or > 0 = sampled) → (y (B, 2, S, T, H, W),
    zero on unsampled lines (``torch.where``, so even inf/NaN there cannot propagate), scale (B,) = the RMS of the
    sampled real/imag values). Shared by :class:`KspaceMAE` and the k-space ResNet baseline.
    """
    ks, scale = _zero_filled_rms(kspace, mask)
    return apply_norm(ks, scale, norm, alpha), scale


def invariance_term(za: torch.Tensor, zb: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mask/phase-draw invariance of pooled features za, zb (B, D) of the same B subjects under two draws.

    ``mean over features d of (1 - corr_d)``, ``corr_d`` the correlation across the batch of feature d between the
    draws, ``cov / sqrt((var_a + eps)(var_b + eps))`` (population moments): 0 when both draws give the same features
    (up to eps/var), 1 for unrelated ones, at most 2. The standardisation is the variance floor: a constant
    (collapsed) feature has correlation 0 and scores 1, so collapsing cannot lower the term; only agreeing on what
    differs between subjects can (the Barlow Twins diagonal; what ``benchmarks/mask_invariance.py`` scores:
    retrieval of the same subject after standardising each feature). Needs B >= 2 (returns 0 for B = 1).
    """
    if za.shape != zb.shape or za.ndim != 2:
        raise ValueError(f"invariance_term: expected two (B, D) tensors of one shape, got {tuple(za.shape)}, "
                         f"{tuple(zb.shape)}")  # fmt: skip
    if za.shape[0] < 2:
        return za.sum() * 0.0
    a, b = za.float() - za.float().mean(0), zb.float() - zb.float().mean(0)
    corr = (a * b).mean(0) / ((a.square().mean(0) + eps) * (b.square().mean(0) + eps)).sqrt()
    return (1.0 - corr).mean()


def image_profiles(kspace_full: torch.Tensor, cells: Sequence[int], bins: int) -> torch.Tensor:
    """Phase-free descriptors of each (view, time step) cell, from FULLY-SAMPLED k-space only (no labels).

    kspace_full (B, 2, S, T, H, W) real/imag → (B, S, T', 2·bins): the magnitude image |ifft2c| summed along y (its
    x profile, W values) and along x (its y profile, H values), each averaged into ``bins`` bins, then averaged over
    the T/T' frames of each time step (``cells`` = (S, T')). Where the heart is, and how large, per view and phase.
    """
    from ..transforms.fft import ifft2c

    b, _, s, t, h, w = kspace_full.shape
    img = ifft2c(torch.complex(kspace_full[:, 0].float(), kspace_full[:, 1].float())).abs()  # (B, S, T, H, W)
    prof = [nn.functional.adaptive_avg_pool1d(img.sum(d).reshape(b * s * t, 1, -1), bins) for d in (-2, -1)]
    prof = torch.cat(prof, dim=-1).reshape(b, s, cells[1], t // cells[1], 2 * bins)
    return prof.mean(3)


def profile_term(cell_features: torch.Tensor, profiles: torch.Tensor, view_valid: torch.Tensor | None = None,
                 eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """MSE between the first 2·bins channels of each cell's pooled feature and the profiles standardised over the
    batch: cell_features (B, S, T', D), profiles (B, S, T', 2·bins), view_valid (B, S) (a missing view counts not).

    No head between them: the pooled features themselves must hold the profiles linearly, which is what a linear
    probe (and Stage II, which pools the same cells) reads. Standardising over the batch keeps what differs between
    subjects. Needs B >= 2 (returns 0 for B = 1)."""
    if profiles.shape[0] < 2:
        return cell_features.sum() * 0.0
    z = (profiles - profiles.mean(0)) / (profiles.std(0, unbiased=False) + eps)
    err = (cell_features[..., : z.shape[-1]].float() - z).square().mean(-1)  # (B, S, T')
    w = torch.ones_like(err) if view_valid is None else view_valid.to(err.dtype)[:, :, None].expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def _check_pool(pool: str) -> str:
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    return pool


class _MAEBase(nn.Module):
    """Encoder (with class token) + decoder-width projection + mask token + decoder, shared by both MAEs."""

    def _build(self, dim, depth, heads, dec_dim, dec_depth, dec_heads, mlp_ratio, grad_checkpoint, pool):
        self.pool = _check_pool(pool)
        self.dim = dim  # token width, exposed by every encoder as ``.dim``
        self.encoder = TransformerEncoder(dim, depth, heads, mlp_ratio, cls_token=True, grad_checkpoint=grad_checkpoint)
        self.dec_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02)
        self.decoder = TransformerEncoder(dec_dim, dec_depth, dec_heads, mlp_ratio, grad_checkpoint=grad_checkpoint)

    _DECODER_PARTS = ("dec_embed", "mask_token", "decoder", "head", "dec_merge", "profile_head")

    @property
    def view_time_cells(self) -> tuple[int, int] | None:
        """(S, T'): the (view, time step) cells of the token grid for ``"view_time"`` pooling; None for line tokens,
        which are not on a grid."""
        grid = self.tokenizer.grid
        return (grid[0], grid[1]) if len(grid) == 4 else None

    def pool_tokens(self, tokens: torch.Tensor, pool: str, valid: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`pool_tokens` with this encoder's token grid."""
        return pool_tokens(tokens, pool, valid, self.view_time_cells)

    def drop_decoder(self) -> "_MAEBase":
        """Delete the decoder (Stages II/III use only ``encode``); returns self.

        Unused parameters would otherwise make DDP fail, and they waste memory. ``forward`` no longer works.
        """
        for name in self._DECODER_PARTS:
            if hasattr(self, name):
                delattr(self, name)
        self.decoder_dropped = True
        return self

    def _require_decoder(self) -> None:
        if getattr(self, "decoder_dropped", False):
            raise RuntimeError(f"{type(self).__name__}: the decoder was dropped; only encode() is available")

    def _decode(self, enc: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Decode [class token of ``enc`` (B, 1+n, dim), ``hidden`` (B, L, dec_dim)] → (B, L, dec_dim)."""
        return self.decoder(torch.cat([self.dec_embed(enc[:, :1]), hidden], dim=1))[:, 1:]


class ImageMAE(_MAEBase):
    """Masked autoencoder on multi-view cine images (ViTa lineage).

    Args:
        n_views, n_lax, n_frames, size, patch, dim: see :class:`ImageTokenizer`.
        depth, heads: encoder. dec_dim, dec_depth, dec_heads: decoder.
        mask_ratio: fraction of patches hidden per sample; exactly ``floor(mask_ratio·N + 0.5)`` (round half up),
            clipped so that at least one patch stays visible.
        pool: ``"cls"``, ``"mean"`` or ``"view_time"`` for :meth:`encode` (:func:`pool_tokens`). grad_checkpoint:
            checkpoint every block.

    ``forward(image (B,S,T,H,W), generator=None) -> {"pred", "target"}: (B, N, P) pixel patches (P = pt·ph·pw),
    "weight": (B, N) 1.0 on masked patches}``.
    """

    def __init__(
        self,
        n_views: int,
        n_lax: int,
        n_frames: int,
        size,
        patch: Sequence[int],
        dim: int,
        depth: int,
        heads: int,
        dec_dim: int,
        dec_depth: int,
        dec_heads: int,
        mask_ratio: float = 0.7,
        pool: str = "cls",
        mlp_ratio: float = 4.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.tokenizer = ImageTokenizer(n_views, n_lax, n_frames, size, patch, dim)
        self.patch, self.grid = self.tokenizer.patch, self.tokenizer.grid
        n = self.tokenizer.num_tokens
        self.num_masked = min(int(math.floor(mask_ratio * n + 0.5)), n - 1)
        self._build(dim, depth, heads, dec_dim, dec_depth, dec_heads, mlp_ratio, grad_checkpoint, pool)
        self.register_buffer("dec_pos", position_code(self.grid, dec_dim, n_lax), persistent=False)
        self.head = nn.Linear(dec_dim, math.prod(self.patch))
        init_vit_weights(self.dec_embed)
        init_vit_weights(self.head)

    def random_masking(self, batch: int, device, generator: torch.Generator | None = None):
        """→ (keep (B, N - num_masked) long indices of visible patches, masked (B, N) bool)."""
        n = self.tokenizer.num_tokens
        noise = torch.rand(batch, n, device=device, generator=generator)
        keep = torch.argsort(noise, dim=1)[:, : n - self.num_masked]
        masked = torch.ones(batch, n, dtype=torch.bool, device=device).scatter(1, keep, False)
        return keep, masked

    def forward(self, image: torch.Tensor, view_valid: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """In eval mode without a ``generator`` the masks come from a fixed seed, so validation is repeatable.
        ``view_valid`` (B, S): 0 for a view missing from the subject (loader ``missing_views="invalid"``); its patches
        get weight 0, so they count in neither the loss nor the metrics."""
        self._require_decoder()
        if generator is None and not self.training:
            generator = torch.Generator(device=image.device).manual_seed(0)
        tokens = self.tokenizer(image)  # validates type and shape
        _check_finite("image", image)
        b, _, d = tokens.shape
        keep, masked = self.random_masking(b, image.device, generator)
        enc = self.encoder(tokens.gather(1, keep[..., None].expand(-1, -1, d)))
        vis = self.dec_embed(enc[:, 1:])
        hidden = self.mask_token.expand(b, self.tokenizer.num_tokens, -1).scatter(
            1, keep[..., None].expand(-1, -1, vis.shape[-1]), vis
        )
        pred = self.head(self._decode(enc, hidden + self.dec_pos))
        weight = masked.to(pred.dtype) * _token_view_weight(view_valid, b, self.grid, pred)
        return {"pred": pred, "target": patchify(image[:, None], self.patch), "weight": weight}

    @staticmethod
    def loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error over the pixels of masked patches."""
        per_patch = (out["pred"] - out["target"]).square().mean(-1)
        w = out["weight"]
        return (per_patch * w).sum() / w.sum().clamp_min(1.0)

    def to_image(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, P) patch values → (B, S, T, H, W)."""
        return unpatchify(patches, self.patch, self.grid)[:, 0]

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """No masking: image (B,S,T,H,W) → (tokens (B, 1+N, dim) class token first, pooled (B, dim))."""
        tokens = self.tokenizer(image)
        _check_finite("image", image)
        out = self.encoder(tokens)
        return out, self.pool_tokens(out, self.pool)


class KspaceMAE(_MAEBase):
    """Masked autoencoder on undersampled k-space; the acceleration mask is the MAE mask.

    Args:
        n_views, n_lax, n_frames: views (LAX first), LAX count, frames.
        n_pe, n_readout: ky lines (axis H) and readout samples (axis W).
        tokenizer: ``"line"`` (one token per sampled (view, t, ky) line), ``"patch"`` (patches of size
            ``patch`` with channels real, imaginary, magnitude and mask; filled as ``reference`` says) or
            ``"hybrid"`` (:class:`KspaceHybridTokenizer`: cells ``patch`` = (pt, ph, px) of hybrid x-ky space
            holding a sampled line; the decoder predicts hybrid space, see the module docstring).
        dim, depth, heads / dec_dim, dec_depth, dec_heads: encoder / decoder.
        sampled_weight: loss weight of sampled lines (unsampled lines weigh 1).
        norm, asinh_alpha: k-space normalisation (see module docstring).
        reference: ``"view_sharing"`` (the decoder predicts a correction to the view-shared k-space of
            :func:`kmtr_monai.view_sharing.view_share`, built from sampled lines only, and patch tokens are cut
            from that view-shared k-space) or ``"none"`` (zero-filled patch tokens; the decoder predicts the
            k-space itself). Line and hybrid tokens hold sampled lines only either way; for them ``reference``
            acts on the decoder alone (hybrid: the view-shared k-space taken to hybrid space).
        pool: ``"cls"``, ``"mean"`` or ``"view_time"`` (patch and hybrid tokens; :func:`pool_tokens`).
            grad_checkpoint: checkpoint every block.
        dec_group: line tokens only, (gt, gh): the decoder runs one token per gt frames × gh ky lines instead of one
            per line (the per-line decoder inputs are concatenated and projected; the head predicts all gt·gh
            lines). (1, 1), the default, is the per-line decoder. Same loss; the decoder sequence is gt·gh× shorter.
        invariance_weight: weight of :func:`invariance_term` between the ``invariance_pool`` features of two
            mask/phase draws of each subject (``kspace_b``, ``mask_b`` in :meth:`forward`), added to the loss in
            training. 0 (default): off, and the second draw is not needed. invariance_pool: pooling for that term
            (None: ``pool``).
        profile_weight: weight of :func:`profile_term` in training: the first 2·``profile_bins`` channels of each
            (view, time step) cell's mean token regress that cell's :func:`image_profiles` from the fully-sampled
            k-space (an auxiliary target from fully-sampled data, no labels; patch or hybrid tokens). 0 (default):
            off. No parameters, so checkpoints load with it on or off.
        profile_head: put a Linear(dim → 2·``profile_bins``) between the cell features and that target, so the term
            can be fitted without the raw channels holding the profiles; a linear probe still reads what it reads.
            A training part: saved in Stage I checkpoints (so Stage II/III must be built with the same value to load
            them) and dropped with the decoder.

    ``forward(kspace (B,2,S,T,H,W), mask (B,S,T,H), kspace_full (B,2,S,T,H,W) | None, view_valid, kspace_b, mask_b)``
    returns ``pred`` (B,2,S,T,H,W) in original units (k-space), ``target`` (= kspace_full), ``weight`` (B,S,T,H),
    ``pred_norm``/``target_norm`` (normalised units; hybrid space for hybrid tokens), ``ref_norm`` (the view-shared
    k-space, normalised: the reference predictor), ``scale`` (B,) the per-subject RMS of sampled values and, with
    the invariance term on and a second draw given in training, ``invariance`` (the term) and ``invariance_loss``
    (weighted; :meth:`loss` adds it); likewise ``profile`` and ``profile_loss``.
    """

    def __init__(
        self,
        n_views: int,
        n_lax: int,
        n_frames: int,
        n_pe: int,
        n_readout: int,
        dim: int,
        depth: int,
        heads: int,
        dec_dim: int,
        dec_depth: int,
        dec_heads: int,
        tokenizer: str = "line",
        patch: Sequence[int] = (2, 8, 8),
        sampled_weight: float = 0.0,
        norm: str = "asinh",
        asinh_alpha: float = 0.05,
        pool: str = "cls",
        mlp_ratio: float = 4.0,
        grad_checkpoint: bool = False,
        reference: str = "view_sharing",
        dec_group: Sequence[int] = (1, 1),
        invariance_weight: float = 0.0,
        invariance_pool: str | None = None,
        profile_weight: float = 0.0,
        profile_bins: int = 8,
        profile_head: bool = False,
    ) -> None:
        super().__init__()
        if reference not in ("view_sharing", "none"):
            raise ValueError(f"reference must be 'view_sharing' or 'none', got {reference!r}")
        self.reference = reference
        if tokenizer not in ("line", "patch", "hybrid"):
            raise ValueError(f"tokenizer must be 'line', 'patch' or 'hybrid', got {tokenizer!r}")
        self.dec_group = tuple(int(v) for v in dec_group)
        if len(self.dec_group) != 2 or min(self.dec_group) < 1:
            raise ValueError(f"dec_group must be 2 positive ints (gt, gh), got {dec_group}")
        if self.dec_group != (1, 1) and (tokenizer != "line" or n_frames % self.dec_group[0] or n_pe % self.dec_group[1]):
            raise ValueError(f"dec_group {self.dec_group} needs tokenizer='line' and to divide (n_frames, n_pe) = "
                             f"({n_frames}, {n_pe}); got tokenizer={tokenizer!r}")  # fmt: skip
        if invariance_weight < 0:
            raise ValueError(f"invariance_weight must be >= 0, got {invariance_weight}")
        self.invariance_weight = float(invariance_weight)
        self.invariance_pool = _check_pool(invariance_pool) if invariance_pool is not None else _check_pool(pool)
        if profile_weight < 0 or profile_bins < 1 or (profile_weight > 0 and 2 * profile_bins > dim):
            raise ValueError(f"need profile_weight >= 0 and 1 <= 2 * profile_bins <= dim ({dim}), got "
                             f"{profile_weight}, {profile_bins}")  # fmt: skip
        self.profile_weight, self.profile_bins = float(profile_weight), int(profile_bins)
        if norm not in ("asinh", "scale"):
            raise ValueError(f"norm must be 'asinh' or 'scale', got {norm!r}")
        if sampled_weight < 0 or asinh_alpha <= 0:
            raise ValueError(f"need sampled_weight >= 0 and asinh_alpha > 0, got {sampled_weight}, {asinh_alpha}")
        self.kind, self.norm, self.alpha, self.sampled_weight = tokenizer, norm, asinh_alpha, sampled_weight
        self.shape = (2, n_views, n_frames, n_pe, n_readout)
        self._build(dim, depth, heads, dec_dim, dec_depth, dec_heads, mlp_ratio, grad_checkpoint, pool)
        if tokenizer == "line":
            self.tokenizer = KspaceLineTokenizer(n_views, n_lax, n_frames, n_pe, n_readout, dim)
            grid, out_dim = self.tokenizer.grid, 2 * n_readout
            if self.dec_group != (1, 1):  # per-line decoder inputs (B, S·T·H, dec_dim) → one per group of lines
                gt, gh = self.dec_group
                self.dec_merge = nn.Linear(gt * gh * dec_dim, dec_dim)
                self.register_buffer("dec_line_pos", position_code(grid, dec_dim, n_lax), persistent=False)
                grid, out_dim = (n_views, n_frames // gt, n_pe // gh), gt * gh * 2 * n_readout
                init_vit_weights(self.dec_merge)
        elif tokenizer == "hybrid":
            self.tokenizer = KspaceHybridTokenizer(n_views, n_lax, n_frames, n_pe, n_readout, patch, dim)
            grid, out_dim = self.tokenizer.grid, 2 * math.prod(self.tokenizer.patch)
        else:
            fill = "view_sharing" if reference == "view_sharing" else "zero"
            self.tokenizer = KspacePatchTokenizer(n_views, n_lax, n_frames, n_pe, n_readout, patch, dim, fill=fill)
            grid, out_dim = self.tokenizer.grid, 2 * math.prod(self.tokenizer.patch)
        self.register_buffer("dec_pos", position_code(grid, dec_dim, n_lax), persistent=False)
        self.head = nn.Linear(dec_dim, out_dim)
        init_vit_weights(self.dec_embed)
        init_vit_weights(self.head)
        if reference == "view_sharing":  # start exactly at the reference: the decoder learns the correction
            nn.init.zeros_(self.head.weight)
        if profile_head:
            self.profile_head = nn.Linear(dim, 2 * self.profile_bins)
            init_vit_weights(self.profile_head)
        if ("view_time" in (pool, self.invariance_pool) or self.profile_weight > 0) and self.view_time_cells is None:
            raise ValueError("pool 'view_time' and profile_weight need patch or hybrid tokens; line tokens are not on "
                             "a (view, time) grid")  # fmt: skip

    # ----------------------------------------------------------------------------------------- input / scaling
    def _check_inputs(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_real("kspace", kspace)
        check_shape("kspace", kspace, self.shape, "B, 2, S, T, H, W")
        if not isinstance(mask, torch.Tensor) or mask.is_complex():
            raise TypeError(f"mask: expected a real or bool torch.Tensor, got {getattr(mask, 'dtype', type(mask))}")
        check_shape("mask", mask, self.shape[1:4], "B, S, T, H")
        if mask.shape[0] != kspace.shape[0]:
            raise ValueError(f"mask: batch size {mask.shape[0]} != kspace batch size {kspace.shape[0]}")
        m = mask > 0 if mask.dtype != torch.bool else mask
        _check_finite("kspace (sampled lines)", torch.where(m[:, None, ..., None], kspace, 0.0))
        return m

    def normalise(self, kspace: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-filled, normalised k-space from sampled values only → (y (B,2,S,T,H,W), scale (B,) = sampled RMS)."""
        return normalise_sampled(kspace, mask, self.norm, self.alpha)

    def apply_norm(self, k: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Original units → normalised, with per-subject ``scale`` (B,)."""
        return apply_norm(k, scale, self.norm, self.alpha)

    def invert_norm(self, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`apply_norm`."""
        s = scale.view(-1, 1, 1, 1, 1, 1)
        if self.norm == "scale":
            return y * s
        return torch.sinh(y * math.asinh(1.0 / self.alpha)) * (self.alpha * s)

    def magnitude(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 2, ...) → normalised |k| (B, 1, ...): the magnitude in original units, normalised the same
        way (phase- and shift-invariant; the scale cancels, so no per-subject value is needed)."""
        unit = torch.ones(y.shape[0], dtype=y.dtype, device=y.device)
        k = self.invert_norm(y, unit)
        return self.apply_norm(torch.hypot(k[:, :1], k[:, 1:2]), unit)

    # ------------------------------------------------------------------------------------------------- model
    def _encode(self, y: torch.Tensor, mask: torch.Tensor, return_hidden: bool = False):
        """→ (encoder tokens (B, 1+n, dim), valid (B, n) bool, line index (B, n) or None[, block outputs]).

        Hybrid tokens: the encoder runs on the gathered cells only; its outputs are then put back on the full grid
        (n = all cells, zeros where a cell holds no sampled line, ``valid`` False there), so pooling, the decoder
        and the dense decoders see a (view, t, ky, x) grid like patch tokens."""
        if self.kind == "line":
            lt = self.tokenizer(y, mask)
            tokens, valid, index = lt.tokens, lt.valid, lt.index
        elif self.kind == "hybrid":
            ht = self.tokenizer(torch.cat([y, self.magnitude(y)], dim=1), mask)
            if return_hidden:
                enc, hidden = self.encoder(ht.tokens, ht.valid, return_hidden=True)
                hidden = tuple(self._to_grid(h, ht.index, ht.valid) for h in hidden)
                return self._to_grid(enc, ht.index, ht.valid), ht.cells, None, hidden
            return self._to_grid(self.encoder(ht.tokens, ht.valid), ht.index, ht.valid), ht.cells, None
        else:
            tokens, valid = self.tokenizer(torch.cat([y, self.magnitude(y)], dim=1), mask)
            index = None
        if return_hidden:
            enc, hidden = self.encoder(tokens, valid, return_hidden=True)
            return enc, valid, index, hidden
        return self.encoder(tokens, valid), valid, index

    def _to_grid(self, enc: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Gathered hybrid tokens (B, 1+M, D) [class token first] → (B, 1+N, D) on the full grid, zeros elsewhere."""
        b, _, d = enc.shape
        n = self.tokenizer.num_tokens
        slot = torch.where(valid, index + 1, n + 1)  # padding goes to a spare slot that is dropped
        out = enc.new_zeros(b, n + 2, d).scatter(1, slot[..., None].expand(-1, -1, d), enc[:, 1:])
        return torch.cat([enc[:, :1], out[:, 1 : n + 1]], dim=1)

    def _hybrid_norm(self, k: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """k-space (B, 2, S, T, H, W), original units → normalised (hybrid space for hybrid tokens)."""
        return self.apply_norm(to_hybrid(k) if self.kind == "hybrid" else k, scale)

    def _normalise_input(self, kspace: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-filled, normalised model input from sampled values only → (y, scale); hybrid space for hybrid tokens
        (the same scale: the orthonormal 1-D FFT keeps each line's energy)."""
        if self.kind != "hybrid":
            return self.normalise(kspace, m)
        ks, scale = _zero_filled_rms(kspace, m)
        return self._hybrid_norm(ks, scale), scale

    def _pooled_draw(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``invariance_pool`` features (B, D') of one draw."""
        m = self._check_inputs(kspace, mask)
        enc, valid, _ = self._encode(self._normalise_input(kspace, m)[0], m)
        return self.pool_tokens(enc, self.invariance_pool, valid)

    def forward(
        self, kspace: torch.Tensor, mask: torch.Tensor, kspace_full: torch.Tensor | None = None,
        view_valid: torch.Tensor | None = None, kspace_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        self._require_decoder()
        m = self._check_inputs(kspace, mask)
        if kspace_full is not None:
            check_real("kspace_full", kspace_full)
            check_shape("kspace_full", kspace_full, self.shape, "B, 2, S, T, H, W")
            _check_finite("kspace_full", kspace_full)
        y, scale = self._normalise_input(kspace, m)
        enc, valid, index = self._encode(y, m)
        vis = self.dec_embed(enc[:, 1:])
        b, dd = vis.shape[0], vis.shape[-1]
        if self.kind == "line":
            n_lines = self.tokenizer.num_lines  # padding goes to a spare slot n_lines that is dropped afterwards
            slot = torch.where(valid, index, n_lines)
            hidden = self.mask_token.expand(b, n_lines + 1, dd).scatter(1, slot[..., None].expand(-1, -1, dd), vis)
            s, t, h = self.tokenizer.grid
            if self.dec_group == (1, 1):
                pred_norm = self.head(self._decode(enc, hidden[:, :n_lines] + self.dec_pos))
                pred_norm = rearrange(pred_norm, "b (s t h) (c w) -> b c s t h w", s=s, t=t, h=h, c=2)
            else:
                gt, gh = self.dec_group
                lines = rearrange(hidden[:, :n_lines] + self.dec_line_pos, "b (s t gt h gh) d -> b (s t h) (gt gh d)",
                                  s=s, t=t // gt, gt=gt, h=h // gh, gh=gh)  # fmt: skip
                pred_norm = self.head(self._decode(enc, self.dec_merge(lines) + self.dec_pos))
                pred_norm = rearrange(pred_norm, "b (s t h) (gt gh c w) -> b c s (t gt) (h gh) w",
                                      s=s, t=t // gt, h=h // gh, gt=gt, gh=gh, c=2)  # fmt: skip
        else:
            hidden = torch.where(valid[..., None], vis, self.mask_token) + self.dec_pos
            pred_norm = unpatchify(self.head(self._decode(enc, hidden)), self.tokenizer.patch, self.tokenizer.grid)
        ref_norm = self._hybrid_norm(view_share(kspace, m), scale)
        if self.reference == "view_sharing":
            pred_norm = pred_norm + ref_norm
        weight = torch.where(m, self.sampled_weight, 1.0).to(pred_norm.dtype)
        if view_valid is not None:  # (B, S): a missing view's lines count in neither the loss nor the metrics
            check_shape("view_valid", view_valid, self.shape[1:2], "B, S")
            weight = weight * view_valid.to(weight.dtype)[:, :, None, None]
        pred = self.invert_norm(pred_norm, scale)
        out = {"pred": from_hybrid(pred) if self.kind == "hybrid" else pred, "pred_norm": pred_norm,
               "ref_norm": ref_norm, "weight": weight, "scale": scale}  # fmt: skip
        if kspace_full is not None:
            out["target"] = kspace_full
            out["target_norm"] = self._hybrid_norm(kspace_full, scale)
        if self.invariance_weight > 0 and self.training:
            if kspace_b is None or mask_b is None:
                raise ValueError("invariance_weight > 0 needs a second mask/phase draw of each subject in training: "
                                 "forward(..., kspace_b=, mask_b=) (bundle: the kspace-mae 'second_draw' transform)")
            za = self.pool_tokens(enc, self.invariance_pool, valid)
            out["invariance"] = invariance_term(za, self._pooled_draw(kspace_b, mask_b))
            out["invariance_loss"] = self.invariance_weight * out["invariance"]
        if self.profile_weight > 0 and self.training and kspace_full is not None:
            cells = self.view_time_cells
            feats = self.pool_tokens(enc, "view_time", valid).reshape(b, *cells, -1)
            if hasattr(self, "profile_head"):
                feats = self.profile_head(feats)
            out["profile"] = profile_term(feats, image_profiles(kspace_full, cells, self.profile_bins), view_valid)
            out["profile_loss"] = self.profile_weight * out["profile"]
        return out

    @staticmethod
    def loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted MSE in normalised units: per-line mean over (real/imag, readout), weighted by ``weight``; plus
        ``invariance_loss`` and ``profile_loss`` when the output has them (training with their weights > 0)."""
        if "target_norm" not in out:
            raise ValueError("loss: output has no 'target_norm'; call forward with kspace_full")
        per_line = (out["pred_norm"] - out["target_norm"]).square().mean(dim=(1, 5))
        w = out["weight"]
        mse = (per_line * w).sum() / w.sum().clamp_min(1e-12)
        return mse + sum(out[k] for k in ("invariance_loss", "profile_loss") if k in out)

    def encode(self, kspace: torch.Tensor, mask: torch.Tensor, return_valid: bool = False,
               return_hidden: bool = False):  # fmt: skip
        """kspace (B,2,S,T,H,W), mask (B,S,T,H) → (tokens (B, 1+n, dim), pooled (B, dim)[, valid (B, n) bool]
        [, hidden]).

        n is the number of sampled lines (line tokenizer, padded to the batch maximum) or of patches/cells (patch
        and hybrid tokenizers; hybrid cells without a sampled line are zeros); ``valid`` marks real tokens (mean pooling uses only those). ``return_hidden`` appends the tuple
        of every encoder block's output (B, 1+n, dim), before the final norm (skips for a UNETR-style decoder).
        """
        m = self._check_inputs(kspace, mask)
        y, _ = self._normalise_input(kspace, m)
        enc, valid, _, *hidden = self._encode(y, m, return_hidden)
        pooled = self.pool_tokens(enc, self.pool, valid)
        out = (enc, pooled, valid) if return_valid else (enc, pooled)
        return (*out, hidden[0]) if return_hidden else out


# ------------------------------------------------------------------------------------------------------ builders
def _preset(preset: str) -> tuple[dict, dict, int]:
    if preset not in MODEL_PRESETS or preset not in DATA_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(MODEL_PRESETS)}")
    d = DATA_PRESETS[preset]
    data = dict(n_views=len(LAX_VIEWS) + d["n_sax"], n_lax=len(LAX_VIEWS), n_frames=d["n_frames"])
    return data, dict(MODEL_PRESETS[preset]), d["crop"]


def build_image_mae(preset: str = "tiny", **overrides) -> ImageMAE:
    """ImageMAE with the data sizes of ``DATA_PRESETS[preset]`` and ``MODEL_PRESETS[preset]``; kwargs override."""
    data, model, crop = _preset(preset)
    return ImageMAE(**{**data, "size": crop, **model, **overrides})


def build_kspace_mae(preset: str = "tiny", **overrides) -> KspaceMAE:
    """KspaceMAE with the data sizes of ``DATA_PRESETS[preset]`` and ``MODEL_PRESETS[preset]``; kwargs override."""
    data, model, crop = _preset(preset)
    return KspaceMAE(**{**data, "n_pe": crop, "n_readout": crop, **model, **overrides})
