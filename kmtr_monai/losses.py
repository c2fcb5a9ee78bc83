"""Stage II loss: symmetric CLIP/InfoNCE between k-space and image embeddings, gathered across ranks.

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

__all__ = ["ClipLoss"]


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
    (the learnable temperature, replicated on every rank, gets (1/W) sum_r W * dl_r/dtau = dL/dtau likewise).
    The returned *value* is L itself on every rank (one scalar all-reduce of the detached l_r); only the
    gradient path carries the W * l_r scaling. Without DDP (manual gradient all-reduce with SUM), divide the
    gradients by W. Per-rank batch sizes may differ.

    Args:
        temperature: tau; the initial value when learnable.
        learnable_temperature: learn ``log(1/tau)`` (a log-scale parameter, as CLIP), clamped to
            ``[log(1/max_temperature), log(1/min_temperature)]``.
        lambda_: weight of the k->i direction, in [0, 1]; 0.5 gives the symmetric loss.
        gather: gather negatives across ranks when distributed; False uses only the local batch.
        min_temperature, max_temperature: clamp range of the learnable temperature (CLIP's 1/100 bound).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        lambda_: float = 0.5,
        gather: bool = True,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
        if not 0.0 < min_temperature <= max_temperature:
            raise ValueError(f"need 0 < min_temperature <= max_temperature, got {min_temperature}, {max_temperature}")
        if not min_temperature <= temperature <= max_temperature:
            raise ValueError(f"temperature {temperature} outside [{min_temperature}, {max_temperature}]")
        self.lambda_ = float(lambda_)
        self.gather = bool(gather)
        self.learnable_temperature = bool(learnable_temperature)
        self._log_scale_min = math.log(1.0 / max_temperature)
        self._log_scale_max = math.log(1.0 / min_temperature)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    @property
    def temperature(self) -> torch.Tensor:
        """Current tau (scalar tensor, detached)."""
        return 1.0 / self.logit_scale().detach()

    def logit_scale(self) -> torch.Tensor:
        """1 / tau as a scalar tensor (differentiable when learnable; zero gradient at the clamp bounds)."""
        return self.log_logit_scale.clamp(self._log_scale_min, self._log_scale_max).exp()

    def forward(self, z_kspace: torch.Tensor, z_image: torch.Tensor) -> torch.Tensor:
        """Args: z_kspace, z_image: (B, D) local embeddings, row b of both from the same subject.

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
        # float32 with autocast off: the fp16 logits/CE of an autocast region lose precision at 1/tau up to 100
        with torch.autocast(device_type=z_kspace.device.type, enabled=False):
            return self._loss(z_kspace.float(), z_image.float())

    def _loss(self, z_kspace: torch.Tensor, z_image: torch.Tensor) -> torch.Tensor:
        zk = F.normalize(z_kspace, dim=1)
        zi = F.normalize(z_image, dim=1)
        distributed = self.gather and is_dist_active()
        if distributed:
            both, offset = all_gather_with_grad(torch.cat([zk, zi], 1))  # one collective: (N, 2D)
            zk_all, zi_all = both.split(zk.shape[1], dim=1)
        else:
            zk_all, zi_all, offset = zk, zi, 0
        n_global = zk_all.shape[0]
        scale = self.logit_scale()
        target = torch.arange(offset, offset + zk.shape[0], device=zk.device)
        logits_k2i = scale * zk @ zi_all.T  # (B_r, N): this rank's rows of logits
        logits_i2k = scale * zi @ zk_all.T  # (B_r, N): this rank's rows of logits.T
        local = (
            self.lambda_ * F.cross_entropy(logits_k2i, target, reduction="sum")
            + (1.0 - self.lambda_) * F.cross_entropy(logits_i2k, target, reduction="sum")
        ) / n_global
        if not distributed:
            return local
        import torch.distributed as dist

        world = dist.get_world_size()
        total = local.detach().clone()
        dist.all_reduce(total)  # sum_r l_r = L
        scaled = world * local
        return scaled + (total - scaled).detach()
