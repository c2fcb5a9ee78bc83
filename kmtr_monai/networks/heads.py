"""Vector heads of the Stage III tasks on k-space encoder tokens: phenotype regression and disease classification.

Heads read the encoder's tokens (B, 1+N, C), class token first, with N = S·T'·H'·W' patch tokens in (view, time,
h, w) order (DESIGN §4). ``forward(tokens, valid=None)``, ``valid`` (B, N) bool marking real tokens (as returned
by ``KspaceMAE.encode(..., return_valid=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .mae import pool_tokens
from .transformer import Block, init_vit_weights

__all__ = ["HEAD_KINDS", "TemporalMLPHead", "LinearProbeHead", "build_vector_head", "PhenotypeRegressor",
           "DiseaseClassifier"]

HEAD_KINDS = ("temporal", "probe")


def check_tokens(tokens: torch.Tensor, dim: int, n_tokens: int | None = None) -> None:
    """ValueError unless tokens is (B, 1+N, dim) (and N == n_tokens when given)."""
    if tokens.ndim != 3 or tokens.shape[-1] != dim or (n_tokens is not None and tokens.shape[1] != 1 + n_tokens):
        n = "N" if n_tokens is None else str(n_tokens)
        raise ValueError(f"tokens: expected (B, 1+{n}, {dim}) (class token first), got {tuple(tokens.shape)}")


def cell_tokens(tokens: torch.Tensor, valid: torch.Tensor | None, cells: Sequence[int]) -> torch.Tensor:
    """What both vector heads read: tokens (B, 1+N, C) → (B, 1 + S·T', C), the class token followed by the mean
    valid token of each (view, time step) cell in (view, time) order (:func:`pool_tokens` ``"view_time"``)."""
    pooled = pool_tokens(tokens, "view_time", valid, cells).view(tokens.shape[0], -1, tokens.shape[-1])
    return torch.cat([tokens[:, :1], pooled], dim=1)


class TemporalMLPHead(nn.Module):
    """Per-(view, time) cell means + a small transformer mixer over the cells + a 256-wide MLP → (B, out_dim).

    Why not an MLP on the class or mean token: an ejection fraction is a ratio of the ED to the ES volume, and one
    mean over all frames keeps only their sum (DESIGN §12: a mean-pooled ViT learned EDV but not EF). Here:

    1. the valid tokens of each (view, time step) cell are averaged (:func:`pool_tokens` ``"view_time"``), giving
       S·T' cell tokens; the class token is kept as one more cell;
    2. each cell is projected to ``mix_dim``, gets a learned (view, time) embedding, and ``mix_layers`` pre-norm
       transformer blocks (:class:`Block`) let every cell attend to every other frame and view;
    3. the cell outputs are concatenated in (view, time) order (the readout keeps which frame is which, so the MLP
       can form ED/ES comparisons directly) and an MLP ``Linear → GELU → Dropout → Linear`` of width ``hidden``
       gives the output.

    One cell (``n_views = n_time = 1``, an encoder that pools everything itself, e.g. the stacked-frame CNN): there
    is nothing to mix, and the head is the MLP on the class token (step 3 without the mixer and its LayerNorm). Why:
    the LayerNorm removes the scale of the pooled feature vector, which is where a globally pooled CNN carries a
    size; with it the CNN baseline reached validation mean R² 0.34, without it 0.48 (small preset, 700 training
    subjects, 800 steps, BENCHMARKS "Stage III: the CNN baseline").

    ``input_norm``: standardise each feature of the cell tokens over the batch before step 2 (``BatchNorm1d``
    without affine parameters, running statistics at evaluation; the linear-probe recipe of the MAE paper). Why:
    pretrained MAE features vary little between subjects around a large common offset (image MAE at the small
    preset: across-subject std 0.32 against a mean magnitude of 0.76), and on raw features the head fits that
    small variation very slowly (``BENCHMARKS.md``, "Stage III fine-tuning schedules"). Under DDP on CUDA the
    multi-GPU config makes it a ``SyncBatchNorm``; on CPU (gloo) each rank uses its own batch statistics.

    Args:
        dim: encoder token width C. n_views, n_time: S and T' of the token grid (``encoder.view_time_cells``).
        out_dim: outputs (12 phenotypes, 3 disease logits, or any subset). hidden: MLP width (256 in the paper).
        mix_dim, mix_layers, heads: mixer width, depth (>= 1) and attention heads. dropout: in the MLP.
        input_norm: batch-standardise the cell features first (above).

    ``forward(tokens (B, 1+N, C), valid (B, N) bool | None) -> (B, out_dim)``.
    """

    def __init__(self, dim: int, n_views: int, n_time: int, out_dim: int, hidden: int = 256, mix_dim: int = 64,
                 mix_layers: int = 1, heads: int = 4, dropout: float = 0.0,
                 input_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        for name, v in (("dim", dim), ("n_views", n_views), ("n_time", n_time), ("out_dim", out_dim),
                        ("hidden", hidden), ("mix_dim", mix_dim), ("mix_layers", mix_layers)):  # fmt: skip
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TemporalMLPHead {name} must be a positive int, got {v!r}")
        self.dim, self.cells, self.out_dim = dim, (n_views, n_time), out_dim
        n_cells = 1 + n_views * n_time
        self.input_norm = nn.BatchNorm1d(dim, affine=False) if input_norm else None
        self.mixer, mlp_in = None, dim  # one cell: the MLP on the class token (docstring)
        if n_views * n_time > 1:
            self.in_proj = nn.Linear(dim, mix_dim)
            self.cell_embed = nn.Parameter(torch.randn(1, n_cells, mix_dim) * 0.02)
            self.mixer = nn.ModuleList(Block(mix_dim, heads) for _ in range(mix_layers))
            self.norm = nn.LayerNorm(mix_dim)
            mlp_in = n_cells * mix_dim
        self.mlp = nn.Sequential(nn.Linear(mlp_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.apply(init_vit_weights)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = cell_tokens(tokens, valid, self.cells)  # (B, 1 + S·T', C)
        if self.input_norm is not None:
            x = self.input_norm(x.transpose(1, 2)).transpose(1, 2)
        if self.mixer is None:
            return self.mlp(x[:, 0])
        x = self.in_proj(x) + self.cell_embed
        for blk in self.mixer:
            x = blk(x)
        return self.mlp(self.norm(x).flatten(1))


class LinearProbeHead(nn.Module):
    """A linear read-out of the class token and the per-(view, time) cell means, started at the linear probe's fit.

    Why: on a frozen encoder, a :class:`TemporalMLPHead` trained by SGD within the small preset's Stage III budget
    (150 steps of 8) reached validation R² 0.07 where a closed-form ridge on the same features reads 0.44, and a
    linear head by SGD only 0.14 (image MAE, 21 × 192 features, 700 subjects; ``BENCHMARKS.md``, "Frozen encoders:
    the probe-initialised head"). This head is the probe's linear model inside the network, the LP part of LP-FT
    (Kumar et al., ICLR 2022): :class:`kmtr_monai.engines.probe_init.ProbeHeadInit` fits it in closed form on the
    training split when training starts (strength chosen on validation, the protocol of
    :func:`kmtr_monai.linear_eval.fit_linear_readout`), and SGD continues from there.

    Features: ``(B, (1 + S·T')·C)``, the class token then the cells in (view, time) order
    (:func:`pool_tokens` ``"view_time"``), standardised with the fitted training mean and scale (buffers saved with
    the weights; 0 and 1, and ``fitted`` False, until :meth:`set_readout`).

    ``forward(tokens (B, 1+N, C), valid (B, N) bool | None) -> (B, out_dim)``.
    """

    def __init__(self, dim: int, n_views: int, n_time: int, out_dim: int) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("n_views", n_views), ("n_time", n_time), ("out_dim", out_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LinearProbeHead {name} must be a positive int, got {v!r}")
        self.dim, self.cells, self.out_dim = dim, (n_views, n_time), out_dim
        n_features = (1 + n_views * n_time) * dim
        self.linear = nn.Linear(n_features, out_dim)
        nn.init.zeros_(self.linear.weight)  # the mean predictor until fitted
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.register_buffer("fitted", torch.tensor(False))

    def features(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, 1+N, C) → raw read-out features (B, (1 + S·T')·C)."""
        check_tokens(tokens, self.dim)
        return cell_tokens(tokens, valid, self.cells).flatten(1)

    def set_readout(self, mean, scale, weight, bias) -> None:
        """Install a fitted linear model: feature ``mean`` and ``scale`` (F,), ``weight`` (out_dim, F) on the
        standardised features, ``bias`` (out_dim,); marks the head ``fitted``."""
        values = [torch.as_tensor(v, dtype=torch.float32) for v in (mean, scale, weight, bias)]
        shapes = [tuple(b.shape) for b in (self.feature_mean, self.feature_scale, self.linear.weight, self.linear.bias)]
        for name, v, shape in zip(("mean", "scale", "weight", "bias"), values, shapes):
            if tuple(v.shape) != shape or not bool(torch.isfinite(v).all()):
                raise ValueError(f"LinearProbeHead.set_readout: {name} must be finite with shape {shape}, got "
                                 f"{tuple(v.shape)}")  # fmt: skip
        if not bool((values[1] > 0).all()):
            raise ValueError("LinearProbeHead.set_readout: scale must be > 0")
        with torch.no_grad():
            for target, v in zip((self.feature_mean, self.feature_scale, self.linear.weight, self.linear.bias), values):
                target.copy_(v)
            self.fitted.fill_(True)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear((self.features(tokens, valid) - self.feature_mean) / self.feature_scale)


def build_vector_head(kind: str, dim: int, cells: Sequence[int], out_dim: int, hidden: int = 256,
                      input_norm: bool = False) -> nn.Module:  # fmt: skip
    """The bundles' ``head_kind`` switch: ``"temporal"`` (:class:`TemporalMLPHead` with ``hidden`` and
    ``input_norm``) or ``"probe"`` (:class:`LinearProbeHead`); ``cells`` = the encoder's (S, T')."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head_kind must be one of {HEAD_KINDS}, got {kind!r}")
    n_views, n_time = (int(c) for c in cells)
    if kind == "probe":
        return LinearProbeHead(dim, n_views, n_time, out_dim)
    return TemporalMLPHead(dim, n_views, n_time, out_dim, hidden=hidden, input_norm=input_norm)


def _head_out_dim(head: nn.Module, expected: int, what: str) -> None:
    out = getattr(head, "out_dim", None)
    if out is not None and out != expected:
        raise ValueError(f"{what}: head.out_dim={out} but {expected} targets were given")


class PhenotypeRegressor(nn.Module):
    """Wraps a head (raw standardised output) → phenotypes in NATIVE units, ``target_mean + target_std · raw``.

    Args:
        head: module ``(tokens, valid) -> (B, K)``, e.g. :class:`TemporalMLPHead` with ``out_dim=K``.
        target_mean, target_std: (K,) training-split statistics (buffers saved with the model).

    Buffers: ``target_mean``, ``target_std`` (K,) and ``interval_halfwidth`` (K,), the split-conformal half-widths
    of the prediction intervals ``pred ± halfwidth`` in native units: NaN until calibrated on validation (set by
    :meth:`set_interval_halfwidth`), then saved and loaded with the weights.

    ``forward(tokens (B, 1+N, C), valid (B, N) | None) -> (B, K)`` native units.
    """

    def __init__(self, head: nn.Module, target_mean: Sequence[float] | torch.Tensor,
                 target_std: Sequence[float] | torch.Tensor) -> None:  # fmt: skip
        super().__init__()
        mean = torch.as_tensor(target_mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(target_std, dtype=torch.float32).flatten()
        if mean.shape != std.shape or mean.numel() == 0:
            raise ValueError(f"target_mean {tuple(mean.shape)} and target_std {tuple(std.shape)}: need the same K > 0")
        if not bool(torch.isfinite(mean).all() & torch.isfinite(std).all() & (std > 0).all()):
            raise ValueError(f"target_mean must be finite and target_std finite and > 0, got {mean.tolist()}, "
                             f"{std.tolist()}")  # fmt: skip
        _head_out_dim(head, mean.numel(), "PhenotypeRegressor")
        self.head = head
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_std", std)
        self.register_buffer("interval_halfwidth", torch.full_like(mean, float("nan")))

    def set_interval_halfwidth(self, halfwidth: Sequence[float] | torch.Tensor) -> None:
        """Store calibrated (K,) half-widths (native units, >= 0)."""
        hw = torch.as_tensor(halfwidth, dtype=torch.float32).flatten()
        if hw.shape != self.interval_halfwidth.shape or not bool((hw >= 0).all()):
            k = self.interval_halfwidth.numel()
            raise ValueError(f"halfwidth: expected (K={k},) values >= 0, got {hw.tolist()}")
        self.interval_halfwidth.copy_(hw)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.target_mean + self.target_std * self.head(tokens, valid)


class DiseaseClassifier(nn.Module):
    """Wraps a head → disease logits (B, K) (K = 3: CAD, high blood pressure, hypertension).

    Buffer ``threshold`` (K,): the probability threshold for a positive label, 0.5 until set to the best-F1 point on
    validation (:meth:`set_threshold`); saved with the weights and applied at test and inference time
    (:meth:`predict_labels`). Train with ``nn.BCEWithLogitsLoss(pos_weight=pos_weight_from_prevalence(...))``.

    ``forward(tokens (B, 1+N, C), valid (B, N) | None) -> (B, K)`` logits.
    """

    def __init__(self, head: nn.Module, n_classes: int = 3) -> None:
        super().__init__()
        _head_out_dim(head, n_classes, "DiseaseClassifier")
        self.head = head
        self.register_buffer("threshold", torch.full((n_classes,), 0.5))

    def set_threshold(self, threshold: Sequence[float] | torch.Tensor) -> None:
        th = torch.as_tensor(threshold, dtype=torch.float32).flatten()
        if th.shape != self.threshold.shape or not bool(((th >= 0) & (th <= 1)).all()):
            raise ValueError(f"threshold: expected (K={self.threshold.numel()},) values in [0, 1], got {th.tolist()}")
        self.threshold.copy_(th)

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, K) → (B, K) 0/1 labels at the stored thresholds."""
        return (torch.sigmoid(logits) >= self.threshold).to(torch.int64)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(tokens, valid)
