"""One training step (forward + backward) of the Stage I networks at the paper preset.

Builds ``build_image_mae("paper")`` and ``build_kspace_mae("paper")`` exactly as the bundles do (9 views × 50 frames
× 128², width 1024, 6 + 2 layers, gradient checkpointing as in ``bundles/presets/paper.json``), feeds one batch of
random images / their k-space with a VISTA R=4 mask, and reports the loss, whether every trainable parameter got a
finite gradient, wall time and peak memory. Checks the Stage I issue's "the paper preset builds and runs a forward
and backward pass" on whatever device is given.

Usage::

    python benchmarks/paper_preset_step.py --device cuda --batch 2
    python benchmarks/paper_preset_step.py --device cpu --batch 1 --which kspace
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def one_step(model: torch.nn.Module, inputs: tuple, device: torch.device) -> dict:
    model.to(device).train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model(*(x.to(device) for x in inputs))
    loss = model.loss(out)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    finite = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    return {"loss": float(loss), "grads_finite": finite, "seconds": seconds, "peak_gib": peak / 2**30}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--which", nargs="+", default=["image", "kspace"], choices=["image", "kspace"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from kmtr_monai.networks import build_image_mae, build_kspace_mae
    from kmtr_monai.presets import DATA_PRESETS, MODEL_PRESETS
    from kmtr_monai.sampling import make_mask
    from kmtr_monai.transforms.fft import fft2c

    device = torch.device(args.device)
    d = DATA_PRESETS["paper"]
    s, t, n = 3 + d["n_sax"], d["n_frames"], d["crop"]
    image = torch.rand(args.batch, s, t, n, n)
    kspace_full = torch.view_as_real(fft2c(image.to(torch.complex64))).movedim(-1, 1).contiguous()  # (B,2,S,T,H,W)
    mask = torch.stack([torch.stack([torch.as_tensor(make_mask("vista", n, t, 4, seed=10 * b + v))
                                     for v in range(s)]) for b in range(args.batch)])  # fmt: skip
    kspace = torch.where(mask[:, None, ..., None], kspace_full, torch.zeros(()))
    grad_ckpt = bool(MODEL_PRESETS["paper"].get("grad_checkpoint", True))
    rows = []
    print(f"paper preset: {s} views × {t} frames × {n}², batch {args.batch}, device {device}, "
          f"gradient checkpointing {grad_ckpt}")  # fmt: skip
    print("| network | parameters | loss | all gradients finite | forward + backward s | peak GiB |")
    print("|---|---|---|---|---|---|")
    for which in args.which:
        if which == "image":
            model, inputs = build_image_mae("paper", grad_checkpoint=grad_ckpt), (image,)
        else:
            model = build_kspace_mae("paper", grad_checkpoint=grad_ckpt)
            inputs = (kspace, mask, kspace_full)
        params = sum(p.numel() for p in model.parameters())
        r = {"network": which, "params_m": params / 1e6, **one_step(model, inputs, device)}
        rows.append(r)
        print(f"| {which} MAE | {r['params_m']:.1f} M | {r['loss']:.4f} | {r['grads_finite']} | "
              f"{r['seconds']:.1f} | {r['peak_gib']:.1f} |", flush=True)  # fmt: skip
        del model
    return rows


if __name__ == "__main__":
    main()
