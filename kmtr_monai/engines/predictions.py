"""An evaluator handler that writes per-subject vector predictions in the clinical CSV format of inference."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.distributed import is_main_process


class SavePredictions:
    """Collect ``eid``, prediction and target of every evaluated subject; at epoch end write, in ``save_dir``:

    - ``kind="phenotypes"``: ``phenotypes.csv`` (``pred`` (B, K) native units, with ``pred ± interval_halfwidth``
      bounds when given);
    - ``kind="diseases"``: ``diseases.csv`` (``sigmoid(pred)`` (B, K) and labels at ``thresholds`` (K,));
    - ``targets.csv`` (eid + true values) when the evaluator has targets, so a report can score the split.

    The files are those of :mod:`kmtr_monai.io.outputs`, the same as inference writes. ``eid`` is read from
    ``engine.state.batch``. Under DDP the rows of all ranks are gathered and rank 0 writes.
    """

    def __init__(self, save_dir: str, kind: str, names: Sequence[str] | None = None,
                 interval_halfwidth: torch.Tensor | None = None, thresholds: torch.Tensor | None = None) -> None:  # fmt: skip
        if kind not in ("phenotypes", "diseases"):
            raise ValueError(f"kind must be 'phenotypes' or 'diseases', got {kind!r}")
        self.save_dir, self.kind = str(save_dir), kind
        self.names = list(names or (PHENOTYPES if kind == "phenotypes" else DISEASES))
        self.interval_halfwidth, self.thresholds = interval_halfwidth, thresholds

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.eids, self.preds, self.targets = [], [], []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if "eid" not in batch:
            raise KeyError(f"SavePredictions needs 'eid' in the batch (keep it in keep_keys); got {sorted(batch)}")
        self.eids += [str(e) for e in batch["eid"]]
        self.preds.append(output["pred"].detach().float().cpu())
        if output.get("label") is not None:
            self.targets.append(torch.as_tensor(output["label"]).detach().float().cpu())

    def _write(self, engine: Engine) -> None:
        import ignite.distributed as idist

        from kmtr_monai.io.outputs import write_diseases_csv, write_phenotypes_csv

        eids, pred = self.eids, torch.cat(self.preds).numpy().astype(np.float64)
        target = torch.cat(self.targets).numpy().astype(np.float64) if self.targets else None
        if idist.get_world_size() > 1:
            eids = sum(idist.all_gather(eids), [])
            pred = np.concatenate(idist.all_gather(pred))
            target = None if target is None else np.concatenate(idist.all_gather(target))
        if not is_main_process():
            return
        os.makedirs(self.save_dir, exist_ok=True)
        if self.kind == "phenotypes":
            hw = None if self.interval_halfwidth is None else self.interval_halfwidth.detach().cpu().double().numpy()
            bounds = (None, None) if hw is None else (pred - hw, pred + hw)
            write_phenotypes_csv(os.path.join(self.save_dir, "phenotypes.csv"), eids, pred, *bounds, names=self.names)
        else:
            prob = 1.0 / (1.0 + np.exp(-pred))
            thr = np.full(pred.shape[1], 0.5) if self.thresholds is None else self.thresholds.detach().cpu().numpy()
            write_diseases_csv(os.path.join(self.save_dir, "diseases.csv"), eids, prob, thr, names=self.names)
        if target is not None:
            write_phenotypes_csv(os.path.join(self.save_dir, "targets.csv"), eids, target, names=self.names)
