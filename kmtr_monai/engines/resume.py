"""Resume a killed training run: periodic, atomic resume checkpoints of everything a run's future depends on.

Built on Ignite's ``Checkpoint`` with ``DiskSaver(atomic=True)`` (write to a temporary file, then rename; only rank 0
writes; DDP wrappers are unwrapped) and ``Checkpoint.load_objects``. What is ours:

* :class:`RngState` - Ignite saves no random state. A resumed epoch only repeats the uninterrupted one if torch
  (CPU and CUDA), numpy, Python ``random`` and the private ``RandomState`` of every MONAI random transform in the
  training data chain (with ``num_workers=0`` they advance in the main process across epochs) are restored, per
  rank under DDP (each rank draws its own masks);
* :class:`ResumeCheckpoint` - the handler: saves every ``interval`` epochs (or iterations), refuses non-finite
  weights, finds the latest file on start and loads it with ``weights_only=True``, keeping the configured
  ``max_epochs`` (so a run can be extended).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from kmtr_monai.distributed import get_rank, get_world_size, is_dist_active
from kmtr_monai.engines.safety import check_finite_state, checked_state

__all__ = ["RngState", "ResumeCheckpoint", "latest_resume_checkpoint"]

logger = logging.getLogger(__name__)
PREFIX = "resume"
_FILE = re.compile(rf"^{PREFIX}_checkpoint_(\d+)\.pt$")


def _np_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _np_tuple(state: dict) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


def _random_transforms(root) -> list:
    """Every ``Randomizable`` reachable from a dataset / Compose / transform list, in a stable order."""
    from monai.transforms import Compose, Randomizable

    found, stack, seen = [], [root], set()
    while stack:
        obj = stack.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack = list(obj) + stack
            continue
        if hasattr(obj, "transform") and not isinstance(obj, Randomizable):  # a dataset
            stack.insert(0, obj.transform)
            continue
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, Compose):
            stack = list(obj.transforms) + stack
    return found


class RngState:
    """``state_dict``/``load_state_dict`` of the random generators a training run draws from.

    Args:
        data: the training dataset (or its transform chain); the ``RandomState`` of each MONAI random transform in it
            is saved too. None saves the global generators only.

    Under DDP ``state_dict`` gathers every rank's state (a collective: every rank must call it, as Ignite's
    ``Checkpoint`` does) and ``load_state_dict`` restores this rank's entry. Everything is stored as tensors and
    plain Python values, so the file loads with ``weights_only=True``.
    """

    def __init__(self, data=None) -> None:
        self.data = data

    def _local(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": _np_state(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_np_state(t.R.get_state()) for t in _random_transforms(self.data)],
        }

    def state_dict(self) -> dict:
        local = self._local()
        if not is_dist_active():
            return {"ranks": [local]}
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return {"ranks": gathered}

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"]
        rank, world = get_rank(), get_world_size()
        if len(ranks) != world:
            logger.warning(f"resume: random state saved by {len(ranks)} rank(s), now {world}; rank {rank} uses entry "
                           f"{rank % len(ranks)}, so data order and masks will not repeat the interrupted run")  # fmt: skip
        local = ranks[rank % len(ranks)]
        torch.set_rng_state(local["torch"])
        if local["cuda"] and torch.cuda.is_available() and len(local["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(local["cuda"])
        np.random.set_state(_np_tuple(local["numpy"]))
        version, internal, gauss = local["python"]
        random.setstate((version, tuple(internal), gauss))
        transforms = _random_transforms(self.data)
        if len(transforms) != len(local["transforms"]):
            raise ValueError(f"resume: the checkpoint holds the state of {len(local['transforms'])} random "
                             f"transform(s) but the training chain has {len(transforms)}: the config changed")  # fmt: skip
        for t, s in zip(transforms, local["transforms"]):
            t.R.set_state(_np_tuple(s))


def latest_resume_checkpoint(save_dir: str | Path) -> Path | None:
    """The resume file with the highest iteration count in ``save_dir`` (None when there is none)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in save_dir.iterdir() if (m := _FILE.match(p.name))]
    return max(found)[1] if found else None


