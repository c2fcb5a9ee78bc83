"""Baseline networks of the k-MTR paper's comparison set (DESIGN §8), as Stage III encoders or whole models.

* :class:`FrameResNetEncoder`: MONAI 2-D ResNet-18/34/50 shared over every (view, frame), on images (fully-sampled
  or zero-filled) or on undersampled k-space (the paper preset's ResNet-50);
* :class:`StackedFrameResNet`: one small MONAI 2-D ResNet over the view×frame images as channels, the CNN baseline
  sized for the tiny and small presets;
* :class:`ImageEncoder`: the Stage I image MAE's ViT as a Stage III image encoder ("ViT" from scratch, or "image MAE
  fine-tuned" from its checkpoint);
* :class:`FrameDynUNet`: nnU-Net-like MONAI ``DynUNet`` per (view, frame), the segmentation baseline;
* :class:`KspaceInterpolationRecon`: a k-GIN-style line-token k-space interpolator with data consistency, the
  reconstruction baseline.

The encoders follow the interface of :class:`~kmtr_monai.networks.downstream.TaskModel`: ``input_kind``
(``"image"`` or ``"kspace"``), ``dim`` (token width), ``view_time_cells`` (S, T') and
``encode(x, mask=None, return_valid=False, return_hidden=False) -> (tokens (B, 1+N, dim) class token first,
pooled (B, dim)[, valid (B, N)][, hidden])``, with N tokens in (view, time) order, so the same heads
(:class:`~kmtr_monai.networks.heads.TemporalMLPHead`) read them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.nets import DynUNet, resnet18, resnet34, resnet50
from torch import nn

from ..engines.checkpoint import load_encoder_weights
from ..transforms.fft import ifft2c
from .mae import ImageMAE, KspaceMAE, _check_finite, normalise_sampled, pool_tokens
from .tokenizers import check_real

__all__ = ["FrameResNetEncoder", "StackedFrameResNet", "ImageEncoder", "FrameDynUNet", "KspaceInterpolationRecon"]

_RESNETS = {18: resnet18, 34: resnet34, 50: resnet50}
_INPUT_KINDS = ("image", "kspace")


def _check_ndim(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    """TypeError unless ``x`` is a real floating tensor, ValueError unless it has ``ndim`` axes (``layout``)."""
    check_real(name, x)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected shape ({layout}), got {tuple(x.shape)}")


def _check_mask(mask, expected: tuple[int, ...]) -> torch.Tensor:
    """mask (B, S, T, H) real or bool with exactly the ``expected`` shape → bool (True = sampled)."""
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise TypeError(f"mask: expected a real or bool torch.Tensor, got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(f"mask: expected shape (B, S, T, H) = {tuple(expected)} (from kspace), got "
                         f"{tuple(mask.shape)}")  # fmt: skip
    return mask if mask.dtype == torch.bool else mask > 0


def _unpack(kspace: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kspace (B,2,S,T,H,W), mask (B,S,T,H)) or one packed (B,3,S,T,H,W) [real, imag, mask along W] → the pair."""
    if mask is not None:
        return kspace, mask
    if not isinstance(kspace, torch.Tensor) or kspace.ndim != 6 or kspace.shape[1] != 3:
        raise ValueError(f"packed input: expected (B, 3, S, T, H, W) with channels [real, imag, mask], got "
                         f"{tuple(getattr(kspace, 'shape', ()))}")  # fmt: skip
    return kspace[:, :2], kspace[:, 2, ..., 0]


