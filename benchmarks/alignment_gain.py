"""Stage II alignment gain: what CLIP alignment adds to the k-space encoder's pooled features.

Everything (data pipeline, network definitions, Stage I weight loading) is built from the ``align`` bundle
(``bundles/align/configs/train.json`` + ``bundles/presets/<preset>.json``) with ``monai.bundle.ConfigParser``, so
the features are those of the trained networks on exactly the data they were trained/validated on. Both the probe
training split and the evaluation split go through the bundle's deterministic ``validate#preprocessing`` (phase
map and acceleration mask seeded by ``eid``, one acceleration ``--acceleration``).

Encoders compared (pooled encoder features, the bundle's ``pooling``):
    scratch   random-init ``kspace_mae`` (seeded),
    Stage I   the k-space MAE of ``RUN/kspace-mae/models/model.pt`` (unaligned),
    aligned   the DualEncoder of ``RUN/align/models/model.pt`` (``kspace_features``),
    image     the Stage I image MAE on fully-sampled images (upper bound for the probe).

Reported: ridge linear-probe R^2 (``kmtr_monai.metrics.linear_probe_r2``; fitted on ``training``, scored on
``--split``; one probe per phenotype so that rows with a NaN phenotype are dropped for that phenotype only), the
aligned-minus-Stage-I probe gain with a paired bootstrap interval over the evaluated subjects
(``kmtr_monai.metrics.r2_gain_interval``),
the mean pairwise cosine similarity of each encoder's test features (near 1: the features barely differ between
subjects, the collapse a failed alignment leaves), and k-space -> image retrieval top-1/top-5 (``kmtr_monai.metrics.retrieval_topk``, cosine): aligned = DualEncoder
projections ``z_kspace`` vs ``z_image``; Stage I = pooled Stage I k-space vs pooled Stage I image features (no
shared space was ever trained, so chance level is the honest expectation).

Usage::

    python benchmarks/alignment_gain.py --run /tmp/pipe --preset tiny   # scored on the test split
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.constants import PHENOTYPES
from kmtr_monai.linear_eval import batched, bundle_parser, load_split, mean_pairwise_cosine  # noqa: F401 (re-exported)

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SHOWN = ("LVEDV (mL)", "LVEF (%)", "LVM (g)", "RVEDV (mL)")


def run_arguments(doc: str, split: str = "test") -> argparse.ArgumentParser:
    """The command line the Stage II benchmarks share: --run, --preset, --split, --acceleration, --threads."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--run", required=True, help="output folder of `kmtr pipeline` (cohort/, image-mae/, kspace-mae/, align/)")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "small"), help="preset the run was made with")
    ap.add_argument("--split", default=split, choices=("validation", "test"), help="evaluation split")
    ap.add_argument("--acceleration", type=int, default=4, help="k-space acceleration (validation mask)")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def make_parser(run: Path, preset: str, acceleration: int, bundles: Path = BUNDLES):
    """``ConfigParser`` of the align bundle at ``preset`` with the run's cohort and Stage I checkpoints."""
    overrides = {
        "dataset_dir": str(run / "cohort"),
        "image_mae_ckpt": str(run / "image-mae" / "models" / "model.pt"),
        "kspace_mae_ckpt": str(run / "kspace-mae" / "models" / "model.pt"),
        "ckpt_dir": str(run / "align" / "models"),
        "output_dir": str(run / "align" / "eval"),
        "val_acceleration": int(acceleration),
        "num_workers": 0,
    }
    return bundle_parser(bundles / "align", preset, overrides)


def check_run(run: Path, preset: str, align: bool = True) -> None:
    """The run folder holds the pipeline's outputs (the align checkpoint only if ``align``), made at ``preset``."""
    needed = ["cohort/datalist.json", "image-mae/models/model.pt", "kspace-mae/models/model.pt"]
    needed += ["align/models/model.pt"] if align else []
    missing = [p for p in needed if not (run / p).is_file()]
    if missing:
        raise FileNotFoundError(f"run {run} lacks {missing} (made by `kmtr pipeline --out {run}`)")
    meta = run / "cohort" / "cohort.json"
    if meta.is_file():
        made = json.loads(meta.read_text()).get("preset")
        if made is not None and made != preset:
            raise ValueError(f"--preset {preset!r} does not match the run's cohort preset {made!r} ({meta})")