class ResumeCheckpoint:
    """Save and restore the full training state so a killed run continues where its last checkpoint left it.

    Saves ``save_dict`` (model, optimizer, LR scheduler, best-metric state, ...) plus the trainer's state, its AMP
    scaler when it has one, and :class:`RngState` to ``save_dir/resume_checkpoint_<iteration>.pt`` every ``interval``
    epochs (``unit="epoch"``) or iterations (``unit="iteration"``), atomically, keeping the last ``n_saved``.
    Attach it after the validation handler, so an epoch's checkpoint holds the state after its validation.

    With ``resume="auto"`` the trainer, on start, loads the latest file in ``save_dir`` if there is one; a path loads
    that file; ``False``/None never loads. The configured ``max_epochs`` wins over the saved one. Resuming from an
    epoch-end checkpoint repeats the interrupted epoch exactly (same data order, masks, augmentations); from a
    mid-epoch (iteration) checkpoint Ignite continues the epoch's count with a new data order.

    Args:
        save_dir: folder of the resume files (the bundles use ``ckpt_dir/resume``).
        save_dict: ``{name: object with state_dict/load_state_dict}``.
        interval, unit: how often to save.
        n_saved: how many resume files to keep.
        resume: ``"auto"``, a file path, or False.
        data: the training dataset, for the random state of its transforms (see :class:`RngState`).
        bundle: the bundle's name, for messages.
    """

    def __init__(self, save_dir: str, save_dict: dict, interval: int = 1, unit: str = "epoch", n_saved: int = 2,
                 resume: str | bool | None = "auto", data=None, bundle: str = "?") -> None:  # fmt: skip
        if unit not in ("epoch", "iteration"):
            raise ValueError(f"bundle {bundle!r}: resume_unit must be 'epoch' or 'iteration', got {unit!r}")
        if int(interval) < 1:
            raise ValueError(f"bundle {bundle!r}: resume_interval must be a positive integer, got {interval!r}")
        if isinstance(resume, str) and resume.lower() in ("false", "none", "off", ""):
            resume = False
        self.save_dir, self.save_dict, self.interval, self.unit = Path(save_dir), dict(save_dict), int(interval), unit
        self.n_saved, self.resume, self.data, self.bundle = int(n_saved), resume, data, bundle
        self.checkpoint: Checkpoint | None = None
        self.to_save: dict = {}
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        self.to_save = {**self.save_dict, "trainer": engine, "rng": RngState(self.data)}
        saver = DiskSaver(str(self.save_dir), atomic=True, require_empty=False, create_dir=True)
        self.checkpoint = Checkpoint(self.to_save, saver, filename_prefix=PREFIX, n_saved=self.n_saved,
                                     global_step_transform=lambda e, _: e.state.iteration, include_self=True)  # fmt: skip
        event = Events.EPOCH_COMPLETED if self.unit == "epoch" else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self._save)
        engine.add_event_handler(Events.STARTED, self._add_scaler)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self._load)

    def _add_scaler(self, engine: Engine) -> None:
        """MONAI's trainer makes its AMP ``GradScaler`` in ``run()``, after the handlers are attached; Ignite's
        ``Checkpoint`` keeps a reference to ``to_save``, so adding the scaler here saves it too."""
        if getattr(engine, "scaler", None) is not None:
            self.to_save["scaler"] = engine.scaler

    def _save(self, engine: Engine) -> None:
        for name, obj in self.save_dict.items():
            if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
                check_finite_state(checked_state(obj), f"bundle {self.bundle!r}: resume checkpoint at epoch "
                                                     f"{engine.state.epoch}, iteration {engine.state.iteration}, "
                                                     f"entry {name!r}")  # fmt: skip
        self.checkpoint(engine)

    def _load(self, engine: Engine) -> None:
        if self.resume == "auto" or self.resume is True:
            path = latest_resume_checkpoint(self.save_dir)
            if path is None:
                logger.info(f"bundle {self.bundle!r}: no resume checkpoint in {self.save_dir}; starting from epoch 0")
                return
        else:
            path = Path(str(self.resume))
            if not path.is_file():
                raise FileNotFoundError(f"bundle {self.bundle!r}: resume checkpoint {path} not found (key 'resume')")
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = [*self.to_save, "checkpointer"]
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"bundle {self.bundle!r}: resume checkpoint {path} lacks entries {missing} "
                             f"(has {sorted(state)}); it was written by another bundle or version (set resume false or remove "
                             f"{self.save_dir} to start afresh)")  # fmt: skip
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects({k: v for k, v in self.to_save.items()}, state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"bundle {self.bundle!r}: resume checkpoint {path} does not fit this run (to start afresh "
                             f"instead, set resume false or remove {self.save_dir}): {err}") from err  # fmt: skip
        saved = [(p, f) for p, f in state["checkpointer"]["_saved"] if (self.save_dir / f).is_file()]
        self.checkpoint.load_state_dict({"_saved": saved})  # so the oldest files are rotated out as before
        if max_epochs is not None:  # the configured value wins; one at or below the saved epoch ends the run at once
            engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        self.resumed_from = path
        logger.info(f"bundle {self.bundle!r}: resumed from {path} at epoch {engine.state.epoch}, iteration "
                    f"{engine.state.iteration} (max_epochs {engine.state.max_epochs})")  # fmt: skip
