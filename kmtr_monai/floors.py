"""Linear floors (DESIGN §15): what a linear model reads from the models' own inputs, with no network at all.

Three inputs, each exactly as the ``regress`` bundle's validation preprocessing gives it to a model
(:func:`kmtr_monai.linear_eval.split_inputs`), then the protocol of :mod:`kmtr_monai.linear_eval`:

* ``image``: fully-sampled pixels (S,T,H,W), 2×2 average-pooled in-plane, flattened (S·T·H/2·W/2);
* ``zero_filled``: |ifft2c(mask·K)| at acceleration R (the zero-filled models' input), 2×2 pooled, flattened;
* ``kspace``: the sampled k-space values only, real, imaginary and magnitude of ``mask·K`` (unsampled lines are 0),
  2× average-pooled along the readout W, flattened (3·S·T·H·W/2).

A trained model on the same input should clear its floor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.linear_eval import (
    SPLITS, file_digest, finish_run, inputs_digest, linear_eval, reduced_cache, reduced_split, split_inputs,
)  # fmt: skip

__all__ = ["FLOOR_INPUTS", "floor_features", "run_floor"]

FLOOR_INPUTS = ("image", "zero_filled", "kspace")


def floor_features(input: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(N, D) float32 floor features from :func:`split_inputs` arrays (see the module docstring).

    ``image`` / ``zero_filled``: (N,S,T,H,W) → 2×2 mean over (H, W) → (N, S·T·⌊H/2⌋·⌊W/2⌋). ``kspace``:
    ``kspace`` (N,2,S,T,H,W) and ``mask`` (N,S,T,H) → [re, im, |·|] of ``mask·K`` (N,3,S,T,H,W) → mean over W
    pairs → (N, 3·S·T·H·⌊W/2⌋). The mask is applied here again, so nothing at an unsampled location can reach the
    features.
    """
    if input in ("image", "zero_filled"):
        x = torch.as_tensor(arrays[input], dtype=torch.float32)
        n, s, t, h, w = x.shape
        pooled = torch.nn.functional.avg_pool2d(x.reshape(n * s * t, 1, h, w), 2)
        return pooled.reshape(n, -1).numpy()
    if input == "kspace":
        k = torch.as_tensor(arrays["kspace"], dtype=torch.float32)
        m = torch.as_tensor(arrays["mask"], dtype=torch.float32)
        k = k * m[:, None, ..., None]
        x = torch.cat([k, torch.hypot(k[:, :1], k[:, 1:2])], dim=1)  # (N, 3, S, T, H, W)
        w = x.shape[-1] // 2 * 2
        x = x[..., :w].reshape(*x.shape[:-1], w // 2, 2).mean(-1)
        return x.reshape(x.shape[0], -1).numpy()
    raise ValueError(f"input must be one of {FLOOR_INPUTS}, got {input!r}")


def run_floor(cohort: str | Path, bundles: str | Path, preset: str, input: str, acceleration: int | None, task: str,
              out: str | Path, cache: str | Path, overrides: Mapping | None = None) -> dict:  # fmt: skip
    """The ``input`` floor for ``task`` (``"regress"`` or ``"classify"``) on ``cohort``'s splits.

    Writes ``out/test/<R{acceleration} | full>/`` (``phenotypes.csv`` or ``diseases.csv``, ``targets.csv``,
    ``metrics.csv``: ``val_mean_mae``, ``val_mean_r2`` or ``val_mean_auc``, ``val_f1``, ``val_threshold``, per-target
    scores, the chosen ``alpha_<phenotype>`` / ``C_<disease>``) and ``out/eval/metrics.csv`` (the same on the
    validation split). ``acceleration`` is ignored for ``image`` (key ``"full"``). Loaded arrays and the reduced
    features are cached under ``cache`` (shared by both tasks and by the probes). ``overrides``: further bundle
    config keys of the inputs (the pipeline's ``--set``; part of the cache key).

    Returns ``{"tests": {"4" or "full": "<out.name>/test/R4"}, "validation": {metric: value}, "minutes": float}``.
    """
    if input not in FLOOR_INPUTS:
        raise ValueError(f"input must be one of {FLOOR_INPUTS}, got {input!r}")
    start = time.perf_counter()
    r = None if input == "image" else int(acceleration if acceleration is not None else 4)
    tag = f"{input}_{'full' if r is None else f'R{r}'}"
    digest = file_digest("floor", 1, tag, *(inputs_digest(cohort, bundles, preset, input, r, s, overrides)
                                            for s in SPLITS))  # fmt: skip

    def features() -> tuple[dict, dict]:
        arrays = {s: split_inputs(cohort, bundles, preset, input, r, s, cache, overrides) for s in SPLITS}
        return {"floor": {s: floor_features(input, arrays[s]) for s in SPLITS}}, arrays

    red = reduced_cache(Path(cache) / f"floor_{tag}.npz", digest, features)
    key = "phenotypes" if task == "regress" else "diseases"
    result = linear_eval({}, {s: red[f"{key}_{s}"] for s in SPLITS}, task, reduced=reduced_split(red, "floor"))
    return finish_run(out, "full" if r is None else str(r), result, list(red["eid_test"]), red[f"{key}_test"],
                      minutes=(time.perf_counter() - start) / 60)  # fmt: skip
