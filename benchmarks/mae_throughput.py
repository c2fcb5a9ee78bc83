"""Stage I MAE throughput: our ImageMAE vs MONAI's ``MaskedAutoEncoderViT`` at the same size, plus our KspaceMAE.

Usage::

    python benchmarks/mae_throughput.py --preset tiny --batch 4 --steps 10 --threads 1
    python benchmarks/mae_throughput.py --preset paper --batch 2 --steps 10 --device cuda

Measured per model (same process, same synthetic batch):
    * train: samples/s of a full step (forward, loss, backward, ``AdamW.step``), ``batch / median step time``;
    * encode: ms per subject of the encoder alone, eval mode, ``torch.no_grad``, no masking (median over steps).
The ratio column is ours / MONAI for the image MAE (train: > 1 means we are faster; encode: < 1 means we are faster).

How MONAI's ``MaskedAutoEncoderViT`` is configured to match ``ImageMAE`` (``MODEL_PRESETS[preset]`` and
``DATA_PRESETS[preset]``): MONAI takes one volume (B, C, D, H, W) and has no view axis, so the cine stack
(B, S, T, H, W) is fed as ``in_channels=1``, ``img_size=(S·T, H, W)`` with views × frames stacked along depth and
``patch_size=(pt, ph, pw)``. Because ``pt`` divides T, no patch straddles two views and the token count is the same,
``S·(T/pt)·(H/ph)·(W/pw)``. ``hidden_size=dim``, ``num_layers=depth``, ``num_heads=heads``, ``mlp_dim=4·dim``,
``decoder_hidden_size=dec_dim``, ``decoder_num_layers=dec_depth``, ``decoder_num_heads=dec_heads``,
``decoder_mlp_dim=4·dec_dim``, ``masking_ratio=0.7``, ``qkv_bias=True`` (ours has a qkv bias). Both position codes
are ``"learnable"``: MONAI's 3-D sin-cos code needs widths divisible by 6, which the preset decoder widths
(64/128/512) are not; the code type changes only one addition and N·dim parameters, not the cost of a step.
MONAI keeps ``int(0.3·N)`` tokens, ours ``N − round(0.7·N)``; the visible counts printed may differ by one.
MONAI's loss is the same masked-patch MSE (its model returns no loss; target patches are in its conv token order).

KspaceMAE (line tokenizer, one token per sampled (view, frame, ky) line, VISTA mask at R=4) has no MONAI
equivalent; its row has no ratio. ``--kspace`` adds KspaceMAE variants, each a row timed in the same process on the
same batch (compare rows, not runs: timings on a shared or niced CPU are noisy): ``line`` (default), ``line/g2x4``
(the line decoder with ``dec_group=(2, 4)``), ``hybrid`` (hybrid x-ky tokens with the preset's patch) or
``hybrid/p2x8x16`` (patch (pt, ph, px) = (2, 8, 16)); ``patch`` is the patch tokenizer.

    python benchmarks/mae_throughput.py --preset small --batch 16 --steps 3 --threads 2 \
        --kspace line line/g2x4 hybrid hybrid/p2x8x16

On a busy or niced CPU the load changes between rows; ``--interleave`` then times the train steps round-robin (one
step of each model in turn, ``--steps`` rounds after one warm-up round) and reports the median ms per step of each
model and its ratio to the image MAE's, so every model sees the same load.

The paper preset is only allowed with ``--device cuda`` (a CPU step takes minutes) unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside MONAI's patch embedding


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls after ``warmup`` untimed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def monai_reference(model_cfg: dict, n_views: int, n_frames: int, size: int, mask_ratio: float = 0.7):
    """MONAI ``MaskedAutoEncoderViT`` with the token count and sizes of our ImageMAE (see module docstring)."""
    from monai.networks.nets import MaskedAutoEncoderViT

    c = model_cfg
    return MaskedAutoEncoderViT(
        in_channels=1,
        img_size=(n_views * n_frames, size, size),
        patch_size=tuple(c["patch"]),
        hidden_size=c["dim"],
        mlp_dim=4 * c["dim"],
        num_layers=c["depth"],
        num_heads=c["heads"],
        masking_ratio=mask_ratio,
        decoder_hidden_size=c["dec_dim"],
        decoder_mlp_dim=4 * c["dec_dim"],
        decoder_num_layers=c["dec_depth"],
        decoder_num_heads=c["dec_heads"],
        pos_embed_type="learnable",
        decoder_pos_embed_type="learnable",
        qkv_bias=True,
    )


def monai_encode(net, x: torch.Tensor) -> torch.Tensor:
    """MONAI MAE encoder without masking: patch embedding (+ position), class token, blocks (+ final norm)."""
    tokens = net.patch_embedding(x)
    return net.blocks(torch.cat([net.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1))


def monai_loss(net, x: torch.Tensor) -> torch.Tensor:
    """Masked-patch MSE for MONAI's MAE; x (B, 1, D, H, W), tokens in the conv's (d, h, w) order."""
    from kmtr_monai.networks import patchify

    pred, mask = net(x)
    target = patchify(x[:, :, None], net.patch_size)  # (B, 1, 1, D, H, W) -> (B, N, pt·ph·pw)
    w = mask.to(pred.dtype)
    return ((pred - target).square().mean(-1) * w).sum() / w.sum().clamp_min(1.0)


def bench(name: str, model, loss_fn, encode_fn, batch: int, steps: int, device, lr: float = 1e-4) -> dict:
    """Train-step and encode timings of one model; ``loss_fn()``/``encode_fn()`` close over the batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    model.train()
    t_train = time_calls(train_step, steps, warmup=2, device=device)
    model.eval()
    with torch.no_grad():
        t_enc = time_calls(encode_fn, steps, warmup=1, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    return dict(name=name, params=n_params, train_sps=batch / t_train, train_ms=1e3 * t_train,
                enc_ms=1e3 * t_enc / batch)  # fmt: skip


def kspace_variant(spec: str) -> tuple[str, dict]:
    """'line', 'line/g2x4', 'hybrid/p2x8x16', 'patch' → (row name, build_kspace_mae kwargs)."""
    kind, *opts = spec.split("/")
    if kind not in ("line", "patch", "hybrid"):
        raise ValueError(f"--kspace: unknown tokenizer {kind!r} in {spec!r}")
    kw = {"tokenizer": kind}
    for o in opts:
        vals = tuple(int(v) for v in o[1:].split("x"))
        if o[0] == "g":
            kw["dec_group"] = vals
        elif o[0] == "p":
            kw["patch"] = vals
        else:
            raise ValueError(f"--kspace: unknown option {o!r} in {spec!r} (g<gt>x<gh> or p<pt>x<ph>x<px>)")
    return spec, kw


def interleaved(models: dict, steps: int, device) -> dict[str, list[float]]:
    """{name: (model, loss_fn)} → {name: [seconds per train step]}, one step of each model per round."""
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, (m, _) in models.items()}
    times = {n: [] for n in models}
    for r in range(steps + 1):
        for n, (m, loss_fn) in models.items():
            m.train()
            _sync(device)
            t0 = time.perf_counter()
            opts[n].zero_grad(set_to_none=True)
            loss_fn().backward()
            opts[n].step()
            _sync(device)
            if r:  # round 0 is the warm-up
                times[n].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median reported)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--accel", type=int, default=4, help="k-space acceleration R for the KspaceMAE row")
    ap.add_argument("--force", action="store_true", help="allow --preset paper on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kspace", nargs="+", default=["line"], help="KspaceMAE variants (module docstring)")
    ap.add_argument("--skip_monai", action="store_true", help="leave out the MONAI reference row")
    ap.add_argument("--interleave", action="store_true", help="round-robin train-step timing (module docstring)")
    args = ap.parse_args(argv)
    if args.preset == "paper" and args.device == "cpu" and not args.force:
        ap.error("--preset paper on CPU takes minutes per step; use --device cuda (or --force)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.batch < 1 or args.steps < 1:
        ap.error("--batch and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from mae_tokenizers import kspace_batch, preset_sizes, synthetic_images

    from kmtr_monai.networks import MODEL_PRESETS, build_image_mae, build_kspace_mae

    s, t, h = preset_sizes(args.preset)
    cfg = MODEL_PRESETS[args.preset]
    images = synthetic_images(args.batch, s, t, h, seed=args.seed)  # (B, S, T, H, W) in [0, 1]
    ks = kspace_batch(images, args.accel, seed=args.seed)
    image = images.to(device)
    kspace, full, mask = (ks[k].to(device) for k in ("kspace", "kspace_full", "mask"))

    if args.interleave:
        torch.manual_seed(args.seed)
        img = build_image_mae(args.preset).to(device)
        models = {"ImageMAE": (img, lambda: img.loss(img(image)))}
        for spec in args.kspace:
            torch.manual_seed(args.seed)
            km = build_kspace_mae(args.preset, **kspace_variant(spec)[1]).to(device)
            models[f"KspaceMAE {spec}"] = (km, lambda km=km: km.loss(km(kspace, mask, full)))
        times = interleaved(models, args.steps, device)
        base = statistics.median(times["ImageMAE"])
        dev = f"cpu, {torch.get_num_threads()} thread(s)" if device.type == "cpu" else torch.cuda.get_device_name(device)
        print(f"\npreset={args.preset} batch={args.batch} R={args.accel} rounds={args.steps} device={dev} "
              f"torch={torch.__version__} (interleaved)\n")  # fmt: skip
        print("| model | train ms/step (median) | min | max | × image MAE |\n|---|---|---|---|---|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {1e3 * med:.0f} | {1e3 * min(ts):.0f} | {1e3 * max(ts):.0f} | {med / base:.2f} |")
        return

    rows = []
    torch.manual_seed(args.seed)
    ours = build_image_mae(args.preset).to(device)
    rows.append(bench("ImageMAE (ours)", ours, lambda: ours.loss(ours(image)), lambda: ours.encode(image),
                      args.batch, args.steps, device))  # fmt: skip
    n_tok, n_vis = ours.tokenizer.num_tokens, ours.tokenizer.num_tokens - ours.num_masked
    del ours
    tokens = [f"{n_vis}/{n_tok}"]
    if not args.skip_monai:
        torch.manual_seed(args.seed)
        ref = monai_reference(cfg, s, t, h).to(device)
        vol = image.reshape(args.batch, 1, s * t, h, h)  # views × frames stacked as depth
        rows.append(bench("MONAI MaskedAutoEncoderViT", ref, lambda: monai_loss(ref, vol),
                          lambda: monai_encode(ref, vol), args.batch, args.steps, device))  # fmt: skip
        ref_tok, ref_vis = ref.patch_embedding.n_patches, int((1 - ref.masking_ratio) * ref.patch_embedding.n_patches)
        tokens.append(f"{ref_vis}/{ref_tok}")
        del ref
    for spec in args.kspace:
        name, kw = kspace_variant(spec)
        torch.manual_seed(args.seed)
        km = build_kspace_mae(args.preset, **kw).to(device)
        rows.append(bench(f"KspaceMAE {name} R={args.accel} (ours)", km, lambda: km.loss(km(kspace, mask, full)),
                          lambda: km.encode(kspace, mask), args.batch, args.steps, device))  # fmt: skip
        with torch.no_grad():  # encoder tokens of subject 0 (sampled lines / hybrid cells / all patches) / all
            _, _, valid = km.encode(kspace[:1], mask[:1], return_valid=True)
        total = km.tokenizer.num_lines if kw["tokenizer"] == "line" else km.tokenizer.num_tokens
        enc_tok = int(valid.sum()) if kw["tokenizer"] != "patch" else total
        tokens.append(f"{enc_tok}/{total}")
        del km

    if args.skip_monai:
        ratios = [("n/a", "n/a")] + [("n/a (no MONAI equivalent)", "n/a")] * len(args.kspace)
    else:
        ratio_train = rows[0]["train_sps"] / rows[1]["train_sps"]
        ratio_enc = rows[0]["enc_ms"] / rows[1]["enc_ms"]
        ratios = [(f"{ratio_train:.2f}", f"{ratio_enc:.2f}"), ("1.00", "1.00")]
        ratios += [("n/a (no MONAI equivalent)", "n/a")] * len(args.kspace)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"\npreset={args.preset} (S={s}, T={t}, H=W={h}, model {cfg}) batch={args.batch} steps={args.steps} "
          f"device={dev} torch={torch.__version__}\n")  # fmt: skip
    print("| model | enc tokens (train visible/total) | params | train samples/s | train ms/step "
          "| encode ms/subject | train ratio ours/MONAI | encode-time ratio ours/MONAI |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r, tok, (rt, re) in zip(rows, tokens, ratios):
        print(f"| {r['name']} | {tok} | {r['params'] / 1e6:.3f}M | {r['train_sps']:.1f} | {r['train_ms']:.1f} "
              f"| {r['enc_ms']:.2f} | {rt} | {re} |")  # fmt: skip
    print("\ntrain ratio > 1: ours faster; encode-time ratio < 1: ours faster. KspaceMAE tokens: encoder tokens of "
          "subject 0 (sampled lines; hybrid cells holding a sampled line; all patches) / all lines or cells.")  # fmt: skip


if __name__ == "__main__":
    main()
