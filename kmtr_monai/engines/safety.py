"""Numerical safety for training: stop on a non-finite loss, refuse to checkpoint non-finite weights, clip gradients.

Ignite's ``TerminateOnNan`` ends the run as if it had finished (exit code 0, ``COMPLETED`` handlers still run) and
names neither the bundle nor the epoch; a days-long run that silently stops looks like a finished one. Hence
:class:`StopOnNonFiniteLoss` raises instead, so the process exits non-zero before any epoch-end checkpoint handler
can write the broken weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
from ignite.engine import Engine, Events

__all__ = ["StopOnNonFiniteLoss", "GradientClipping", "nonfinite_entries", "checked_state", "check_finite_state"]

logger = logging.getLogger(__name__)


def _default_loss(output) -> torch.Tensor | float:
    return output["loss"] if isinstance(output, Mapping) else output


def nonfinite_entries(state, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors (or floats) holding NaN or Inf in a nested state dict / list."""
    bad: list[str] = []
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "<tensor>")
    elif isinstance(state, float):
        if not math.isfinite(state):
            bad.append(prefix or "<float>")
    elif isinstance(state, Mapping):
        for k, v in state.items():
            bad += nonfinite_entries(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            bad += nonfinite_entries(v, f"{prefix}[{i}]")
    return bad


def checked_state(obj) -> Mapping:
    """What must be finite before ``obj`` is saved: a module's parameters (buffers may hold non-finite values by
    design, e.g. a conformal half-width of +inf when validation is too small for the stated coverage, or NaN before
    calibration), or the whole state dict of anything else (an optimizer)."""
    if isinstance(obj, torch.nn.Module):
        return {name: p.detach() for name, p in obj.named_parameters()}
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def check_finite_state(state: Mapping, what: str) -> None:
    """Raise ``FloatingPointError`` naming ``what`` and up to 10 entries when ``state`` holds NaN or Inf."""
    bad = nonfinite_entries(state)
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise FloatingPointError(f"{what}: refusing to save non-finite values in {bad[:10]}{more}; the previous "
                                 "checkpoint is kept")  # fmt: skip


class StopOnNonFiniteLoss:
    """Raise ``FloatingPointError`` at the first iteration whose loss is NaN or Inf.

    The message names the bundle, the epoch and the iteration (global and within the epoch). It is checked on
    ``ITERATION_COMPLETED``; attach it before any handler that saves on that event (the bundles list it first), and
    epoch-end checkpoint handlers never run because the exception ends the epoch.

    Args:
        bundle: the bundle's name, for the message.
        output_transform: the trainer output -> loss (default ``output["loss"]``).
    """

    def __init__(self, bundle: str = "?", output_transform: Callable = _default_loss) -> None:
        self.bundle, self.output_transform = bundle, output_transform

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        value = loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(loss)
        if bool(torch.isfinite(value).all()):
            return
        s = engine.state
        within = (s.iteration - 1) % s.epoch_length + 1 if s.epoch_length else s.iteration
        raise FloatingPointError(
            f"bundle {self.bundle!r}: non-finite loss {value.flatten()[:4].tolist()} at epoch {s.epoch}, iteration "
            f"{s.iteration} ({within}/{s.epoch_length} of the epoch); training stopped and no checkpoint was written "
            "from these weights (the last good model.pt, model_final.pt and resume/ files are kept). Lower "
            "learning_rate or set grad_clip_norm."
        )


class GradientClipping:
    """Clip the global gradient norm of ``optimizer``'s parameters to ``max_norm`` before every step.

    MONAI's ``SupervisedTrainer`` has no clipping option, and an Ignite handler on ``ITERATION_COMPLETED`` runs after
    the optimizer step, too late to clip. Replacing the trainer's whole ``iteration_update`` would duplicate MONAI's
    iteration; instead this registers a step pre-hook on the optimizer (``Optimizer.register_step_pre_hook``), which
    runs inside ``optimizer.step()`` - after DDP's gradient all-reduce and after AMP's ``GradScaler`` has unscaled
    the gradients - and calls ``torch.nn.utils.clip_grad_norm_``.

    Args:
        optimizer: the trainer's optimizer.
        max_norm: the largest global gradient norm; None switches clipping off (the handler does nothing).
        norm_type: the p of the p-norm.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float | None, norm_type: float = 2.0) -> None:
        if max_norm is not None and not (float(max_norm) > 0):
            raise ValueError(f"grad_clip_norm must be a positive number or null, got {max_norm!r}")
        self.optimizer, self.max_norm, self.norm_type = optimizer, max_norm, norm_type
        self._hook = None
        self.last_norm: float | None = None

    def _clip(self, optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            self.last_norm = float(torch.nn.utils.clip_grad_norm_(params, float(self.max_norm), self.norm_type))

    def attach(self, engine: Engine | None = None) -> None:
        if self.max_norm is not None and self._hook is None:
            self._hook = self.optimizer.register_step_pre_hook(self._clip)
