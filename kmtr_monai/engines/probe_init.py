"""Start a probe head at the linear probe's closed-form fit (the LP of LP-FT) when training starts.

:class:`ProbeHeadInit` is attached to every bundle's trainer and acts only when the network is a Stage III
:class:`~kmtr_monai.networks.downstream.TaskModel` whose head is a
:class:`~kmtr_monai.networks.heads.LinearProbeHead` not yet fitted (``head_kind: "probe"``). Then, at
``Events.STARTED`` (after :class:`~kmtr_monai.engines.resume.ResumeCheckpoint`, so a resumed run, whose head is
already fitted, is left alone):

1. the encoder runs once, in eval mode and without gradients, over the training and the validation subjects,
   both through the bundle's deterministic validation preprocessing (the phase map and ky–t mask seeded by the
   subject, no augmentation: the linear probes' inputs; the validation split is the validator's own cached
   dataset), and the head's read-out features are collected. Every rank of a DDP run reads all subjects, without
   a sampler, and so fits the same model. Why not the training
   loader: its augmentations cost the fit (frozen image MAE, validation R² 0.351 with the training loader's random
   shifts against 0.437 without them);
2. :func:`kmtr_monai.linear_eval.fit_linear_readout` fits the probe protocol's linear model on them (ridge per
   phenotype, balanced L2 logistic per disease, strength chosen on validation);
3. the fit is written into the head (:meth:`LinearProbeHead.set_readout`), in the head's own output units: the
   standardised phenotypes a :class:`~kmtr_monai.networks.heads.PhenotypeRegressor` scales back, or the logits.

Why our own handler: MONAI and Ignite have no closed-form head initialisation.
"""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader

from kmtr_monai.linear_eval import fit_linear_readout
from kmtr_monai.networks.heads import LinearProbeHead, PhenotypeRegressor

__all__ = ["ProbeHeadInit", "install_fit"]


def install_fit(wrapper: torch.nn.Module, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> dict:
    """Fit the probe protocol's linear model on read-out features ``x`` (N, F) / ``xv`` (M, F) and targets ``y`` /
    ``yv`` (native units or 0/1) and write it into ``wrapper.head`` (a :class:`LinearProbeHead` inside a
    ``PhenotypeRegressor``, whose standardised output it is converted to, or a ``DiseaseClassifier``: logits).
    Returns :func:`fit_linear_readout`'s result."""
    task = "regress" if isinstance(wrapper, PhenotypeRegressor) else "classify"
    fit = fit_linear_readout(x, xv, y, yv, task)
    weight, bias = fit["weight"], fit["bias"]
    if task == "regress":  # native units → the standardised output the PhenotypeRegressor scales back
        mean, std = (getattr(wrapper, k).detach().cpu().double().numpy() for k in ("target_mean", "target_std"))
        weight, bias = weight / std[:, None], (bias - mean) / std
    wrapper.head.set_readout(fit["mean"], fit["scale"], weight, bias)
    return fit


class ProbeHeadInit:
    """Fit a ``LinearProbeHead`` in closed form at the start of training (module docstring).

    Args:
        network: the trained network (a ``TaskModel``, possibly wrapped in DDP); anything else: no-op.
        datasets: ``{"training": ..., "validation": ...}``, the two splits' subjects through the deterministic
            validation preprocessing (any map-style dataset of preprocessed dicts).
        prepare_batch: the trainer's ``prepare_batch`` (batch → inputs, target, other inputs).
        device: where the batches go (the trainer's device). batch_size, num_workers: of the two loaders.
    """

    def __init__(self, network: torch.nn.Module, datasets: dict, prepare_batch, device=None, batch_size: int = 8,
                 num_workers: int = 0) -> None:  # fmt: skip
        self.network, self.datasets = network, datasets
        self.prepare_batch, self.device = prepare_batch, device
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def _model_and_head(self):
        model = getattr(self.network, "module", self.network)  # DDP
        wrapper = getattr(model, "head", None)
        head = getattr(wrapper, "head", None)
        return model, wrapper, head if isinstance(head, LinearProbeHead) else None

    def _features(self, model, head: LinearProbeHead, split: str) -> tuple[np.ndarray, np.ndarray]:
        """→ (read-out features (N, F), targets (N, K)) of every subject of ``split``, in datalist order."""
        loader = DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers)  # fmt: skip
        feats, targets = [], []
        with torch.no_grad():
            for batch in loader:
                first, target, rest, _ = self.prepare_batch(batch, self.device)
                out = model.encode(first, *rest)
                feats.append(head.features(out[0], out[2]).double().cpu())
                targets.append(torch.as_tensor(target).double().cpu())
        return torch.cat(feats).numpy(), torch.cat(targets).numpy()

    def __call__(self, engine: Engine) -> None:
        model, wrapper, head = self._model_and_head()
        if head is None or bool(head.fitted):
            return
        was_training = model.training
        model.eval()
        try:
            (x, y), (xv, yv) = (self._features(model, head, split) for split in ("training", "validation"))
        finally:
            model.train(was_training)
        fit = install_fit(wrapper, x, y, xv, yv)
        score = "R²" if isinstance(wrapper, PhenotypeRegressor) else "AUC"
        engine.logger.info(f"probe head fitted in closed form on {len(x)} training subjects ({x.shape[1]} features): "
                           f"mean validation {score} {np.nanmean(fit['val_score']):.3f}")  # fmt: skip
