"""k-space MAE tokenizers: one token per sampled ky line ("line") vs zero-filled k-space patches ("patch").

Usage::

    python benchmarks/mae_tokenizers.py --preset tiny --steps 150 --batch 8 --accelerations 4 8 --threads 1
    python benchmarks/mae_tokenizers.py --preset tiny --cohort /tmp/bench_cohort   # real synthetic cohort
    python benchmarks/mae_tokenizers.py --preset tiny --tokenizers line line/g2x4 patch hybrid hybrid/p2x8x16

``--tokenizers`` takes the variants of ``mae_throughput.py --kspace`` (default ``line patch``). The validation loss
of hybrid tokens is in normalised hybrid units; compare it through its ratio to the zero-filled baseline (same
space) and through the PSNR, which is computed from the k-space prediction for every variant.

For each acceleration R and tokenizer it reports
    (a) cost: encoder tokens per subject (real / padded to the batch), parameters, median ms of a full training step
        (forward, loss, backward, AdamW) and of the encoder alone (``encode`` forward + backward of the pooled code);
    (b) quality after the SAME fixed budget (same initial seed, same batches in the same order, same steps and lr
        schedule): validation loss in the model's normalised units (the MAE loss on unsampled lines), next to the
        zero-filled baseline (the same loss with ``pred_norm = 0``), and the image-domain PSNR of the data-consistent
        reconstruction ``|ifft2c(k_dc)|`` with ``k_dc`` = measured lines where sampled, predicted lines elsewhere,
        next to the zero-filled PSNR ``|ifft2c(kspace)|``. The reference is ``|ifft2c(kspace_full)|``; PSNR uses
        each subject's reference maximum as peak (MONAI ``PSNRMetric(max_val=1)`` on max-normalised magnitudes).

Data: with ``--cohort DIR`` the ``training``/``validation`` splits of ``DIR/datalist.json`` are loaded with
``LoadCohortSubjectd``; otherwise cine-like images are generated (smooth random anatomy shared over frames plus a
small per-frame change, per-subject [0, 1]). Either way k-space comes from our transforms, per subject seeded by
``eid``: ``RandSmoothPhased`` → ``FFT2cd`` → ``RandKspaceMaskd`` (VISTA, R) → ``ComplexToChanneld``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch


# ---------------------------------------------------------------------------------------------------------- data
def preset_sizes(preset: str) -> tuple[int, int, int]:
    """(S views = 3 LAX + n_sax, T frames, H = W crop) of ``DATA_PRESETS[preset]``."""
    from kmtr_monai.constants import LAX_VIEWS
    from kmtr_monai.presets import DATA_PRESETS

    if preset not in DATA_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(DATA_PRESETS)}")
    d = DATA_PRESETS[preset]
    return len(LAX_VIEWS) + d["n_sax"], d["n_frames"], d["crop"]


def synthetic_images(n: int, s: int, t: int, h: int, seed: int = 0) -> torch.Tensor:
    """Cine-like stacks (n, S, T, H, H) in [0, 1]: low-pass noise per view + 20% per-frame change, min-max per subject.

    The same construction as ``make_batch`` in tests/test_networks.py (image part only).
    """
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(h)
    lowpass = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.06**2))
    noise = torch.randn(n, s, 1, h, h, generator=g) + 0.2 * torch.randn(n, s, t, h, h, generator=g)
    image = torch.fft.ifft2(torch.fft.fft2(noise) * lowpass).real
    lo, hi = image.amin(dim=(1, 2, 3, 4), keepdim=True), image.amax(dim=(1, 2, 3, 4), keepdim=True)
    return ((image - lo) / (hi - lo)).float()


def kspace_transforms(acceleration: int):
    """image (S,T,H,W) → kspace_full / kspace (2,S,T,H,W) float, mask (S,T,H); all seeded by ``eid``."""
    from monai.transforms import Compose

    from kmtr_monai.transforms import ComplexToChanneld, FFT2cd, RandKspaceMaskd, RandSmoothPhased

    return Compose([
        RandSmoothPhased(keys="image", output_key="kspace_full", seed_key="eid"),
        FFT2cd(keys="kspace_full"),
        RandKspaceMaskd(keys="kspace_full", output_key="kspace", mask_key="mask", pattern="vista",
                        accelerations=(acceleration,), seed_key="eid"),
        ComplexToChanneld(keys=["kspace", "kspace_full"]),
    ])  # fmt: skip


def kspace_batch(images: torch.Tensor, acceleration: int, seed: int = 0, eids=None) -> dict[str, torch.Tensor]:
    """images (N,S,T,H,W) → {"kspace", "kspace_full": (N,2,S,T,H,W), "mask": (N,S,T,H)} via :func:`kspace_transforms`.

    One transform call per subject (data preparation, done once before any timing); ``eids`` default to
    ``"syn<seed>_<i>"``.
    """
    if images.ndim != 5:
        raise ValueError(f"images: expected shape (N, S, T, H, W), got {tuple(images.shape)}")
    eids = [f"syn{seed}_{i}" for i in range(len(images))] if eids is None else list(eids)
    if len(eids) != len(images):
        raise ValueError(f"eids: {len(eids)} ids for {len(images)} images")
    tr = kspace_transforms(acceleration)
    items = [tr({"eid": e, "image": img}) for e, img in zip(eids, images)]
    return {k: torch.stack([torch.as_tensor(d[k]).float() for d in items]) for k in ("kspace", "kspace_full", "mask")}


def load_cohort(root: str, preset: str) -> tuple[dict, dict]:
    """``training``/``validation`` images of a cohort → two dicts {"images": (N,S,T,H,W), "eids": [...]}."""
    from kmtr_monai.data.cohort import LoadCohortSubjectd
    from kmtr_monai.data.datalist import read_datalist
    from kmtr_monai.presets import DATA_PRESETS

    path = os.path.join(root, "datalist.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--cohort {root}: no datalist.json (run `kmtr datalist --root {root}`)")
    d = DATA_PRESETS[preset]
    load = LoadCohortSubjectd(root, d["n_sax"], d["n_frames"], d["crop"], load_seg=False)
    out = []
    for split in ("training", "validation"):
        items = [load(dict(it)) for it in read_datalist(path, split)]
        if not items:
            raise ValueError(f"{path}: split {split!r} is empty")
        out.append({"images": torch.stack([it["image"] for it in items]), "eids": [it["eid"] for it in items]})
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------------- metrics
def magnitude(k: torch.Tensor) -> torch.Tensor:
    """(B,2,S,T,H,W) centred k-space → (B,S,T,H,W) image magnitude ``|ifft2c|``."""
    from kmtr_monai.transforms import ifft2c

    return ifft2c(torch.complex(k[:, 0], k[:, 1])).abs()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-subject PSNR (B,) in dB with each subject's reference maximum as peak."""
    from monai.metrics import PSNRMetric

    peak = ref.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    b = x.shape[0]
    return PSNRMetric(max_val=1.0, reduction="none")(x.reshape(b, 1, -1) / peak, ref.reshape(b, 1, -1) / peak)[:, 0]


