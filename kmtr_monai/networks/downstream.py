"""Stage III task models: an encoder + one task head (issue 13).

k-MTR's encoder is a ``KspaceMAE`` without decoder: only ``encoder.encode(kspace, mask)`` touches the input, so
the no-leakage property of the encoder carries over to every task, and there is no inverse FFT anywhere. The
baselines' encoders (:mod:`kmtr_monai.networks.baselines`) plug into the same :class:`TaskModel` and heads; those
with ``input_kind == "image"`` read a magnitude image (fully sampled or zero-filled) instead.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..engines.checkpoint import load_encoder_weights
from .mae import KspaceMAE

__all__ = ["INITS", "TaskModel", "build_kspace_encoder"]

INITS = ("aligned", "stage1", "scratch")


def build_kspace_encoder(mae: KspaceMAE, init: str = "aligned", align_ckpt: str | os.PathLike | None = None,
                         stage1_ckpt: str | os.PathLike | None = None) -> KspaceMAE:  # fmt: skip
    """The Stage III starting point, one switch (DESIGN §8): returns ``mae`` with its decoder dropped.

    ``init``:
        ``"aligned"``: the ``kspace_encoder`` entry of an ``align`` checkpoint (the DualEncoder's k-space encoder);
        ``"stage1"``: the ``model`` entry of a ``kspace-mae`` checkpoint (full MAE, decoder dropped after loading);
        ``"scratch"``: no weights loaded.
    Loading is strict (:func:`load_encoder_weights`, ``weights_only=True``): a checkpoint of another bundle or size
    raises ValueError naming the file and the missing, unexpected or mis-shaped keys.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(mae, KspaceMAE):
        raise TypeError(f"mae: expected a KspaceMAE, got {type(mae).__name__}")
    if init == "aligned":
        if align_ckpt is None:
            raise ValueError("init 'aligned' needs align_ckpt (the align bundle's models/model.pt)")
        return load_encoder_weights(mae.drop_decoder(), align_ckpt, key="kspace_encoder")
    if init == "stage1":
        if stage1_ckpt is None:
            raise ValueError("init 'stage1' needs stage1_ckpt (the kspace-mae bundle's models/model.pt)")
        if getattr(mae, "decoder_dropped", False):
            raise ValueError("init 'stage1' loads a full KspaceMAE (with decoder); got one whose decoder was dropped")
        return load_encoder_weights(mae, stage1_ckpt, key="model").drop_decoder()
    return mae.drop_decoder()


def _check_grid(encoder: nn.Module, head: nn.Module) -> None:
    """ValueError when the head was built for another token grid than the encoder's (S, T', H', W')."""
    grid = getattr(getattr(encoder, "tokenizer", None), "grid", None)
    inner = getattr(head, "head", head)  # PhenotypeRegressor / DiseaseClassifier wrap a head
    if getattr(inner, "grid", None) is not None:
        want, have, what = tuple(inner.grid), grid, "grid (S, T', H', W')"
    elif getattr(inner, "cells", None) is not None:
        want, have, what = tuple(inner.cells), getattr(encoder, "view_time_cells", None), "(view, time) cells (S, T')"
    else:
        return
    if have is None or tuple(have) != want:
        raise ValueError(f"head {type(inner).__name__} expects the token {what} {want}, but the encoder's is {have} "
                         "(None: line tokens, which are not on a grid; use tokenizer='patch')")  # fmt: skip


class TaskModel(nn.Module):
    """Encoder + task head, tensor in, tensor out.

    Args:
        encoder: module with ``encode(kspace, mask, return_valid=True[, return_hidden=True])``, e.g. from
            :func:`build_kspace_encoder`; or, when its ``input_kind`` is ``"image"``, with
            ``encode(image, return_valid=True[, return_hidden=True])`` (image baselines).
        head: ``head(tokens (B, 1+N, C), valid (B, N))`` → tensor; if it has a non-empty ``hidden_layers``
            attribute (:class:`~kmtr_monai.networks.dense_decoders.TokenGridUNETRDecoder`), it is called as
            ``head(tokens, valid, hidden)`` with every encoder block's output.
        freeze_encoder: encoder weights fixed (requires_grad False), kept in eval mode and run under no_grad;
            the head still trains.

    ``forward(kspace (B, 2, S, T, H, W), mask (B, S, T, H)) -> head output``, or ``forward(packed)`` with one
    tensor (B, 3, S, T, H, W): channels real, imaginary and the ky–t mask broadcast along W
    (:class:`kmtr_monai.transforms.PackKspaced`), the single-tensor input MONAI's bundle tools and MONAI Label
    pass; ``forward(image (B, S, T, H, W))`` for an image encoder. Returns phenotypes (B, K), logits (B, 3) or
    dense maps (B, C, S, T, H, W). No Python branch depends on tensor values here, so it can be traced.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_encoder: bool = False) -> None:
        super().__init__()
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(f"encoder ({type(encoder).__name__}) has no encode(kspace, mask) method")
        self.encoder, self.head = encoder, head
        self.freeze_encoder = bool(freeze_encoder)
        self.use_hidden = bool(getattr(head, "hidden_layers", None))
        _check_grid(encoder, head)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> TaskModel:
        """Switch mode but keep a frozen encoder in eval."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, kspace: torch.Tensor, mask: torch.Tensor | None = None) -> tuple:
        """The encoder's output on :meth:`forward`'s inputs: ``(tokens (B, 1+N, C), pooled, valid (B, N)[,
        hidden])`` (hidden only when the head reads every block's output)."""
        if getattr(self.encoder, "input_kind", "kspace") == "image":  # an image baseline: kspace is (B, S, T, H, W)
            inputs = (kspace,)
        elif mask is None:  # one packed tensor (MONAI bundle tooling: verify_net_in_out, inferers, MONAI Label)
            if kspace.ndim != 6 or kspace.shape[1] != 3:
                raise ValueError(f"packed input: expected (B, 3, S, T, H, W) with channels [real, imag, mask], got "
                                 f"{tuple(kspace.shape)}")  # fmt: skip
            inputs = (kspace[:, :2], kspace[:, 2, ..., 0])
        else:
            inputs = (kspace, mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.encoder.encode(*inputs, return_valid=True, return_hidden=self.use_hidden)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.encode(kspace, mask)
        tokens, valid = out[0], out[2]
        if self.use_hidden:
            return self.head(tokens, valid, out[3])
        return self.head(tokens, valid)
