"""Do k-space features describe the subject or the undersampling mask?

The validation split is passed through the ``align`` bundle's deterministic preprocessing twice, with two
different global seeds, so every subject gets two different VISTA masks (and smooth phase maps) at the same R.
Features of the first pass then retrieve the same subject among the second pass's features (cosine, after
standardising each feature over the split): a representation of the subject scores high, one dominated by the mask
pattern scores near chance (1/N).

Features compared:
    raw |k|    block means (8×8 in k-space, averaged over frames) of log(1 + |zero-filled k| / 0.01) — no learning;
    Stage I    pooled features of ``RUN/kspace-mae/models/model.pt``;
    aligned    pooled k-space features of ``RUN/align/models/model.pt`` (when present);
    LABEL      pooled features of each further Stage I checkpoint given as ``--stage1 LABEL=PATH`` (e.g. a
               kspace-mae run trained with ``--invariance_weight 0.1`` against one without: issue 25).

Besides top-1/top-5 the table gives ``1 - corr``: the k-space MAE's invariance term
(``kmtr_monai.networks.mae.invariance_term``) over the whole split, the mean over features of one minus the
correlation across subjects between the two draws (0: the draws agree; 1: unrelated).

``--tokenizer`` (``line``, ``patch``, ``hybrid``) and ``--dec_group`` rebuild the k-space MAE as the Stage I run
was trained (the align bundle's ``tokenizer`` otherwise), so its checkpoints load.

Usage::

    python benchmarks/mask_invariance.py --run /tmp/run --preset small
    python benchmarks/mask_invariance.py --run /tmp/run --preset small --tokenizer hybrid \
        --stage1 "invariance 0.1=/tmp/kmae_inv/models/model.pt" "no invariance=/tmp/kmae/models/model.pt"
"""

from __future__ import annotations

import time

import torch

from alignment_gain import BUNDLES, batched, kspace_pooled, load_split, make_parser, open_run, run_arguments, stage1_encoder


def raw_magnitude_blocks(kspace: torch.Tensor, mask: torch.Tensor, block: int = 8) -> torch.Tensor:
    """kspace (N,2,S,T,H,W), mask (N,S,T,H) -> (N, S·(H/block)·(W/block)) log-magnitude block means."""
    zero_filled = torch.where(mask.bool()[:, None, ..., None], kspace.double(), 0.0)
    mag = torch.log1p(zero_filled.square().sum(1).sqrt().mean(2) / 0.01)  # (N, S, H, W)
    n, s, h, w = mag.shape
    return mag.reshape(n, s, h // block, block, w // block, block).mean((3, 5)).flatten(1)


def same_subject_retrieval(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    from kmtr_monai.metrics import retrieval_topk
    from kmtr_monai.networks.mae import invariance_term

    def z(x):
        return (x - x.mean(0)) / (x.std(0) + 1e-8)

    return {**retrieval_topk(z(a), z(b)), "one_minus_corr": float(invariance_term(a.double(), b.double()))}


def extra_stage1(specs) -> dict[str, str]:
    """``["LABEL=PATH", ...]`` → {label: path}."""
    out = {}
    for spec in specs or []:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--stage1 expects LABEL=PATH, got {spec!r}")
        out[label] = path
    return out


def main(argv=None) -> dict:
    ap = run_arguments(__doc__, split="validation")
    ap.add_argument("--seeds", type=int, nargs=2, default=(0, 1), help="global seeds of the two passes")
    ap.add_argument("--tokenizer", choices=("line", "patch", "hybrid"), help="k-space tokenizer of the Stage I run")
    ap.add_argument("--dec_group", type=int, nargs=2, help="dec_group of the Stage I run (line tokens)")
    ap.add_argument("--stage1", nargs="*", metavar="LABEL=PATH", help="further Stage I checkpoints to compare")
    args, run = open_run(ap, argv, align=False)
    extra = extra_stage1(args.stage1)
    from kmtr_monai.engines.checkpoint import load_encoder_weights

    start = time.perf_counter()
    passes = []
    for seed in args.seeds:
        parser = make_parser(run, args.preset, args.acceleration, BUNDLES)
        parser["seed"] = int(seed)
        if args.tokenizer:
            parser["tokenizer"] = args.tokenizer
        if args.dec_group:
            parser["kspace_mae#dec_group"] = list(args.dec_group)
        data = load_split(parser, args.split)
        pooling, bs = parser.get_parsed_content("pooling"), parser.get_parsed_content("batch_size")
        kw = dict(batch_size=bs, device="cpu")
        ks = (data["kspace"], data["mask"])
        stage1_fn = kspace_pooled(stage1_encoder(parser, "kspace"), pooling)
        feats = {"raw |k| block means": raw_magnitude_blocks(*ks), "Stage I k-space encoder": batched(stage1_fn, *ks, **kw)}
        aligned_ckpt = run / "align" / "models" / "model.pt"
        if aligned_ckpt.is_file():
            aligned = load_encoder_weights(parser.get_parsed_content("kspace_mae", lazy=False).drop_decoder(),
                                           str(aligned_ckpt), key="kspace_encoder")  # fmt: skip
            feats["aligned k-space encoder"] = batched(kspace_pooled(aligned.eval(), pooling), *ks, **kw)
        for label, path in extra.items():
            net = load_encoder_weights(parser.get_parsed_content("kspace_mae", lazy=False), path, key="model")
            feats[label] = batched(kspace_pooled(net.drop_decoder().eval(), pooling), *ks, **kw)
        passes.append((data, feats))
    (d0, f0), (d1, f1) = passes
    if d0["eid"] != d1["eid"] or torch.equal(d0["mask"], d1["mask"]):
        raise RuntimeError("the two passes must hold the same subjects with different masks")
    n = len(d0["eid"])
    print(f"{args.split} split, {n} subjects, R={args.acceleration}, mask seeds {args.seeds[0]} vs {args.seeds[1]}; "
          f"chance top-1 {1 / n:.3f}, top-5 {min(5, n) / n:.3f}")  # fmt: skip
    print("| features | same-subject top-1 | top-5 | 1 - corr |\n|---|---|---|---|")
    result = {}
    for name in f0:
        r = same_subject_retrieval(f0[name], f1[name])
        result[name] = r
        print(f"| {name} | {r['top1']:.3f} | {r['top5']:.3f} | {r['one_minus_corr']:.3f} |")
    print(f"({time.perf_counter() - start:.0f} s)")
    return result


if __name__ == "__main__":
    main()