# ---------------------------------------------------------------------------------------------------------- runs
def _median_ms(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _schedule(opt, steps: int):
    """Linear warm-up over 10% of the steps, then cosine to 0 (identical for every run)."""
    warm = max(1, steps // 10)

    def f(i):
        return (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def cost(model, batch: dict, cost_steps: int) -> dict:
    """Token counts, params and median ms of a train step / encoder fwd+bwd on ``batch`` (model state is restored)."""
    k, full, m = batch["kspace"], batch["kspace_full"], batch["mask"]
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(model(k, m, full)).backward()
        opt.step()

    def enc():
        model.zero_grad(set_to_none=True)
        model.encode(k, m)[1].sum().backward()

    model.train()
    t_step, t_enc = _median_ms(step, cost_steps), _median_ms(enc, cost_steps)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        _, _, valid = model.encode(k, m, return_valid=True)
    return dict(tokens=float(valid.sum(1).float().mean()), padded=valid.shape[1], step_ms=t_step, enc_ms=t_enc,
                params=sum(p.numel() for p in model.parameters()))  # fmt: skip


def train(model, data: dict, steps: int, batch: int, lr: float, seed: int) -> float:
    """``steps`` AdamW steps on batches drawn with a fixed generator (same order for every model); → seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = _schedule(opt, steps)
    g = torch.Generator().manual_seed(seed)
    n = len(data["mask"])
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:batch]
        opt.zero_grad(set_to_none=True)
        model.loss(model(data["kspace"][idx], data["mask"][idx], data["kspace_full"][idx])).backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model, data: dict, batch: int) -> dict:
    """Validation loss (normalised units) vs zero-filled, and PSNR of the data-consistent vs zero-filled image."""
    model.eval()
    loss = zf = wsum = 0.0
    p_dc, p_zf = [], []
    for i in range(0, len(data["mask"]), batch):
        k, full, m = (data[key][i : i + batch] for key in ("kspace", "kspace_full", "mask"))
        out = model(k, m, full)
        w = float(out["weight"].sum())
        loss += float(model.loss(out)) * w
        zf += float(model.loss({**out, "pred_norm": torch.zeros_like(out["pred_norm"])})) * w
        wsum += w
        k_dc = torch.where(m[:, None, ..., None] > 0, k, out["pred"])
        ref = magnitude(full)
        p_dc.append(psnr(magnitude(k_dc), ref))
        p_zf.append(psnr(magnitude(k), ref))
    return dict(loss=loss / wsum, zf_loss=zf / wsum, psnr_dc=float(torch.cat(p_dc).mean()),
                psnr_zf=float(torch.cat(p_zf).mean()))  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=150, help="training steps per (R, tokenizer) run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak AdamW lr (10%% warm-up, cosine decay)")
    ap.add_argument("--cost-steps", type=int, default=5, help="timed repeats for the cost columns (median)")
    ap.add_argument("--cohort", default=None, help="cohort root with datalist.json (default: synthetic images)")
    ap.add_argument("--n-train", type=int, default=64, help="synthetic training subjects")
    ap.add_argument("--n-val", type=int, default=16, help="synthetic validation subjects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizers", nargs="+", default=["line", "patch"],
                    help="k-space MAE variants: line, patch, hybrid, line/g2x4, hybrid/p2x8x16 (mae_throughput.py)")
    ap.add_argument("--reference", default="none", choices=["none", "view_sharing"],
                    help="KspaceMAE reference (the recorded table used 'none')")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.cost_steps, args.n_train, args.n_val) < 1 or min(args.accelerations) < 1:
        ap.error("--steps, --batch, --cost-steps, --n-train, --n-val and --accelerations must be >= 1")
    torch.set_num_threads(args.threads)

    from mae_throughput import kspace_variant

    from kmtr_monai.networks import build_kspace_mae

    s, t, h = preset_sizes(args.preset)
    t0 = time.perf_counter()
    if args.cohort:
        tr, va = load_cohort(args.cohort, args.preset)
        source = f"cohort {args.cohort}"
    else:
        imgs = synthetic_images(args.n_train + args.n_val, s, t, h, seed=args.seed)
        eids = [f"syn{args.seed}_{i}" for i in range(len(imgs))]
        tr = {"images": imgs[: args.n_train], "eids": eids[: args.n_train]}
        va = {"images": imgs[args.n_train :], "eids": eids[args.n_train :]}
        source = "synthetic cine-like images"
    print(f"data: {source}: {len(tr['eids'])} train / {len(va['eids'])} val subjects of (S={s}, T={t}, H=W={h}) "
          f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip

    rows = []
    for r in args.accelerations:
        train_data = kspace_batch(tr["images"], r, eids=tr["eids"])
        val_data = kspace_batch(va["images"], r, eids=va["eids"])
        probe = {k: v[: args.batch] for k, v in train_data.items()}
        for kind in args.tokenizers:
            torch.manual_seed(args.seed)
            model = build_kspace_mae(args.preset, reference=args.reference, **kspace_variant(kind)[1])
            c = cost(model, probe, args.cost_steps)
            secs = train(model, train_data, args.steps, args.batch, args.lr, args.seed)
            q = evaluate(model, val_data, args.batch)
            rows.append(dict(r=r, kind=kind, train_s=secs, **c, **q))
            print(f"  R={r} {kind}: trained {args.steps} steps in {secs:.1f} s", flush=True)

    print(f"\npreset={args.preset} batch={args.batch} steps={args.steps} lr={args.lr} "
          f"threads={torch.get_num_threads()} data={source} torch={torch.__version__}\n")  # fmt: skip
    print("| R | tokenizer | enc tokens/subject (real / padded) | params | train step ms | encoder fwd+bwd ms "
          "| val loss | zero-filled loss | loss / ZF | PSNR DC dB | PSNR ZF dB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in rows:
        print(f"| {w['r']} | {w['kind']} | {w['tokens']:.0f} / {w['padded']} | {w['params'] / 1e6:.3f}M "
              f"| {w['step_ms']:.1f} | {w['enc_ms']:.1f} | {w['loss']:.4f} | {w['zf_loss']:.4f} "
              f"| {w['loss'] / w['zf_loss']:.3f} | {w['psnr_dc']:.2f} | {w['psnr_zf']:.2f} |")  # fmt: skip
    print("\nloss: MAE loss (normalised units) on unsampled lines of the validation set; ZF = same loss with "
          "pred_norm = 0. PSNR vs |ifft2c(kspace_full)|, peak = per-subject reference max, mean over subjects.")


if __name__ == "__main__":
    main()
