"""Linear probes (DESIGN §15): the frozen features of a pretrained encoder under the linear protocol of
:mod:`kmtr_monai.linear_eval` ("the representation holds it" against "the head did not learn it").

Encoders, all built from the ``regress`` bundle's own config entries (``encoder``, ``baselines#image_mae``), so
network definitions and strict checkpoint loading are the bundle's:

* ``kmtr``: ``init`` aligned, ``align_ckpt`` = ``ckpts["align"]`` (the align bundle's ``models/model.pt``);
* ``stage1``: ``init`` stage1, ``stage1_ckpt`` = ``ckpts["stage1"]`` (the kspace-mae bundle's checkpoint);
* ``scratch``: ``init`` scratch, random weights drawn under ``torch.manual_seed(seed)`` (the bundle's ``seed``);
* ``imagemae``: ``baselines#image_mae`` with ``image_mae_ckpt`` = ``ckpts["imagemae"]``, reading fully-sampled
  images (no acceleration: test key ``"full"``).

The k-space encoders read the undersampled k-space and mask at ``acceleration``. Features, computed once per split
in eval mode under ``torch.no_grad()`` from the tokens (B, 1+N, dim) of ``encoder.encode``:

* ``mean``: the mean of the valid non-class tokens (B, dim), as the models' pooled feature (``pool_tokens``);
* ``view_time``: the mean of the valid tokens of each (view, time step) cell, concatenated (B, S·T'·dim; small
  5·4·192 = 3,840), the pooling Stage II aligns (``pool_tokens(..., "view_time")``): it keeps views and cardiac
  phases apart, not spatial position;
* ``layout``: every non-class token in the encoder's token-grid order (view, time, ky/y, kx/x), invalid tokens
  zeroed, flattened (B, N·dim): tiny 5·2·4·4 tokens × 64 = 10,240 features, small 5·4·6·6 × 192 = 138,240. Kept
  whole (no 2×2 token averaging): the protocol's cost after one Gram product does not depend on the feature count
  (:func:`kmtr_monai.linear_eval.reduce_features`; 280×138,240 training features reduce in about 3-5 s on 2 cores)
  and only the reduced coordinates are cached.

``metrics.csv`` also holds ``mean_cosine`` and ``effective_rank`` of the test features (DESIGN §15: a collapsed
embedding has mean cosine near 1 and a small effective rank).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.linear_eval import (
    SPLITS, bundle_parser, effective_rank, file_digest, finish_run, inputs_digest, linear_eval, mean_pairwise_cosine,
    reduced_cache, reduced_split, split_inputs,
)  # fmt: skip

__all__ = ["ENCODERS", "POOLINGS", "build_encoder", "encoder_features", "run_probe", "mean_pairwise_cosine",
           "effective_rank"]  # fmt: skip

ENCODERS = ("kmtr", "stage1", "scratch", "imagemae")
POOLINGS = ("mean", "view_time", "layout")
_CKPT = {"kmtr": "align", "stage1": "stage1", "imagemae": "imagemae"}  # the ckpts entry each encoder needs


def _overrides(encoder: str, ckpts: Mapping[str, str | Path]) -> dict:
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    need = _CKPT.get(encoder)
    if need is not None and (need not in ckpts or not Path(ckpts[need]).is_file()):
        raise FileNotFoundError(f"probe {encoder!r} needs ckpts[{need!r}], an existing checkpoint; got "
                                f"{ckpts.get(need)!r}")  # fmt: skip
    if encoder == "imagemae":
        return {"input": "image", "init": "aligned", "encoder": "@baselines#image_mae",
                "image_mae_ckpt": str(Path(ckpts["imagemae"]).resolve())}  # fmt: skip
    over = {"input": "kspace", "init": {"kmtr": "aligned", "stage1": "stage1", "scratch": "scratch"}[encoder]}
    if encoder == "kmtr":
        over["align_ckpt"] = str(Path(ckpts["align"]).resolve())
    if encoder == "stage1":
        over["stage1_ckpt"] = str(Path(ckpts["stage1"]).resolve())
    return over


def build_encoder(bundles: str | Path, preset: str, encoder: str, ckpts: Mapping[str, str | Path],
                  overrides: Mapping | None = None) -> torch.nn.Module:  # fmt: skip
    """The ``regress`` bundle's encoder for probe ``encoder`` (module docstring), weights loaded, in eval mode on
    CPU, parameters frozen. ``scratch`` is drawn under the bundle's ``seed`` without touching the global RNG.
    ``overrides``: further config keys the encoder was trained with (e.g. ``tokenizer``, ``kspace_patch``)."""
    over = {**(overrides or {}), **_overrides(encoder, ckpts)}
    parser = bundle_parser(Path(bundles).resolve() / "regress", preset, over)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(parser.get_parsed_content("seed")))
        net = parser.get_parsed_content("encoder", lazy=False)
    return net.requires_grad_(False).eval()


@torch.no_grad()
def encoder_features(net: torch.nn.Module, arrays: Mapping[str, np.ndarray], batch_size: int = 8
                     ) -> dict[str, np.ndarray]:  # fmt: skip
    """``{"mean": (N, dim), "view_time": (N, S·T'·dim), "layout": (N, n_tokens·dim)}`` float32 of ``net`` on
    :func:`split_inputs` arrays
    (``kspace`` (N,2,S,T,H,W) + ``mask`` (N,S,T,H) for a k-space encoder, ``image`` (N,S,T,H,W) for an image one)."""
    from kmtr_monai.networks.mae import pool_tokens

    image = getattr(net, "input_kind", "kspace") == "image"
    inputs = (arrays["image"],) if image else (arrays["kspace"], arrays["mask"])
    inputs = [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in inputs]
    feats = {p: [] for p in POOLINGS}
    for i in range(0, inputs[0].shape[0], batch_size):
        tokens, _, valid = net.encode(*(t[i : i + batch_size] for t in inputs), return_valid=True)
        feats["mean"].append(pool_tokens(tokens, "mean", valid).float())
        feats["view_time"].append(pool_tokens(tokens, "view_time", valid, net.view_time_cells).float())
        feats["layout"].append((tokens[:, 1:] * valid[..., None].to(tokens.dtype)).flatten(1).float())
    return {p: torch.cat(f).numpy() for p, f in feats.items()}


def run_probe(cohort: str | Path, bundles: str | Path, preset: str, encoder: str, pooling: str, task: str,
              ckpts: Mapping[str, str | Path], acceleration: int | None, out: str | Path, cache: str | Path,
              overrides: Mapping | None = None) -> dict:  # fmt: skip
    """Probe ``encoder`` with ``pooling`` for ``task`` (``"regress"`` or ``"classify"``) on ``cohort``'s splits.

    ``ckpts``: ``{"align": ..., "stage1": ..., "imagemae": ...}`` checkpoint paths (only the one the encoder needs
    is read). ``acceleration``: R of the k-space input (default 4; ignored for ``imagemae``). ``overrides``: further
    bundle config keys, for the inputs and the encoder alike (the pipeline's ``--set``; part of the cache key).
    Writes ``out/test/<R{acceleration} | full>/`` (as :func:`kmtr_monai.floors.run_floor`, with ``mean_cosine`` and
    ``effective_rank`` of the test features in ``metrics.csv``) and ``out/eval/metrics.csv``. Inputs and the
    features of both poolings are cached under ``cache`` (keyed by the datalist, configs and checkpoint bytes), so
    a second probe of the same encoder (other pooling or task) runs no network.

    Returns ``{"tests": {"4" or "full": "<out.name>/test/R4"}, "validation": {metric: value}, "minutes": float}``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    start = time.perf_counter()
    over = _overrides(encoder, ckpts)
    input = over["input"]
    r = None if input == "image" else int(acceleration if acceleration is not None else 4)
    tag = f"{encoder}_{'full' if r is None else f'R{r}'}"
    ckpt = _CKPT.get(encoder)
    sources = [inputs_digest(cohort, bundles, preset, input, r, s, overrides) for s in SPLITS]
    extra = sorted((overrides or {}).items())
    digest = file_digest("probe", 2, tag, preset, *sources, *([Path(ckpts[ckpt]).resolve()] if ckpt else []),
                         *([repr(extra)] if extra else []))  # fmt: skip

    def features() -> tuple[dict, dict]:
        arrays = {s: split_inputs(cohort, bundles, preset, input, r, s, cache, overrides) for s in SPLITS}
        net = build_encoder(bundles, preset, encoder, ckpts, overrides)
        per_split = {s: encoder_features(net, arrays[s]) for s in SPLITS}
        return {p: {s: per_split[s][p] for s in SPLITS} for p in POOLINGS}, arrays

    red = reduced_cache(Path(cache) / f"probe_{tag}.npz", digest, features)
    key = "phenotypes" if task == "regress" else "diseases"
    result = linear_eval({}, {s: red[f"{key}_{s}"] for s in SPLITS}, task, reduced=reduced_split(red, pooling))
    extra = {m: float(red[f"{pooling}_{m}"]) for m in ("mean_cosine", "effective_rank")}
    return finish_run(out, "full" if r is None else str(r), result, list(red["eid_test"]), red[f"{key}_test"],
                      extra=extra, minutes=(time.perf_counter() - start) / 60)  # fmt: skip