def open_run(ap: argparse.ArgumentParser, argv=None, align: bool = True) -> tuple[argparse.Namespace, Path]:
    """Parse the command line, set the thread count and check the run folder (:func:`check_run`)."""
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run).resolve()
    check_run(run, args.preset, align)
    return args, run


def stage1_encoder(parser, which: str):
    """The Stage I ``"image"`` or ``"kspace"`` MAE of the run, weights loaded, decoder dropped, in eval mode."""
    from kmtr_monai.engines.checkpoint import load_encoder_weights

    net = parser.get_parsed_content(f"{which}_mae", lazy=False)
    return load_encoder_weights(net, parser.get_parsed_content(f"{which}_mae_ckpt"), key="model").drop_decoder().eval()


def kspace_pooled(encoder, pooling: str):
    """(kspace, mask) -> pooled (B, C) features of a KspaceMAE, pooled like the DualEncoder pools."""

    def fn(kspace, mask):
        tokens, _, valid = encoder.encode(kspace, mask, return_valid=True)
        return encoder.pool_tokens(tokens, pooling, valid)

    return fn


def image_pooled(encoder, pooling: str):
    return lambda image: encoder.pool_tokens(encoder.encode(image)[0], pooling)


def probe(train_x, train_y, test_x, test_y) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Per-phenotype ridge probes, dropping rows whose target is NaN.

    Returns R^2 (P,), test predictions (M, P) (NaN where not predicted) and (n_train, n_test) per target.
    """
    from kmtr_monai.metrics import linear_probe_r2

    r2, pred, counts = np.full(train_y.shape[1], np.nan), np.full(test_y.shape, np.nan), []
    for j in range(train_y.shape[1]):
        ok_tr, ok_te = np.isfinite(train_y[:, j]), np.isfinite(test_y[:, j])
        counts.append((int(ok_tr.sum()), int(ok_te.sum())))
        if ok_tr.sum() >= 2 and ok_te.sum() >= 2:
            res = linear_probe_r2(train_x[ok_tr], train_y[ok_tr, j], test_x[ok_te], test_y[ok_te, j])
            r2[j], pred[ok_te, j] = res["mean_r2"], res["pred"][:, 0]
    return r2, pred, counts


def main(argv=None) -> dict:
    ap = run_arguments(__doc__)
    ap.add_argument("--bundles", default=str(BUNDLES), help="bundles/ folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="align config overrides the run was trained with, e.g. cell_align_weight=1.0")
    args, run = open_run(ap, argv)
    start = time.perf_counter()
    parser = make_parser(run, args.preset, args.acceleration, Path(args.bundles).resolve())
    for item in args.set:
        key, _, value = item.partition("=")
        parser[key] = json.loads(value)
    device = parser.get_parsed_content("device")
    pooling, seed, bs = (parser.get_parsed_content(k) for k in ("pooling", "seed", "batch_size"))
    train, test = load_split(parser, "training"), load_split(parser, args.split)

    # ---- networks, all from the bundle definitions
    torch.manual_seed(seed)
    scratch = parser.get_parsed_content("kspace_mae", lazy=False).drop_decoder()
    stage1_k, stage1_i = stage1_encoder(parser, "kspace"), stage1_encoder(parser, "image")
    dual = parser.get_parsed_content("network_def", lazy=False)
    ckpt = torch.load(run / "align" / "models" / "model.pt", map_location="cpu", weights_only=True)
    dual.load_state_dict(ckpt["model"], strict=True)
    if "kspace_encoder" in ckpt:  # the separately saved aligned encoder must be the DualEncoder's one
        saved, own = ckpt["kspace_encoder"], dual.kspace_encoder.state_dict()
        if saved.keys() != own.keys() or any(not torch.equal(saved[k], own[k]) for k in own):
            raise ValueError(f"{run}/align/models/model.pt: 'kspace_encoder' differs from model.kspace_encoder")
    for net in (scratch, stage1_k, stage1_i, dual):
        net.to(device).eval()

    # ---- features
    kw = dict(batch_size=bs, device=device)
    feats = {}
    for name, split in (("train", train), ("test", test)):
        ks = (split["kspace"], split["mask"])
        feats[name] = {
            "scratch": batched(kspace_pooled(scratch, pooling), *ks, **kw),
            "stage1": batched(kspace_pooled(stage1_k, pooling), *ks, **kw),
            "aligned": batched(dual.kspace_features, *ks, **kw),
            "image": batched(image_pooled(stage1_i, pooling), split["image"], **kw),
        }
    z_k = batched(dual.embed_kspace, test["kspace"], test["mask"], **kw)
    z_i = batched(dual.embed_image, test["image"], **kw)

    # ---- metrics
    from kmtr_monai.metrics import retrieval_topk

    ytr, yte = train["phenotypes"].double().numpy(), test["phenotypes"].double().numpy()
    n = yte.shape[0]
    retrieval = {
        "stage1": retrieval_topk(feats["test"]["stage1"], feats["test"]["image"]),
        "aligned": retrieval_topk(z_k, z_i),
    }
    labels = {
        "scratch": "k-space, random init (scratch)",
        "stage1": "k-space, Stage I MAE (unaligned)",
        "aligned": "k-space, Stage II aligned",
        "image": "image, Stage I MAE, fully sampled (upper bound)",
    }
    results, preds, counts = {}, {}, None
    for key in labels:
        r2, preds[key], counts = probe(feats["train"][key].numpy(), ytr, feats["test"][key].numpy(), yte)
        results[key] = {"r2": dict(zip(PHENOTYPES, r2.tolist())), "mean_r2": float(np.nanmean(r2)),
                        "mean_cosine": mean_pairwise_cosine(feats["test"][key]), **retrieval.get(key, {})}  # fmt: skip
    from kmtr_monai.metrics import r2_gain_interval

    gain = r2_gain_interval(yte, preds["stage1"], preds["aligned"])

    # ---- report
    def f(v):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    cols = ["encoder", "probe R² (mean of 12)", *[f"R² {p.split(' ')[0]}" for p in SHOWN], "mean cosine",
            "k→img top-1", "k→img top-5"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key, label in labels.items():
        r = results[key]
        row = [label, f(r["mean_r2"]), *[f(r["r2"][p]) for p in SHOWN], f(r["mean_cosine"]), f(r.get("top1")),
               f(r.get("top5"))]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| " + " | ".join(["chance (1/N, 5/N)", "—", *["—"] * (len(SHOWN) + 1), f(1 / n), f(min(5 / n, 1.0))]) + " |")
    dropped = [f"{p}: {len(ytr) - a}/{len(ytr)} train, {n - b}/{n} eval" for p, (a, b) in zip(PHENOTYPES, counts)
               if a < len(ytr) or b < n]  # fmt: skip
    print(f"\nalignment gain — run {run}, preset {args.preset}, probe fit on training (N={len(ytr)}), "
          f"evaluated on {args.split} (N={n}), acceleration {args.acceleration}, pooling {pooling!r}\n")  # fmt: skip
    print("\n".join(lines))
    print(f"\nprobe gain, aligned − Stage I (mean R² of 12): {gain['gain']:+.3f}, 95 % paired bootstrap interval over "
          f"the {args.split} subjects [{gain['low']:+.3f}, {gain['high']:+.3f}]")  # fmt: skip
    print("NaN phenotypes dropped per target: " + ("; ".join(dropped) if dropped else "none"))
    print("retrieval: aligned = cosine(z_kspace, z_image); Stage I = cosine(pooled Stage I k-space, pooled Stage I "
          "image) (never trained to match, chance expected)")  # fmt: skip
    print(f"runtime {time.perf_counter() - start:.1f} s")
    return {"n_train": len(ytr), "n_eval": n, "results": results, "probe_gain": gain, "y": yte,
            "aligned_pred": preds["aligned"]}  # fmt: skip


if __name__ == "__main__":
    main()
