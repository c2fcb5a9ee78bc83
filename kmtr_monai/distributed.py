"""Process-group helpers: rank/world from torch.distributed or the torchrun environment, and gathers.

MONAI's multi-GPU bundle template leaves every rank believing it is rank 0 unless the config reads the rank
from somewhere; these helpers read it from ``torch.distributed`` when a process group exists and otherwise
from the variables torchrun exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), so they are correct both before
and after :func:`init_distributed`.

Two gathers live here because neither PyTorch nor Ignite gathers tensors whose first dimension differs across
ranks (a validation set split with ``DistributedSampler(even_divisible=False)``, or the last training batch):

* :func:`all_gather_with_grad` - differentiable, built on ``torch.distributed.nn.functional.all_gather`` whose
  backward sums the incoming gradients over ranks (used by the CLIP loss);
* :func:`all_gather_uneven` - no gradient, built on ``ignite.distributed`` (used by the epoch metrics).

Both pad every rank's tensor to the largest first dimension, gather, and drop the padding.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = [
    "is_dist_active",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "DistInfo",
    "init_distributed",
    "finalize_distributed",
    "all_gather_with_grad",
    "all_gather_uneven",
    "DistributedFailure",
    "ReportDistributedFailure",
]


class DistInfo(NamedTuple):
    """What :func:`init_distributed` returns; configs read fields by name (``@dist.device``), not by position."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def is_dist_active() -> bool:
    """True when a torch.distributed process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank: from torch.distributed if initialised, else ``$RANK`` (default 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def get_world_size() -> int:
    """World size: from torch.distributed if initialised, else ``$WORLD_SIZE`` (default 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def get_local_rank() -> int:
    """Rank within the node: ``$LOCAL_RANK`` (default 0); torch.distributed does not track it."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on global rank 0 (use to guard logging, checkpoint writing and file output)."""
    return get_rank() == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from the torchrun environment, idempotently.

    Args:
        backend: ``"nccl"``/``"gloo"``/...; default ``nccl`` when CUDA is available, else ``gloo``.
        timeout_s: collective timeout in seconds: when another rank has died or hangs, a collective (DDP's gradient
            all-reduce, a metric gather, the final barrier) raises after at most this long instead of waiting
            forever, so every rank exits (bundles: ``dist_timeout_s``).

    Returns:
        ``DistInfo(rank, world_size, local_rank, device)``; device is ``cuda:<local_rank>`` (made current) when CUDA is
        available, else ``cpu``. With ``WORLD_SIZE`` unset or 1 no process group is created (single process).
        A second call returns the same values without re-initialising.
    """
    local_rank = get_local_rank()
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(0, 1, local_rank, device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but environment variable(s) {missing} are not set; launch with torchrun "
            "or export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
        )
    if not timeout_s or float(timeout_s) <= 0:
        raise ValueError(f"dist_timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    from datetime import timedelta

    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=_env_int("RANK", 0),
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def finalize_distributed() -> None:
    """End of a DDP run: wait for every rank (barrier), then destroy the process group; no-op without one.

    Without the barrier a rank that finishes first tears down its gloo connections while rank 0 may still be
    writing checkpoints and metrics; one CI run of the 2-rank test saw that early rank abort at exit ("terminate
    called without an active exception", SIGABRT).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _gathered_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Differentiable all-gather along dim 0, allowing a different first dimension per rank.

    Args:
        x: (B_r, ...) local tensor on this rank.

    Returns:
        ``(x_global, offset)``: x_global is (sum_r B_r, ...) in rank order and ``x_global[offset:offset+B_r]``
        is this rank's ``x`` (the same autograd node, so gradients flow back directly). Gradients from the other
        ranks' losses reach ``x`` through the collective's backward, which sums them. Without an active process
        group (or world size 1) returns ``(x, 0)``.
    """
    if not is_dist_active():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    rank = dist.get_rank()
    sizes = _gathered_sizes(x.shape[0], x.device)
    max_n = max(sizes)
    pad = max_n - x.shape[0]
    x_pad = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], 0) if pad else x
    parts = list(all_gather(x_pad.contiguous()))
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[rank] = x  # keep the local autograd path exact (identity on values)
    return torch.cat(parts, 0), sum(sizes[:rank])


def all_gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradients through ``ignite.distributed``; first dims may differ.

    Args:
        x: (B_r, ...) local tensor.

    Returns:
        (sum_r B_r, ...) concatenated in rank order (``x`` itself when not distributed).
    """
    import ignite.distributed as idist

    if idist.get_world_size() <= 1:
        return x
    sizes = idist.all_gather(torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    sizes = [int(s) for s in sizes.tolist()]
    max_n = max(sizes)
    pad = max_n - x.shape[0]
    x_pad = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], 0) if pad else x
    gathered = idist.all_gather(x_pad.contiguous())  # (W*max_n, ...)
    chunks = gathered.reshape(len(sizes), max_n, *x.shape[1:])
    return torch.cat([chunks[r, :n] for r, n in enumerate(sizes)], 0)


class DistributedFailure(RuntimeError):
    """A collective failed on this rank: most likely another rank raised, died or stalled first."""


_COLLECTIVE_SIGNS = ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                     "socket")  # fmt: skip


def _is_collective_error(err: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err).lower() for s in _COLLECTIVE_SIGNS)


class ReportDistributedFailure:
    """Trainer handler (``Events.EXCEPTION_RAISED``) that says which rank failed and why, under DDP.

    When a rank raises, it exits; the others then fail in their next collective, at once (a closed connection) or
    after the process group's timeout (``dist_timeout_s``; a stalled peer). PyTorch's error there is a bare backend
    message. This re-raises it as :class:`DistributedFailure` naming this rank, the world size, the timeout and the
    bundle, and pointing at the other ranks' logs; any other exception is re-raised unchanged after one log line
    naming the rank. Without a process group it only re-raises (Ignite stops re-raising once an
    ``EXCEPTION_RAISED`` handler exists, so it must).
    """

    def __init__(self, bundle: str = "?", timeout_s: float | None = None) -> None:
        self.bundle, self.timeout_s = bundle, timeout_s

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine, err: BaseException) -> None:
        if not is_dist_active() or isinstance(err, DistributedFailure) or getattr(err, "_kmtr_rank_reported", False):
            raise err  # Ignite passes one exception through EXCEPTION_RAISED twice (iteration loop, then run)
        import logging

        rank, world = get_rank(), get_world_size()
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        if _is_collective_error(err):
            limit = f"{self.timeout_s:g} s (dist_timeout_s)" if self.timeout_s else "the process-group timeout"
            raise DistributedFailure(
                f"bundle {self.bundle!r}: rank {rank} of {world} stopped at {where}: a collective operation failed; "
                f"another rank has most likely raised, died or stalled (collectives give up after {limit}); see the "
                f"first error in the other ranks' output. Backend error: {type(err).__name__}: {err}"
            ) from err
        logging.getLogger(__name__).error(f"bundle {self.bundle!r}: rank {rank} of {world} raised at {where}: "
                                          f"{type(err).__name__}: {err}")  # fmt: skip
        try:
            err._kmtr_rank_reported = True
        except AttributeError:  # an exception type without __dict__
            pass
        raise err