class _FrameInput(nn.Module):
    """Validated (view, frame) images or undersampled k-space → per-frame 2-D inputs, shared by the CNN baselines.

    ``input_kind`` ``"image"``: ``image (B, S, T, H, W)``, 1 channel per frame; ``"kspace"``: ``kspace (B, 2, S, T,
    H, W)`` and ``mask (B, S, T, H)``, 3 channels per frame: real and imaginary parts normalised from SAMPLED values
    only (:func:`~kmtr_monai.networks.mae.normalise_sampled`: sampled RMS + asinh; unsampled lines are zero, so
    nothing from them leaks in) and the mask broadcast along the readout W.
    """

    def _init_input(self, n_views: int, n_frames: int, input_kind: str, norm_alpha: float) -> None:
        if input_kind not in _INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {_INPUT_KINDS}, got {input_kind!r}")
        for name, v in (("n_views", n_views), ("n_frames", n_frames)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__} {name} must be a positive int, got {v!r}")
        if norm_alpha <= 0:
            raise ValueError(f"norm_alpha must be > 0, got {norm_alpha}")
        self.input_kind, self.alpha = input_kind, float(norm_alpha)
        self.n_views, self.n_frames = n_views, n_frames
        self.frame_channels = 1 if input_kind == "image" else 3

    def frames(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Validated input → the (B·S·T, C, H, W) frames fed to the ResNet."""
        st = (self.n_views, self.n_frames)
        if self.input_kind == "image":
            if mask is not None:
                raise ValueError("mask: an image CNN baseline takes no mask (input_kind='kspace' does)")
            _check_ndim("image", x, 5, "B, S, T, H, W")
            if tuple(x.shape[1:3]) != st:
                raise ValueError(f"image: expected shape (B, S, T, H, W) with (S, T) = {st}, got {tuple(x.shape)}")
            _check_finite("image", x)
            return rearrange(x, "b s t h w -> (b s t) 1 h w")
        if mask is None:
            raise ValueError("mask: a k-space CNN baseline needs the ky-t mask (B, S, T, H)")
        _check_ndim("kspace", x, 6, "B, 2, S, T, H, W")
        if x.shape[1] != 2 or tuple(x.shape[2:4]) != st:
            raise ValueError(f"kspace: expected shape (B, 2, S, T, H, W) with (S, T) = {st}, got {tuple(x.shape)}")
        m = _check_mask(mask, (x.shape[0], *x.shape[2:5]))
        y, _ = normalise_sampled(x, m, "asinh", self.alpha)  # zero on unsampled lines: no leakage
        _check_finite("kspace (sampled lines)", y)
        m6 = m[:, None, ..., None].to(y.dtype).expand_as(y[:, :1])
        return rearrange(torch.cat([y, m6], dim=1), "b c s t h w -> (b s t) c h w")


class FrameResNetEncoder(_FrameInput):
    """ResNet baseline: one 2-D MONAI ResNet shared over every (view, frame) image → one token per frame.

    Why here: the paper's ResNet-50 baselines (fully-sampled images, zero-filled images, undersampled k-space) need
    the Stage III encoder interface, so the same heads and bundles run them. Reuses MONAI's
    ``monai.networks.nets.resnet18/34/50`` (``spatial_dims=2``, ``feed_forward=False``: globally pooled features;
    torchvision has no CPU build here) with the ImageNet stem (7x7 conv, stride ``conv1_stride`` = 2, max-pool).

    Args:
        n_views, n_frames: S and T of the input.
        input_kind: ``"image"`` (fully-sampled or zero-filled magnitudes) or ``"kspace"`` (:class:`_FrameInput`).
        depth: 18, 34 or 50. norm_alpha: asinh ``alpha`` of the k-space normalisation. conv1_stride: stem stride.

    Attributes: ``dim`` (512 for depth 18/34, 2048 for 50), ``view_time_cells`` = (S, T).
    ``encode(...) -> (tokens (B, 1+S·T, dim), pooled (B, dim)[, valid (B, S·T) all True])``: the per-frame features
    in (view, time) order after a class token that is their mean; pooled = that mean. ``forward`` = pooled.
    """

    def __init__(self, n_views: int, n_frames: int, input_kind: str = "image", depth: int = 50,
                 norm_alpha: float = 0.05, conv1_stride: int = 2) -> None:  # fmt: skip
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"depth must be one of {sorted(_RESNETS)}, got {depth!r}")
        self._init_input(n_views, n_frames, input_kind, norm_alpha)
        self.depth, self.view_time_cells = depth, (n_views, n_frames)
        self.net = _RESNETS[depth](spatial_dims=2, n_input_channels=self.frame_channels,
                                   conv1_t_stride=conv1_stride, feed_forward=False)  # fmt: skip
        self.dim = 512 * (4 if depth == 50 else 1)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_valid: bool = False,
               return_hidden: bool = False):  # fmt: skip
        if return_hidden:
            raise ValueError("FrameResNetEncoder: return_hidden is not supported (no transformer blocks); use a "
                             "head without hidden_layers")  # fmt: skip
        b = x.shape[0]
        feats = self.net(self.frames(x, mask)).view(b, self.n_views * self.n_frames, self.dim)  # (B, S·T, dim)
        pooled = feats.mean(1)
        tokens = torch.cat([pooled[:, None], feats], dim=1)
        if return_valid:
            return tokens, pooled, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        return tokens, pooled

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, mask)[1]


class StackedFrameResNet(_FrameInput):
    """CNN baseline sized for small data: every (view, frame) image is one input channel of ONE 2-D MONAI ResNet.

    Why: a per-frame ResNet-50 (23 M parameters) fine-tuned on a few hundred subjects did not leave the mean
    predictor at the small preset, while a plain CNN that takes the S·T view×frame images as channels learned the
    phenotypes within minutes on 2 CPU cores (DESIGN §15). Stacking gives the first layer every view and frame at
    once, so ED/ES differences (EF) and views are compared from the first convolution. Reuses MONAI's
    ``monai.networks.nets.ResNet`` (basic blocks, ``layers`` per stage, widths ``widths``; a 3×3 stem of stride
    ``stem_stride`` and no max-pool, for 32–64 pixel crops; ``feed_forward=False``: globally pooled features).

    Args:
        n_views, n_frames: S and T. input_kind: ``"image"`` or ``"kspace"`` (:class:`_FrameInput`; k-space gives
            3 channels per frame). widths: channels of the 4 stages. layers: blocks per stage ((2, 2, 2, 2):
            ResNet-18). norm_alpha: asinh ``alpha`` of the k-space normalisation. stem_stride: 2 halves the
            resolution of the first stage (2.1× faster per step at the small preset's 48² crops, measured).

    Attributes: ``dim`` = ``widths[-1]``, ``view_time_cells`` = (1, 1).
    ``encode(...) -> (tokens (B, 2, dim), pooled (B, dim)[, valid (B, 1) True])``: the pooled feature as class token
    and as the one cell token. ``forward`` = pooled.
    """

    def __init__(self, n_views: int, n_frames: int, input_kind: str = "image",
                 widths: Sequence[int] = (32, 64, 128, 256), layers: Sequence[int] = (2, 2, 2, 2),
                 norm_alpha: float = 0.05, stem_stride: int = 2) -> None:  # fmt: skip
        from monai.networks.nets import ResNet

        super().__init__()
        self._init_input(n_views, n_frames, input_kind, norm_alpha)
        if len(widths) != 4 or len(layers) != 4 or min(*widths, *layers) < 1:
            raise ValueError(f"widths and layers: 4 positive ints each, got {widths!r} and {layers!r}")
        self.view_time_cells, self.dim = (1, 1), int(widths[-1])
        self.net = ResNet("basic", list(layers), [int(w) for w in widths], spatial_dims=2,
                          n_input_channels=self.frame_channels * n_views * n_frames, conv1_t_size=3,
                          conv1_t_stride=stem_stride, no_max_pool=True, feed_forward=False)  # fmt: skip

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_valid: bool = False,
               return_hidden: bool = False):  # fmt: skip
        if return_hidden:
            raise ValueError("StackedFrameResNet: return_hidden is not supported (no transformer blocks)")
        b = x.shape[0]
        frames = self.frames(x, mask)  # (B·S·T, C, H, W)
        pooled = self.net(frames.reshape(b, -1, *frames.shape[-2:]))  # (B, dim)
        tokens = torch.stack([pooled, pooled], dim=1)
        if return_valid:
            return tokens, pooled, torch.ones((b, 1), dtype=torch.bool, device=pooled.device)
        return tokens, pooled

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, mask)[1]


class ImageEncoder(nn.Module):
    """The Stage I image MAE's encoder (ViT, no masking) as a Stage III image encoder.

    Why here: the "ViT" (``ckpt=None``: random init) and "image MAE fine-tuned" (``ckpt``: the image-mae bundle's
    ``models/model.pt``) baselines need the Stage III encoder interface with ``input_kind="image"``. Reuses our
    :class:`~kmtr_monai.networks.mae.ImageMAE` (tokenizer + :class:`TransformerEncoder`) and the strict
    :func:`~kmtr_monai.engines.checkpoint.load_encoder_weights`; the decoder is dropped.

    Registers the MAE's ``tokenizer`` and ``encoder`` directly (state-dict keys ``tokenizer.*``, ``encoder.*``, as in
    the MAE); ``dim``, ``view_time_cells`` (S, T') and ``pool`` come from the MAE.

    ``encode(image (B, S, T, H, W), mask=None, return_valid=False, return_hidden=False) -> (tokens (B, 1+N, dim),
    pooled (B, dim)[, valid (B, N) all True][, hidden: tuple of every block's output (B, 1+N, dim)])``.
    """

    input_kind = "image"

    def __init__(self, mae: ImageMAE, ckpt: str | os.PathLike | None = None) -> None:
        super().__init__()
        if not isinstance(mae, ImageMAE):
            raise TypeError(f"mae: expected an ImageMAE, got {type(mae).__name__}")
        if ckpt is not None:
            if getattr(mae, "decoder_dropped", False):
                raise ValueError("ckpt: loads a full ImageMAE (with decoder); got one whose decoder was dropped")
            load_encoder_weights(mae, ckpt, key="model")
        mae.drop_decoder()
        self.tokenizer, self.encoder = mae.tokenizer, mae.encoder
        self.dim, self.pool = mae.dim, mae.pool
        self.view_time_cells = mae.view_time_cells

    def encode(self, image: torch.Tensor, mask: torch.Tensor | None = None, return_valid: bool = False,
               return_hidden: bool = False):  # fmt: skip
        if mask is not None:
            raise ValueError("mask: ImageEncoder encodes whole images and takes no mask")
        tokens = self.tokenizer(image)  # validates type and shape
        _check_finite("image", image)
        out, hidden = self.encoder(tokens, return_hidden=True)
        pooled = pool_tokens(out, self.pool, None, self.view_time_cells)
        res = (out, pooled)
        if return_valid:
            res = (*res, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        return (*res, hidden) if return_hidden else res

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode(image)[1]


class FrameDynUNet(nn.Module):
    """nnU-Net-like 2-D segmentation baseline on every (view, frame) image, weights shared.

    Why here: the segmentation baseline on fully-sampled or zero-filled images needs the (B, C, S, T, H, W) layout
    of the segment bundle. Reuses MONAI's ``DynUNet`` (3x3 kernels, strides 1, 2, 2, ..., instance norm, leaky
    ReLU, no deep supervision), views and frames folded into the batch.

    Args:
        out_channels: classes. in_channels: image channels (1). filters: widths per level (H and W must be
            divisible by 2^(levels - 1)).

    ``forward(image (B, S, T, H, W) or (B, in_channels, S, T, H, W)) -> logits (B, out_channels, S, T, H, W)``.
    """

    input_kind = "image"

    def __init__(self, out_channels: int, in_channels: int = 1, filters: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if len(filters) < 2 or min(filters) < 1 or out_channels < 1 or in_channels < 1:
            raise ValueError(f"need out_channels, in_channels >= 1 and >= 2 positive filters, got {out_channels}, "
                             f"{in_channels}, {filters}")  # fmt: skip
        strides = (1,) + (2,) * (len(filters) - 1)
        self.in_channels, self.out_channels, self.factor = in_channels, out_channels, 2 ** (len(filters) - 1)
        self.net = DynUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=out_channels, kernel_size=(3,) * len(filters),
            strides=strides, upsample_kernel_size=strides[1:], filters=filters,
            norm_name=("INSTANCE", {"affine": True}), deep_supervision=False,
        )  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_real("image", image)
        if image.ndim == 5 and self.in_channels == 1:
            image = image[:, None]
        if image.ndim != 6 or image.shape[1] != self.in_channels:
            raise ValueError(f"image: expected shape (B, S, T, H, W) or (B, {self.in_channels}, S, T, H, W), got "
                             f"{tuple(image.shape)}")  # fmt: skip
        b, _, s, t, h, w = image.shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"image: H={h} and W={w} must be divisible by {self.factor} (the U-Net's downsampling)")
        out = self.net(rearrange(image, "b c s t h w -> (b s t) c h w"))
        return rearrange(out, "(b s t) c h w -> b c s t h w", b=b, s=s, t=t)


class KspaceInterpolationRecon(nn.Module):
    """k-GIN-style reconstruction baseline: interpolate the missing k-t lines from line tokens, keep the measured
    ones, inverse FFT, magnitude.

    Why here: k-GIN (Rueckert lab) interpolates missing k-space lines with a graph/transformer network over line
    tokens; our line-token :class:`~kmtr_monai.networks.mae.KspaceMAE` (``tokenizer="line"``) is that interpolator,
    trained end to end here with an image-domain loss. Adds data consistency (measured lines replace the
    prediction) and our centred :func:`~kmtr_monai.transforms.fft.ifft2c` (MONAI's ``fftn_centered`` convention).

    ``forward(kspace (B, 2, S, T, H, W), mask (B, S, T, H))`` or ``forward(packed (B, 3, S, T, H, W))`` [real, imag,
    mask broadcast along W] ``-> magnitude image (B, 1, S, T, H, W)``. Unsampled input values never reach the output.
    """

    input_kind = "kspace"

    def __init__(self, mae: KspaceMAE) -> None:
        super().__init__()
        if not isinstance(mae, KspaceMAE):
            raise TypeError(f"mae: expected a KspaceMAE, got {type(mae).__name__}")
        if mae.kind != "line":
            raise ValueError(f"mae: KspaceInterpolationRecon needs a KspaceMAE with tokenizer='line', got {mae.kind!r}")
        if getattr(mae, "decoder_dropped", False):
            raise ValueError("mae: KspaceInterpolationRecon needs the MAE's decoder (it predicts every line)")
        self.mae = mae

    def interpolate(self, kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """→ data-consistent k-space (B, 2, S, T, H, W): the measured lines where mask, the prediction elsewhere."""
        kspace, mask = _unpack(kspace, mask)
        pred = self.mae(kspace, mask)["pred"]  # validates kspace and mask; original units
        m = (mask if mask.dtype == torch.bool else mask > 0)[:, None, ..., None]
        return torch.where(m, kspace, pred)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k = self.interpolate(kspace, mask)
        return ifft2c(torch.complex(k[:, 0], k[:, 1])).abs()[:, None]
