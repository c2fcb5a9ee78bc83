"""Training budgets in optimizer steps, early stopping on the validation metric, and the per-epoch history file.

These are trainer handlers for the bundles' ``SupervisedTrainer`` (``bundles/common/train.json``): the Stage III
budgets are set in optimizer steps (``max_steps``), training stops when the validation key metric has not improved
for ``early_stop_patience`` validations, and ``<output_dir>/history.csv`` holds one row per epoch (training loss,
learning rate and every validation metric) for the report's curves.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile

import numpy as np
import torch
from ignite.engine import Engine, Events

from kmtr_monai.distributed import is_main_process

__all__ = ["steps_per_epoch", "epochs_for_steps", "EarlyStopOnValidation", "MetricHistory"]


def steps_per_epoch(max_steps: int | None, loader) -> int:
    """Optimizer steps per epoch (the trainer's ``epoch_length``): ``len(loader)``, or ``max_steps`` when the whole
    budget is shorter than one pass over the data (a dense model at 4 subjects a batch on 700 subjects), so that the
    budget is exactly ``max_steps`` and the one epoch ends with a validation. ValueError on an empty loader or a
    non-positive budget."""
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int or null, got {max_steps!r}")
    if len(loader) < 1:
        raise ValueError("max_steps: the training dataloader is empty (fewer training subjects than one batch?)")
    return len(loader) if max_steps is None else min(len(loader), max_steps)


def epochs_for_steps(max_steps: int | None, max_epochs: int, loader) -> int:
    """Epochs of :func:`steps_per_epoch` steps that give at least ``max_steps`` optimizer steps; ``max_epochs`` when
    ``max_steps`` is None. ValueError on an empty loader or a non-positive budget."""
    if max_steps is None:
        return int(max_epochs)
    return math.ceil(max_steps / steps_per_epoch(max_steps, loader))


class EarlyStopOnValidation:
    """Stop the trainer when the evaluator's key metric has not improved for ``patience`` validations.

    It reads ``evaluator.state.best_metric_epoch``, which MONAI's evaluator keeps with the bundle's
    ``metric_cmp_fn`` (the same comparison that chooses ``model.pt``), so the checkpoint kept is the best epoch and
    training ends ``patience`` validations after it. Why not MONAI's ``EarlyStopHandler``: in a bundle config it
    needs the trainer inside the evaluator's handlers while the trainer's ``ValidationHandler`` needs the
    evaluator, a reference cycle the config parser cannot build. Attach it to the trainer after the
    ``ValidationHandler``. ``patience`` None: never stops. After a resume the count starts again.
    """

    def __init__(self, evaluator: Engine, patience: int | None, val_interval: int = 1) -> None:
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"early_stop_patience must be a positive int or null, got {patience!r}")
        self.evaluator, self.patience, self.val_interval = evaluator, patience, max(1, int(val_interval))

    def attach(self, engine: Engine) -> None:
        if self.patience is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        best = getattr(self.evaluator.state, "best_metric_epoch", -1)
        if best is None or best < 1:
            return
        if engine.state.epoch - best >= self.patience * self.val_interval:
            engine.logger.info(f"early stop at epoch {engine.state.epoch}: the validation key metric last improved "
                               f"at epoch {best} (patience {self.patience})")  # fmt: skip
            engine.terminate()


class MetricHistory:
    """``path`` (CSV): one row per epoch with ``epoch``, ``iteration``, ``lr``, ``train_loss`` (the epoch's mean
    loss), ``train_<name>`` for every scalar a dict-returning network puts in its output (the epoch's mean: e.g. the
    k-space MAE's ``invariance`` and ``profile`` terms, so an auxiliary term that is or is not being met shows in the
    curve) and every scalar metric of the evaluator's last run (``val_*``), rewritten atomically each epoch.

    Rows of epochs at or after the current one are dropped first, so a resumed run continues the file. Written on
    the main process only. Attach to the trainer after the ``ValidationHandler``.
    """

    def __init__(self, path: str, evaluator: Engine | None = None, optimizer=None) -> None:
        self.path, self.evaluator, self.optimizer = str(path), evaluator, optimizer
        self._losses: list[float] = []
        self._terms: dict[str, list[float]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._clear)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _clear(self, engine: Engine) -> None:
        self._losses.clear()
        self._terms.clear()

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, dict):
            return
        loss = out.get("loss")
        if loss is not None:
            self._losses.append(float(loss.detach() if isinstance(loss, torch.Tensor) else loss))
        pred = out.get("pred")
        if isinstance(pred, dict):
            for name, value in pred.items():
                if isinstance(value, torch.Tensor) and value.ndim == 0:
                    self._terms.setdefault(name, []).append(float(value.detach()))

    def _rows(self, before_epoch: int) -> list[dict]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            return [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit() and int(r["epoch"]) < before_epoch]

    def _write(self, engine: Engine) -> None:
        if not is_main_process():
            return
        row = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
               "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else "",
               "train_loss": sum(self._losses) / len(self._losses) if self._losses else ""}  # fmt: skip
        row.update({f"train_{name}": sum(v) / len(v) for name, v in self._terms.items()})
        metrics = getattr(self.evaluator.state, "metrics", {}) if self.evaluator is not None else {}
        row.update({k: float(v) for k, v in metrics.items() if np.ndim(v) == 0})
        rows = self._rows(engine.state.epoch) + [row]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
