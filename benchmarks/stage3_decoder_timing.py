"""CPU time per step of the two Stage III dense decoders (segmentation, 6 logits) at the tiny and small presets.

Prints a table: decoder, preset, batch, parameters, milliseconds per forward (eval, no grad) and per training step
(forward + backward, encoder fine-tuned), for the decoder alone (on fixed encoder tokens) and the whole task model.
Random weights and inputs: this measures cost, not quality.

Usage::

    python benchmarks/stage3_decoder_timing.py [--threads 1] [--batch 2] [--repeats 3] [--feature-size 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from kmtr_monai.losses_stage3 import MaskedDiceCELoss
from kmtr_monai.networks import (
    ImageQueryDecoder,
    TaskModel,
    TokenGridUNETRDecoder,
    build_kspace_encoder,
    build_kspace_mae,
)
from kmtr_monai.presets import DATA_PRESETS


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--feature-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch} feature_size={args.feature_size} (ms; random weights)")
    print(f"{'decoder':8} {'preset':6} {'tokens':>6} {'params':>9} {'dec fwd':>8} {'dec step':>9} {'model fwd':>10} "
          f"{'model step':>11}")  # fmt: skip
    for preset in ("tiny", "small"):
        torch.manual_seed(0)
        enc = build_kspace_encoder(build_kspace_mae(preset, tokenizer="patch"), "scratch")
        d = DATA_PRESETS[preset]
        s, t, n = 3 + d["n_sax"], d["n_frames"], d["crop"]
        ks = torch.randn(args.batch, 2, s, t, n, n)
        mask = (torch.rand(args.batch, s, t, n) < 0.25).float()
        seg = torch.randint(0, 6, (args.batch, s, t, n, n))
        valid = torch.ones(args.batch, s, dtype=torch.bool)
        valid[:, 1] = False
        grid, patch, dim = enc.tokenizer.grid, enc.tokenizer.patch, enc.encoder.dim
        depth = len(enc.encoder.blocks)
        with torch.no_grad():
            tokens, _, tok_valid, hidden = enc.encode(ks, mask, return_valid=True, return_hidden=True)
        loss_fn = MaskedDiceCELoss()
        decoders = {
            "unetr": TokenGridUNETRDecoder(dim, grid, patch, 6, args.feature_size, encoder_depth=depth),
            "query": ImageQueryDecoder(dim, grid, patch, 6, n_lax=3, feature_size=args.feature_size),
        }
        for name, dec in decoders.items():
            model = TaskModel(enc, dec)
            extra = (hidden,) if getattr(dec, "hidden_layers", None) else ()

            def dec_fwd():
                with torch.no_grad():
                    dec.eval()(tokens, tok_valid, *extra)

            def dec_step():
                loss_fn(dec.train()(tokens, tok_valid, *extra), seg, valid).backward()

            def model_fwd():
                with torch.no_grad():
                    model.eval()(ks, mask)

            def model_step():
                loss_fn(model.train()(ks, mask), seg, valid).backward()

            times = [_time(f, args.repeats) for f in (dec_fwd, dec_step, model_fwd, model_step)]
            n_params = sum(p.numel() for p in dec.parameters())
            print(f"{name:8} {preset:6} {tokens.shape[1] - 1:>6} {n_params:>9,} {times[0]:>8.0f} {times[1]:>9.0f} "
                  f"{times[2]:>10.0f} {times[3]:>11.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
