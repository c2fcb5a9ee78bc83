"""Stage II network: image and k-space encoders, token pooling and 2-layer projectors to a shared space.

Also the two checkpoint helpers Stage II needs to chain from Stage I: a strict encoder-weight loader with a
readable mismatch report, and an atomic checkpoint writer.

Encoder contract (that of :mod:`kmtr_monai.networks.mae`): ``image_encoder.encode(image)`` and
``kspace_encoder.encode(kspace, mask)`` return ``(tokens, pooled)`` or ``(tokens, pooled, valid)`` with ``tokens``
(B, 1+n, C), class token first, and optional ``valid`` (B, n) bool marking real (non-padding) tokens, e.g. line
tokens whose count differs between subjects. If ``encode`` accepts ``return_valid``, it is called with
``return_valid=True`` so that mean pooling can skip padding. Pooling reuses ``mae.pool_tokens``; ``"view_time"``
pooling reads the (view, time) cells of the token grid from the encoder's ``view_time_cells``.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn

from kmtr_monai.networks.mae import pool_tokens

__all__ = ["LogitScale", "Projector", "DualEncoder"]

POOLINGS = ("cls", "mean", "view_time")


class LogitScale(nn.Module):
    """CLIP's inverse temperature 1/tau, stored as ``log(1/tau)`` and clamped to ``[1/max_temperature, 1/min_temperature]``.

    A learnable temperature is a trainable parameter, so it belongs to the network that DDP wraps (as in CLIP, where
    ``logit_scale`` is a model parameter): a parameter held by the loss outside the DDP module is stepped with each
    rank's local gradient and the ranks drift apart. :class:`DualEncoder` owns one and
    returns it in its output; :class:`kmtr_monai.losses.ClipLoss` takes it as an input.

    Args:
        temperature: tau; the initial value when learnable.
        learnable: learn ``log(1/tau)`` (a parameter; zero gradient at the clamp bounds), else a fixed buffer.
        min_temperature, max_temperature: clamp range (CLIP's 1/100 bound).

    ``forward()`` returns 1/tau as a 0-dim float32 tensor.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False, min_temperature: float = 0.01,
                 max_temperature: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if not 0.0 < min_temperature <= max_temperature:
            raise ValueError(f"need 0 < min_temperature <= max_temperature, got {min_temperature}, {max_temperature}")
        if not min_temperature <= temperature <= max_temperature:
            raise ValueError(f"temperature {temperature} outside [{min_temperature}, {max_temperature}]")
        self._bounds = (math.log(1.0 / max_temperature), math.log(1.0 / min_temperature))
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    @property
    def temperature(self) -> torch.Tensor:
        """Current tau (0-dim tensor, detached)."""
        return 1.0 / self().detach()

    def forward(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(*self._bounds).exp()


class Projector(nn.Module):
    """2-layer MLP projector (Linear -> [BatchNorm] -> GELU -> Linear), (B, in_dim) -> (B, out_dim).

    ``batch_norm`` (SimCLR-style) standardises the hidden features over the batch. Stage I encoders give pooled
    features that barely differ between subjects (pairwise cosine 0.986–1.0 on the tiny preset), and without it the
    CLIP loss sat at exactly log(B) for two epochs. Its statistics are per rank unless the model is converted with
    ``torch.nn.SyncBatchNorm`` (GPU only; ``multi_gpu_train.json`` does so on CUDA), so only the projector without
    batch norm gives a distributed loss identical to the single-process one. MONAI's ``MLPBlock`` cannot change the
    output width, hence this small module.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, dropout: float = 0.0,
                 batch_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Projector {name} must be a positive int, got {v!r}")
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        if not isinstance(hidden_dim, int) or hidden_dim <= 0:
            raise ValueError(f"Projector hidden_dim must be a positive int, got {hidden_dim!r}")
        norm = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), norm, nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _infer_width(encoder: nn.Module, name: str) -> int:
    """Token width from an int attribute hidden_size/embed_dim/width/dim of the encoder or its ``.encoder``."""
    for owner in (encoder, getattr(encoder, "encoder", None)):
        for attr in ("hidden_size", "embed_dim", "width", "dim"):
            v = getattr(owner, attr, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    raise ValueError(
        f"cannot infer the token width of {name} ({type(encoder).__name__}): pass {name.split('_')[0]}_dim "
        "or expose an int attribute hidden_size/embed_dim/width/dim"
    )


def _accepts_return_valid(encoder: nn.Module) -> bool:
    try:
        return "return_valid" in inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):
        return False


class DualEncoder(nn.Module):
    """Image + k-space encoders with projectors to a shared ``embed_dim`` space (Stage II).

    Args:
        image_encoder: module with ``encode(image) -> (tokens, pooled[, padding_mask])``.
        kspace_encoder: module with ``encode(kspace, mask) -> (tokens, pooled[, padding_mask])``.
        embed_dim: projector output width (128 in the paper).
        pooling: ``"cls"`` (token 0), ``"mean"`` (mean of the valid non-class tokens) or ``"view_time"`` (that mean
            per (view, time step) cell, concatenated: width S·T'·C; see ``mae.pool_tokens``).
        freeze_image, freeze_kspace: freeze that encoder (requires_grad False, kept in eval mode, run under
            no_grad); its projector stays trainable.
        image_dim, kspace_dim: token widths; inferred from an int ``hidden_size``/``embed_dim``/``width``/``dim``
            attribute of the encoder or of its ``.encoder`` if None.
        proj_hidden_dim: projector hidden width (default: the encoder's token width).
        proj_batch_norm: batch norm in the projectors' hidden layer (see :class:`Projector`).
        temperature, learnable_temperature: CLIP's temperature, owned here as a :class:`LogitScale`
            (a parameter when learnable) so that DDP, which wraps this module, keeps it identical on every rank.
            For SigLIP (:class:`kmtr_monai.losses.SigLipLoss`) this is t = 1/temperature (the paper's 10: 0.1).
        logit_bias: None (CLIP; no parameter, the checkpoint is unchanged) or the initial value of SigLIP's
            learnable logit bias b (the paper's -10), a 0-dim parameter returned as ``"logit_bias"``.
        cell_align: token-level alignment next to CLIP (needs ``"view_time"`` pooling and the same (S, T') cells in
            both encoders): a linear ``cell_predictor`` maps each k-space (view, time) cell feature to the image
            encoder's feature of the same cell, and the output gains ``cells_kspace`` (B, S·T', C_image), the
            prediction, and ``cells_image`` (B, S·T', C_image), the image cells with gradients stopped (the
            target; :class:`kmtr_monai.losses.CellAlignmentLoss`). Each subject then gives S·T' regression targets
            instead of one contrastive row, and the target is what the image encoder already knows per cell.

    ``forward(image, kspace, mask)`` returns ``{"z_image": (B, embed_dim), "z_kspace": (B, embed_dim),
    "h_kspace": (B, C), "logit_scale": 0-dim 1/tau[, "logit_bias": 0-dim b]}`` (embeddings not normalised; :class:`kmtr_monai.losses.ClipLoss`
    normalises).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        kspace_encoder: nn.Module,
        embed_dim: int = 128,
        pooling: str = "cls",
        freeze_image: bool = False,
        freeze_kspace: bool = False,
        image_dim: int | None = None,
        kspace_dim: int | None = None,
        proj_hidden_dim: int | None = None,
        proj_batch_norm: bool = True,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        cell_align: bool = False,
        logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for name, enc in (("image_encoder", image_encoder), ("kspace_encoder", kspace_encoder)):
            if not callable(getattr(enc, "encode", None)):
                raise TypeError(f"{name} ({type(enc).__name__}) has no encode(...) method")
        self.image_encoder = image_encoder
        self.kspace_encoder = kspace_encoder
        self.pooling = pooling
        self.freeze_image = bool(freeze_image)
        self.freeze_kspace = bool(freeze_kspace)
        image_dim = _infer_width(image_encoder, "image_encoder") if image_dim is None else image_dim
        kspace_dim = _infer_width(kspace_encoder, "kspace_encoder") if kspace_dim is None else kspace_dim
        self._image_cells = self._cells(image_encoder, "image_encoder")
        self._kspace_cells = self._cells(kspace_encoder, "kspace_encoder")
        self.image_proj = Projector(image_dim * math.prod(self._image_cells or ()), proj_hidden_dim or image_dim,
                                    embed_dim, batch_norm=proj_batch_norm)  # fmt: skip
        self.kspace_proj = Projector(kspace_dim * math.prod(self._kspace_cells or ()), proj_hidden_dim or kspace_dim,
                                     embed_dim, batch_norm=proj_batch_norm)  # fmt: skip
        self.logit_scale = LogitScale(temperature, learnable=learnable_temperature)
        if logit_bias is not None and not math.isfinite(logit_bias):
            raise ValueError(f"logit_bias must be None or a finite number, got {logit_bias!r}")
        self.logit_bias = None if logit_bias is None else nn.Parameter(torch.tensor(float(logit_bias)))
        self.cell_align = bool(cell_align)
        if self.cell_align:
            if self._image_cells is None or self._image_cells != self._kspace_cells:
                raise ValueError(f"cell_align needs pooling 'view_time' and equal (view, time) cells in both encoders; "
                                 f"got pooling {pooling!r}, image {self._image_cells}, k-space {self._kspace_cells}")
            self.cell_predictor = nn.Linear(kspace_dim, image_dim)
        self._image_valid = _accepts_return_valid(image_encoder)
        self._kspace_valid = _accepts_return_valid(kspace_encoder)
        for frozen, enc in ((self.freeze_image, image_encoder), (self.freeze_kspace, kspace_encoder)):
            if frozen:
                enc.requires_grad_(False)
                enc.eval()

    def _cells(self, encoder: nn.Module, name: str) -> tuple[int, int] | None:
        """(S, T') cells for ``"view_time"`` pooling (None for the other poolings)."""
        if self.pooling != "view_time":
            return None
        cells = getattr(encoder, "view_time_cells", None)
        if cells is None:
            raise ValueError(f"pooling 'view_time' needs {name} ({type(encoder).__name__}) with tokens on a (view, "
                             "time) grid (a `view_time_cells` attribute; patch tokens, not line tokens)")  # fmt: skip
        return tuple(cells)

    def train(self, mode: bool = True) -> DualEncoder:
        """Switch mode but keep frozen encoders in eval (no dropout, fixed norm statistics)."""
        super().train(mode)
        if self.freeze_image:
            self.image_encoder.eval()
        if self.freeze_kspace:
            self.kspace_encoder.eval()
        return self

    def _pooled(self, out: tuple, name: str, cells: tuple[int, int] | None) -> torch.Tensor:
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise ValueError(f"{name}.encode must return (tokens, pooled) or (tokens, pooled, valid)")
        tokens, valid = out[0], (out[2] if len(out) == 3 else None)
        if tokens.ndim != 3:
            raise ValueError(f"{name}.encode tokens must be (B, 1+n, C), got shape {tuple(tokens.shape)}")
        if valid is not None and (valid.dtype != torch.bool or valid.shape != (tokens.shape[0], tokens.shape[1] - 1)):
            raise ValueError(
                f"{name}.encode valid must be bool (B, n) = {(tokens.shape[0], tokens.shape[1] - 1)}, got "
                f"{valid.dtype} {tuple(valid.shape)}"
            )
        return pool_tokens(tokens, self.pooling, valid, cells)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, S, T, H, W) (whatever the image encoder takes) -> pooled features (B, C'), pre-projector."""
        kw = {"return_valid": True} if self._image_valid else {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image):
            return self._pooled(self.image_encoder.encode(image, **kw), "image_encoder", self._image_cells)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, S, T, H, W) -> z_image (B, embed_dim)."""
        return self.image_proj(self.image_features(image))

    def kspace_features(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """kspace (B, 2, S, T, H, W) + mask (B, S, T, H) -> pooled encoder features h_kspace (B, C), pre-projector.

        These are what the linear probe and the Stage III heads see.
        """
        kw = {"return_valid": True} if self._kspace_valid else {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_kspace):
            out = self.kspace_encoder.encode(kspace, mask, **kw)
            return self._pooled(out, "kspace_encoder", self._kspace_cells)

    def embed_kspace(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """kspace (B, 2, S, T, H, W) + mask (B, S, T, H) -> z_kspace (B, embed_dim)."""
        return self.kspace_proj(self.kspace_features(kspace, mask))

    def forward(self, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> {"z_image", "z_kspace"}: (B, embed_dim) projections; "h_kspace": (B, C) pooled k-space features;
        "logit_scale": 0-dim 1/tau for the CLIP loss; with ``logit_bias`` also "logit_bias" (0-dim b); with
        ``cell_align`` also "cells_kspace", "cells_image"."""
        h_kspace, h_image = self.kspace_features(kspace, mask), self.image_features(image)
        out = {"z_image": self.image_proj(h_image), "z_kspace": self.kspace_proj(h_kspace), "h_kspace": h_kspace,
               "logit_scale": self.logit_scale()}  # fmt: skip
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.reshape(())
        if self.cell_align:
            n = math.prod(self._kspace_cells)
            out["cells_kspace"] = self.cell_predictor(h_kspace.view(h_kspace.shape[0], n, -1))
            out["cells_image"] = h_image.detach().view(h_image.shape[0], n, -1)
        return out
