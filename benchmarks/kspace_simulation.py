"""Throughput of the k-space simulation chain: ours vs the same chain from MONAI's own k-space tools.

Chain per subject (DESIGN §3), image (S, T, H, W) float32 in [0, 1]:
    smooth synthetic phase -> centred FFT -> ky-t undersampling (R=4) -> zero-filled magnitude.

ours : Compose([RandSmoothPhased, FFT2cd, RandKspaceMaskd(VISTA, cached), ZeroFilledd]) — checkerboard FFT.
monai: the same phase step (MONAI has none), then ``monai.data.fft_utils.fftn_centered`` and
       ``monai.apps.reconstruction.transforms.array.RandomKspaceMask`` (which also returns the zero-filled RSS
       magnitude via ``ifftn_centered``). Note: MONAI's mask is a static 1-D column mask (the same lines in every
       frame, along the last spatial axis W), not a ky-t mask, so it does less work than VISTA would;
       our VISTA masks are served from the process cache (a pool of ``--mask-pool`` seeds, warmed before timing).

    python benchmarks/kspace_simulation.py --subjects 8 --threads 2

``--worker-epoch N``: a second table, what one DataLoader worker spends on masks in one epoch of N subjects with
the training chain's draws (R from 2, 4, 8; a pool of 256 seeds per R; one seed per view): every worker starts with
an empty in-process mask cache, so this is paid again in each epoch unless the disk cache
(``KMTR_CACHE_DIR``, ``kmtr_monai.transforms.array._mask_disk_cache``) already holds the masks. Rows: the run
that fills the disk cache, then the median of 3 alternating runs each with the disk cache off and warm.

    python benchmarks/kspace_simulation.py --views 5 --frames 8 --size 48 --worker-epoch 350
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from monai.apps.reconstruction.transforms.array import RandomKspaceMask
from monai.data.fft_utils import fftn_centered
from monai.transforms import Compose

from kmtr_monai.transforms import FFT2cd, RandKspaceMaskd, RandSmoothPhase, RandSmoothPhased, ZeroFilledd


def ours_chain(acceleration: int, mask_pool: int):
    chain = Compose([
        RandSmoothPhased("image", output_key="kspace_full"),
        FFT2cd("kspace_full"),
        RandKspaceMaskd("kspace_full", output_key="kspace", mask_key="mask", pattern="vista",
                        accelerations=(acceleration,), mask_pool=mask_pool),
        ZeroFilledd("kspace", output_key="zero_filled"),
    ])  # fmt: skip
    chain.set_random_state(0)
    return lambda img: chain({"image": img})["zero_filled"]


def monai_chain(acceleration: int):
    phase = RandSmoothPhase()
    phase.set_random_state(0)
    mask = RandomKspaceMask(center_fractions=[0.08], accelerations=[acceleration], spatial_dims=2, is_complex=True)
    mask.set_random_state(0)

    def run(img):
        x = phase(img)  # (S, T, H, W) complex64
        k = fftn_centered(torch.view_as_real(x), spatial_dims=2, is_complex=True)  # (S, T, H, W, 2)
        _, zero_filled = mask(k[:, :, None])  # a singleton coil axis for MONAI's RSS over coils
        return zero_filled

    return run


def time_chains(chains: dict, images, device) -> dict:
    """subjects/s of each chain; the chains alternate subject by subject so a shared, noisy CPU hits both alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in chains.values():
        fn(images[0])  # warm-up: FFT plans, checkerboards, mask cache
    spent = dict.fromkeys(chains, 0.0)
    for img in images:
        for name, fn in chains.items():
            sync()
            t0 = time.perf_counter()
            out = fn(img)
            sync()
            spent[name] += time.perf_counter() - t0
            assert out.shape[-2:] == img.shape[-2:]
    return {name: len(images) / t for name, t in spent.items()}


def _fresh_worker_epoch(k: torch.Tensor, n_subjects: int, cache_dir: str) -> float:
    """Seconds for ``n_subjects`` training mask draws in a new worker (empty in-process cache)."""
    from kmtr_monai.transforms import RandKspaceMask, array, cached_make_mask

    os.environ["KMTR_CACHE_DIR"] = cache_dir
    array._mask_disk_cache.cache_clear()
    cached_make_mask.cache_clear()
    tr = RandKspaceMask("vista", (2, 4, 8), mask_pool=256)
    tr.set_random_state(0)
    t0 = time.perf_counter()
    for _ in range(n_subjects):
        tr(k)
    return time.perf_counter() - t0


def worker_epoch(n_subjects: int, views: int, frames: int, size: int, rounds: int = 3) -> dict[str, float]:
    """Median seconds of one fresh worker's epoch of mask draws with the disk cache off and warm, the two rows
    alternating over ``rounds`` (a noisy shared CPU hits both alike), after one run that fills the cache."""
    k = torch.zeros(views, frames, size, size, dtype=torch.complex64)
    with tempfile.TemporaryDirectory() as cache:
        filling = _fresh_worker_epoch(k, n_subjects, cache)
        times = {"disk cache off": [], "disk cache warm": []}
        for _ in range(rounds):
            times["disk cache off"].append(_fresh_worker_epoch(k, n_subjects, "off"))
            times["disk cache warm"].append(_fresh_worker_epoch(k, n_subjects, cache))
    return {"disk, filling": filling, **{row: float(np.median(t)) for row, t in times.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda or both (default: cpu, plus cuda when available)")
    p.add_argument("--views", type=int, default=9)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--acceleration", type=int, default=4)
    p.add_argument("--mask-pool", type=int, default=None, help="VISTA seed pool (default: --views, warmed once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker-epoch", type=int, default=0, help="also time one worker's epoch of N mask draws")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cuda = ["cuda"] if torch.cuda.is_available() else []
    devices = [a.device] if a.device not in (None, "both") else ["cpu"] + cuda
    rng = np.random.default_rng(0)
    shape = (a.views, a.frames, a.size, a.size)
    images_cpu = [torch.from_numpy(rng.random(shape, dtype=np.float32)) for _ in range(a.subjects)]
    print(f"k-space simulation: {a.subjects} subjects of {shape}, R={a.acceleration}, threads={a.threads}")
    print(f"{'device':8s} {'ours (subj/s)':>14s} {'MONAI (subj/s)':>15s} {'ours/MONAI':>11s}")
    for dev in devices:
        device = torch.device(dev)
        images = [im.to(device) for im in images_cpu]
        rates = time_chains({"ours": ours_chain(a.acceleration, a.mask_pool or a.views),
                             "monai": monai_chain(a.acceleration)}, images, device)  # fmt: skip
        ours, base = rates["ours"], rates["monai"]
        print(f"{dev:8s} {ours:14.2f} {base:15.2f} {ours / base:10.2f}x")
    print("MONAI's RandomKspaceMask: static 1-D column mask (same lines every frame), not ky-t VISTA.")
    if a.worker_epoch:
        print(f"\none worker's epoch of mask draws: {a.worker_epoch} subjects x {a.views} views, "
              f"{a.frames} frames x {a.size} lines, R in (2, 4, 8), pool 256 per R")  # fmt: skip
        print(f"{'':16s} {'seconds':>8s} {'ms/subject':>11s}")
        for row, sec in worker_epoch(a.worker_epoch, a.views, a.frames, a.size).items():
            print(f"{row:16s} {sec:8.2f} {1000 * sec / a.worker_epoch:11.1f}")


if __name__ == "__main__":
    main()
