"""Stage II losses: symmetric CLIP/InfoNCE (:class:`ClipLoss`) or pairwise sigmoid (:class:`SigLipLoss`) between
k-space and image embeddings, gathered across ranks; :func:`build_contrastive_loss` picks one by name.

Why not ``monai.losses.ContrastiveLoss``: it is SimCLR's NT-Xent over the 2B x 2B similarity matrix of two
views of one modality (negatives include same-modality pairs), it has no separate k->i / i->k weighting, and it
only sees the local batch, so under DDP each GPU would contrast against B-1 negatives instead of N-1. k-MTR
needs the CLIP form: a B x B cross-modal matrix, cross-entropy along rows and columns, negatives from the
global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kmtr_monai.distributed import all_gather_with_grad, is_dist_active

__all__ = ["ClipLoss", "SigLipLoss", "CellAlignmentLoss", "WeightedSum", "CONTRASTIVE_LOSSES", "build_contrastive_loss",
           "contrastive_keys", "chance_loss"]


class ClipLoss(nn.Module):
    """Symmetric CLIP/InfoNCE loss over the global batch.

    With unit-normalised embeddings ``z_k`` (k-space) and ``z_i`` (image) of the N subjects of the global batch,
    ``logits = z_k @ z_i.T / tau`` (N, N), positives on the diagonal, and

        L = lambda_ * CE_rows(logits) + (1 - lambda_) * CE_rows(logits.T)

    where CE_rows is the mean over the N rows (k->i retrieval, then i->k).

    Distributed (process group initialised, world size W > 1, ``gather=True``): rank r holds B_r samples. The
    embeddings are all-gathered with gradients; rank r builds only its B_r rows of ``logits`` and of
    ``logits.T`` against all N columns and computes ``l_r`` = its share of the two sums, divided by the global N,
    so that sum_r l_r = L exactly. The gather's backward sums gradients over ranks, so rank r's local
    embeddings receive dL/dz_r (full-batch gradient for its samples). DDP then *averages* parameter gradients
    over W ranks, so the tensor used for backward is ``W * l_r``, giving
    (1/W) sum_r W * (dL/dz_r)(dz_r/dtheta) = dL/dtheta, the single-process gradient on the whole global batch
    (a learnable 1/tau passed in from the DDP-wrapped network, replicated on every rank, gets
    (1/W) sum_r W * dl_r/dtau = dL/dtau likewise). The returned *value* is L itself on every rank (one scalar
    all-reduce of the detached l_r); only the gradient path carries the W * l_r scaling. Without DDP (manual
    gradient all-reduce with SUM), divide the gradients by W. Per-rank batch sizes may differ.

    Args:
        temperature: the fixed tau used when ``forward`` gets no ``logit_scale``.
        lambda_: weight of the k->i direction, in [0, 1]; 0.5 gives the symmetric loss.
        gather: gather negatives across ranks when distributed; False uses only the local batch.
        queue_size: keep the ``queue_size`` newest embeddings of past global batches (detached, both modalities) and
            add them as extra negatives (MoCo's queue, for CLIP with small batches on CPU): row b of ``logits`` is
            scored against the N current image embeddings and the queued ones. Entries are pushed only when gradients
            are enabled (training steps, not ``torch.no_grad`` evaluation), are the same on every rank (pushed after
            the gather), are not checkpointed (they refill within ``queue_size / N`` steps after a resume), and
            come from encoders up to ``queue_size / N`` steps old. A subject can meet its own queued embedding as a
            negative across an epoch boundary; keep ``queue_size`` well below the training subjects per epoch.

    The loss has no trainable parameters: a learnable temperature is a
    :class:`kmtr_monai.networks.dual.LogitScale` owned by the network, passed in as ``logit_scale``.
    """

    def __init__(self, temperature: float = 0.07, lambda_: float = 0.5, gather: bool = True, queue_size: int = 0
                 ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"queue_size must be an int >= 0, got {queue_size!r}")
        self.queue_size = queue_size
        self.queue_kspace: torch.Tensor | None = None  # (Q, D) unit rows, newest first
        self.queue_image: torch.Tensor | None = None
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
        self.lambda_ = float(lambda_)
        self.gather = bool(gather)
        if not 0.0 < temperature <= 1.0:
            raise ValueError(f"temperature must be in (0, 1], got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z_kspace: torch.Tensor, z_image: torch.Tensor, logit_scale: torch.Tensor | None = None
                ) -> torch.Tensor:  # fmt: skip
        """Args: z_kspace, z_image: (B, D) local embeddings, row b of both from the same subject; logit_scale:
        0-dim 1/tau (e.g. the network's learnable ``LogitScale``), default the fixed ``1/temperature``.

        Returns: scalar loss L on the global batch (see class docstring for the gradient convention).
        """
        if not isinstance(z_kspace, torch.Tensor) or not isinstance(z_image, torch.Tensor):
            raise TypeError("ClipLoss expects two torch.Tensor embeddings (z_kspace, z_image)")
        if z_kspace.ndim != 2 or z_image.shape != z_kspace.shape:
            raise ValueError(
                f"ClipLoss expects z_kspace and z_image of equal shape (B, D); got {tuple(z_kspace.shape)} and "
                f"{tuple(z_image.shape)}"
            )
        if z_kspace.shape[0] == 0:
            raise ValueError("ClipLoss got an empty batch (B=0)")
        if logit_scale is None:
            logit_scale = torch.tensor(1.0 / self.temperature, device=z_kspace.device)
        elif not isinstance(logit_scale, torch.Tensor) or logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a one-element tensor (1/tau), got {logit_scale!r}")
        # float32 with autocast off: the fp16 logits/CE of an autocast region lose precision at 1/tau up to 100
        # plain tensors: a MetaTensor's batched metadata cannot be concatenated with the queue's rows
        z_kspace, z_image = (z.as_subclass(torch.Tensor) for z in (z_kspace, z_image))
        with torch.autocast(device_type=z_kspace.device.type, enabled=False):
            return self._loss(z_kspace.float(), z_image.float(), logit_scale.float().reshape(()))

    def _loss(self, z_kspace: torch.Tensor, z_image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        zk = F.normalize(z_kspace, dim=1)
        zi = F.normalize(z_image, dim=1)
        distributed = self.gather and is_dist_active()
        if distributed:
            both, offset = all_gather_with_grad(torch.cat([zk, zi], 1))  # one collective: (N, 2D)
            zk_all, zi_all = both.split(zk.shape[1], dim=1)
        else:
            zk_all, zi_all, offset = zk, zi, 0
        n_global = zk_all.shape[0]
        target = torch.arange(offset, offset + zk.shape[0], device=zk.device)
        columns_i, columns_k = self._with_queue(zi_all, zk_all)
        logits_k2i = scale * zk @ columns_i.T  # (B_r, N + Q): this rank's rows of logits
        logits_i2k = scale * zi @ columns_k.T  # (B_r, N + Q): this rank's rows of logits.T
        local = (
            self.lambda_ * F.cross_entropy(logits_k2i, target, reduction="sum")
            + (1.0 - self.lambda_) * F.cross_entropy(logits_i2k, target, reduction="sum")
        ) / n_global
        return _global_value(local) if distributed else local

    def _with_queue(self, zi_all: torch.Tensor, zk_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The columns to score against, (N + Q, D) each: the global batch, then the queue as it was before this
        batch. Pushes the detached global batch when gradients are enabled."""
        if self.queue_size == 0:
            return zi_all, zk_all
        queue_i, queue_k = self.queue_image, self.queue_kspace
        if queue_i is None or queue_i.shape[1] != zi_all.shape[1] or queue_i.device != zi_all.device:
            queue_i, queue_k = zi_all[:0].detach(), zk_all[:0].detach()  # none yet, or width/device changed: restart
        if torch.is_grad_enabled():
            self.queue_image = torch.cat([zi_all.detach(), queue_i])[: self.queue_size]  # newest first
            self.queue_kspace = torch.cat([zk_all.detach(), queue_k])[: self.queue_size]
        return torch.cat([zi_all, queue_i]), torch.cat([zk_all, queue_k])


def _global_value(local: torch.Tensor) -> torch.Tensor:
    """Rank r's share ``l_r`` (0-dim) of a loss summed over ranks -> a tensor whose value is ``L = sum_r l_r`` and
    whose gradient is that of ``W * l_r``, so that DDP's gradient average gives dL/dtheta (see :class:`ClipLoss`)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    total = local.detach().clone()
    dist.all_reduce(total)  # sum_r l_r = L
    scaled = world * local
    return scaled + (total - scaled).detach()


def _check_pair(name: str, z_kspace, z_image) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (B, D) tensors, B > 0; returned as plain tensors (a MetaTensor's batched metadata does not matmul)."""
    if not isinstance(z_kspace, torch.Tensor) or not isinstance(z_image, torch.Tensor):
        raise TypeError(f"{name} expects two torch.Tensor embeddings (z_kspace, z_image)")
    if z_kspace.ndim != 2 or z_image.shape != z_kspace.shape:
        raise ValueError(f"{name} expects z_kspace and z_image of equal shape (B, D); got {tuple(z_kspace.shape)} and "
                         f"{tuple(z_image.shape)}")  # fmt: skip
    if z_kspace.shape[0] == 0:
        raise ValueError(f"{name} got an empty batch (B=0)")
    return z_kspace.as_subclass(torch.Tensor), z_image.as_subclass(torch.Tensor)


def _scalar(name: str, value: torch.Tensor | None, default: float, device: torch.device) -> torch.Tensor:
    """A one-element tensor input (or the fixed default) as a 0-dim float32 tensor."""
    if value is None:
        return torch.tensor(float(default), device=device)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(f"{name} must be a one-element tensor, got {value!r}")
    return value.float().reshape(())


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al., ICCV 2023) over the global batch.

    With unit-normalised ``z_k`` (k-space) and ``z_i`` (image) of the N subjects of the global batch,
    ``logits = t * z_k @ z_i.T + b`` (N, N), ``label`` +1 on the diagonal and -1 elsewhere, and

        L = -(1/N) * sum_{i,j} log sigmoid(label_ij * logits_ij)

    (the paper's normalisation: the sum over the N^2 pairs divided by the batch size). Every pair is an independent
    binary decision, so there is no softmax over the batch, no direction weighting (``lambda_``) and the loss is
    symmetric in its two inputs. With subject-blind embeddings (all logits equal) its minimum is
    :func:`chance_loss` ``("siglip", N)`` = N * H(1/N), about log N + 1, where InfoNCE's is log N.

    ``t`` and ``b`` are trainable parameters of the network (:class:`kmtr_monai.networks.dual.DualEncoder` with
    ``logit_bias``; the paper initialises t = 10 and b = -10), passed in as ``logit_scale`` and ``logit_bias``;
    without them the fixed ``1/temperature`` and ``bias`` are used. The loss itself has no parameters.

    Distributed (process group initialised, world size W > 1, ``gather=True``): the image embeddings are
    all-gathered with gradients (the negatives are the global batch), rank r scores its B_r k-space rows against the
    N image columns and takes ``l_r`` = its rows' share of the sum, divided by the global N, so sum_r l_r = L. As in
    :class:`ClipLoss`, the value returned is L on every rank and the gradient is that of ``W * l_r``, so after DDP's
    average every parameter (t and b included) gets the single-process gradient of L on the global batch (tested
    with 2 gloo processes). Per-rank batch sizes may differ.

    No queue of past negatives (``ClipLoss``'s ``queue_size``): :func:`build_contrastive_loss` refuses it.

    Args:
        temperature: 1/t used when ``forward`` gets no ``logit_scale``.
        bias: b used when ``forward`` gets no ``logit_bias``.
        gather: gather negatives across ranks when distributed; False uses only the local batch.
    """

    def __init__(self, temperature: float = 0.1, bias: float = -10.0, gather: bool = True) -> None:
        super().__init__()
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not math.isfinite(bias):
            raise ValueError(f"bias must be finite, got {bias}")
        self.temperature, self.bias, self.gather = float(temperature), float(bias), bool(gather)

    def forward(self, z_kspace: torch.Tensor, z_image: torch.Tensor, logit_scale: torch.Tensor | None = None,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Args: z_kspace, z_image: (B, D) local embeddings, row b of both from the same subject; logit_scale: 0-dim
        t (the network's ``LogitScale``); logit_bias: 0-dim b (the network's ``logit_bias``).

        Returns: scalar loss L on the global batch (float32, autocast off; see the class docstring for gradients).
        """
        z_kspace, z_image = _check_pair("SigLipLoss", z_kspace, z_image)
        scale = _scalar("logit_scale", logit_scale, 1.0 / self.temperature, z_kspace.device)
        bias = _scalar("logit_bias", logit_bias, self.bias, z_kspace.device)
        with torch.autocast(device_type=z_kspace.device.type, enabled=False):
            return self._loss(z_kspace.float(), z_image.float(), scale, bias)

    def _loss(self, z_kspace: torch.Tensor, z_image: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
              ) -> torch.Tensor:  # fmt: skip
        zk, zi = F.normalize(z_kspace, dim=1), F.normalize(z_image, dim=1)
        distributed = self.gather and is_dist_active()
        zi_all, offset = all_gather_with_grad(zi) if distributed else (zi, 0)  # (N, D)
        logits = scale * zk @ zi_all.T + bias  # (B_r, N): this rank's rows of the N x N matrix
        rows = torch.arange(zk.shape[0], device=zk.device)
        labels = -torch.ones_like(logits)
        labels[rows, offset + rows] = 1.0
        local = -F.logsigmoid(labels * logits).sum() / zi_all.shape[0]
        return _global_value(local) if distributed else local


CONTRASTIVE_LOSSES = ("clip", "siglip")


def build_contrastive_loss(kind: str = "clip", lambda_: float = 0.5, queue_size: int = 0, gather: bool = True
                           ) -> nn.Module:  # fmt: skip
    """The align bundle's contrastive term by name (its ``contrastive`` option).

    ``"clip"``: ``ClipLoss(lambda_=lambda_, queue_size=queue_size, gather=gather)`` (the default, as before).
    ``"siglip"``: ``SigLipLoss(gather=gather)``; it has no direction weight and no queue, so ``lambda_`` other than
    0.5 or ``queue_size`` > 0 is a ValueError rather than silently ignored.
    """
    if kind == "clip":
        return ClipLoss(lambda_=lambda_, queue_size=queue_size, gather=gather)
    if kind == "siglip":
        if queue_size:
            raise ValueError(f"contrastive 'siglip' has no queue of negatives; got queue_size={queue_size!r} "
                             "(use 0, or contrastive 'clip')")  # fmt: skip
        if lambda_ != 0.5:
            raise ValueError(f"contrastive 'siglip' is symmetric and has no direction weight; got clip_lambda="
                             f"{lambda_!r} (use 0.5, or contrastive 'clip')")  # fmt: skip
        return SigLipLoss(gather=gather)
    raise ValueError(f"contrastive must be one of {CONTRASTIVE_LOSSES}, got {kind!r}")


def contrastive_keys(kind: str = "clip") -> list[str]:
    """The DualEncoder outputs the ``kind`` loss reads, in its argument order (for ``OutputLoss``)."""
    return ["z_kspace", "z_image", "logit_scale"] + (["logit_bias"] if kind == "siglip" else [])


def chance_loss(kind: str, batch: int) -> float:
    """The loss of subject-blind embeddings on a global batch of ``batch`` (all logits equal; for SigLIP with the
    best bias): ``log(batch)`` for ``"clip"``; ``batch * H(1/batch)`` (binary entropy, nats) = ``log(batch) +
    (batch-1) * log(batch/(batch-1))``, about log(batch) + 1, for ``"siglip"``. A training loss back at this level
    after falling is a sign of collapse (DESIGN section 15)."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if kind == "clip":
        return math.log(batch)
    if kind == "siglip":
        return math.log(batch) + ((batch - 1) * math.log(batch / (batch - 1)) if batch > 1 else 0.0)
    raise ValueError(f"kind must be one of {CONTRASTIVE_LOSSES}, got {kind!r}")


class CellAlignmentLoss(nn.Module):
    """Token-level alignment: mean over subjects and (view, time) cells of ``1 - cos(pred, target)``.

    ``forward(pred (B, N, C), target (B, N, C)) -> scalar`` in [0, 2]; the target (the image encoder's cell
    features from :class:`kmtr_monai.networks.dual.DualEncoder` with ``cell_align``) carries no gradient, so the
    k-space side is pulled towards it without the two collapsing onto a constant. Used next to :class:`ClipLoss`.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 3 or pred.shape != target.shape:
            raise ValueError(f"pred and target: expected equal (B, N, C) shapes, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")  # fmt: skip
        return (1.0 - F.cosine_similarity(pred, target.detach(), dim=-1)).mean()


class WeightedSum:
    """``loss_function(pred, target)`` = sum of ``weight * term(pred, target)`` over the terms with a non-zero
    weight (a zero-weight term is not called, so its outputs need not exist)."""

    def __init__(self, terms, weights) -> None:
        if len(terms) != len(weights) or not terms:
            raise ValueError(f"WeightedSum: need as many weights as terms (> 0), got {len(terms)} and {len(weights)}")
        self.terms = [(float(w), t) for t, w in zip(terms, weights)]

    def __call__(self, pred, target=None) -> torch.Tensor:
        return sum(w * t(pred, target) for w, t in self.terms if w != 0.0)
