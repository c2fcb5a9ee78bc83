"""Checkpoints: atomic writes, strict loading with ``weights_only=True``, and a best-metric saver handler."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from kmtr_monai.distributed import is_main_process
from kmtr_monai.engines.safety import check_finite_state, checked_state


def load_encoder_weights(
    module: nn.Module, checkpoint_path: str | os.PathLike, key: str | None = None, prefix: str | None = None
) -> nn.Module:
    """Strictly load a (sub-)state-dict from a checkpoint into ``module``; returns ``module``.

    Args:
        module: target module.
        checkpoint_path: file written by ``torch.save`` (loaded with ``weights_only=True``, on CPU).
        key: top-level entry holding the state dict (e.g. ``"network"`` for MONAI CheckpointSaver files with
            several objects); None uses the whole file.
        prefix: keep only entries starting with ``prefix`` and strip it (e.g. ``"kspace_encoder."`` to pull the
            encoder out of a DualEncoder checkpoint, or ``"module."`` for a DDP-wrapped save).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, when ``key`` is absent, no entry has ``prefix``, or the keys/shapes do not
            match exactly (lists missing, unexpected and shape-mismatched keys). MONAI's ``copy_model_state``
            skips mismatches silently, which would let a wrongly-sized Stage I checkpoint start Stage II from
            random weights; hence this strict loader. Also when a tokenizer's recorded ``input_shape`` (S, T, H, W)
            differs from the module's: an encoder of the other ``kspace_geometry`` or crop (a checkpoint without the
            record, from before it existed, loads with a warning).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            avail = sorted(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"checkpoint {path}: key {key!r} not found; available: {avail}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path}: expected a state dict (mapping), got {type(obj).__name__}")
    state = dict(obj)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"checkpoint {path}: no entries start with prefix {prefix!r}")
    own = module.state_dict()
    unrecorded = sorted(k for k in set(own) - set(state) if k.endswith("input_shape"))
    if unrecorded:  # a checkpoint from before the input grid was recorded
        logging.getLogger(__name__).warning(f"checkpoint {path}: no recorded input grid ({unrecorded}); loaded "
                                            "unchecked, so it must come from the same crop and kspace_geometry")
        state |= {k: own[k] for k in unrecorded}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint {path} (key={key!r}, prefix={prefix!r}) does not match {type(module).__name__}: "
            f"missing keys {missing}; unexpected keys {unexpected}; shape mismatches {mismatched}"
        )
    other_grid = sorted(k for k in own if k.endswith("input_shape") and not torch.equal(state[k], own[k]))
    if other_grid:
        k = other_grid[0]
        raise ValueError(
            f"checkpoint {path} (key={key!r}): {k} = (S, T, H, W) {tuple(state[k].tolist())} was trained on "
            f"another input grid than this {type(module).__name__} takes, {tuple(own[k].tolist())}; build it with "
            "the checkpoint's crop, frames, views and kspace_geometry (H is the phase-encode lines: crop in "
            "'image_crop', pe_lines in 'acquisition')"
        )
    module.load_state_dict(state, strict=True)
    return module


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace`` onto ``path``.

    Readers (another rank, a resumed job) never see a half-written file; on error the temporary file is
    removed. Creates the parent folder. Returns the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _state_dict(obj) -> dict:
    """State dict of a module/optimizer, unwrapping DDP/DataParallel so keys carry no ``module.`` prefix."""
    obj = getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
    return obj.state_dict()


class BestCheckpoint:
    """Save ``{name: obj.state_dict()}`` to ``save_dir/filename`` whenever the evaluator's metric improves.

    MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so a job killed mid-write leaves a truncated
    ``model.pt`` that the next stage would fail to load; this handler writes to a temporary file and renames it.
    Attach it to a ``SupervisedEvaluator`` (e.g. in ``val_handlers``). ``metric_name`` defaults to the evaluator's key
    metric; ``mode`` is ``"min"`` for errors and ``"max"`` for scores. ``final_filename`` also saves after every
    evaluation (the latest state).

    Non-finite weights are never written (``FloatingPointError``, the previous files are kept), and a NaN/Inf key
    metric never counts as an improvement. ``state_dict``/``load_state_dict`` carry the best value across a resume.
    """

    def __init__(self, save_dir: str, save_dict: dict, metric_name: str | None = None, mode: str = "min",
                 filename: str = "model.pt", final_filename: str | None = None) -> None:  # fmt: skip
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        self.save_dir, self.save_dict, self.metric_name, self.mode = str(save_dir), save_dict, metric_name, mode
        self.filename, self.final_filename = filename, final_filename
        self.best = math.inf if mode == "min" else -math.inf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _save(self, name: str, engine: Engine) -> None:
        state = {key: _state_dict(obj) for key, obj in self.save_dict.items()}
        path = os.path.join(self.save_dir, name)
        check_finite_state({key: checked_state(obj) for key, obj in self.save_dict.items()}, f"BestCheckpoint {path}")
        state["metrics"] = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        save_checkpoint_atomic(state, path)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name not in engine.state.metrics:
            raise KeyError(f"BestCheckpoint: metric {name!r} not in evaluator metrics {sorted(engine.state.metrics)}")
        value = float(engine.state.metrics[name])
        if not math.isfinite(value):
            logging.getLogger(__name__).warning(f"BestCheckpoint: metric {name} = {value} is not finite; "
                                                f"{self.filename} is not updated")  # fmt: skip
        elif (value < self.best) if self.mode == "min" else (value > self.best):
            self._save(self.filename, engine)
            self.best = value  # only once saved: a refused save leaves the previous best in force
        if self.final_filename:
            self._save(self.final_filename, engine)


class LoadCheckpoint:
    """Strictly load each module of ``load_dict`` from entry ``name`` of ``load_path`` when the engine starts.

    Replaces MONAI's ``CheckpointLoader`` in evaluation configs: that one raises PyTorch's ``load_state_dict`` error,
    which names neither the file nor the bundle, and with a single object it silently treats a file lacking the key
    as a bare state dict. This one goes through :func:`load_encoder_weights` (``weights_only=True``; the error names
    the file and the entry and lists missing, unexpected and shape-mismatched keys) and prefixes the bundle name.
    """

    def __init__(self, load_path: str, load_dict: dict, bundle: str = "?") -> None:
        self.load_path, self.load_dict, self.bundle = str(load_path), dict(load_dict), bundle

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        for name, obj in self.load_dict.items():
            module = obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj
            if not isinstance(module, nn.Module):
                raise TypeError(f"bundle {self.bundle!r}: LoadCheckpoint entry {name!r} is a "
                                f"{type(obj).__name__}, not a module")  # fmt: skip
            try:
                load_encoder_weights(module, self.load_path, key=name)
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(f"bundle {self.bundle!r}: {err}") from None
        logging.getLogger(__name__).info(f"bundle {self.bundle!r}: loaded {sorted(self.load_dict)} from {self.load_path}")
