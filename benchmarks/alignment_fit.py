"""Can Stage II fit a handful of subjects? Training loss of the align network on one fixed set of 16 subjects.

A run whose loss stays at log B (B = batch size) has learned nothing; this script asks which part of the training
input keeps it there. The align bundle's own network, loss, Stage I weights and training data pipeline
(``bundles/align/configs/train.json`` at ``--preset``, with a pipeline run's cohort and Stage I checkpoints) are
trained with the bundle's optimiser settings (AdamW, its learning rate and weight decay, no schedule) for
``--steps`` steps on the first 16 training subjects, under four input regimes:

    fixed draw       one draw of the k-space simulation, no image augmentation, reused every step (the same
                     mask and phase: what a network can memorise)
    fresh k-space    a new k-space simulation every step (smooth phase, shift, global phase, ky-t mask at R drawn
                     from the bundle's accelerations), no image augmentation
    fresh, 15°       as above plus the bundle's augmentations with rotations of at most 15°
    fresh, defaults  the bundle's training transforms as configured (rotations up to ``aug_rotation_deg``)

Reported per regime: the mean training loss over the last 5 steps, the k-space -> image top-1 retrieval among the
16 subjects at the last step, against the chance references log 16 and 1/16.

Usage::

    python benchmarks/alignment_fit.py --run runs/small --preset small --steps 20
"""

from __future__ import annotations

import math
import time

import torch

from alignment_gain import make_parser, open_run, run_arguments

N_SUBJECTS = 16
NO_AUGMENT = {"aug_rotation_deg": 0.0, "aug_gamma": [1.0, 1.0], "aug_noise_std": 0.0}
REGIMES = {  # name: (config overrides, draw the training transforms anew every step)
    "fixed draw": (NO_AUGMENT, False),
    "fresh k-space": (NO_AUGMENT, True),
    "fresh, 15°": ({"aug_rotation_deg": 15.0}, True),
    "fresh, defaults": ({}, True),
}


def fit(run, preset: str, overrides: dict, fresh: bool, steps: int, seed: int = 0) -> dict:
    """Train a freshly built align network on the first 16 training subjects; per-step losses and final top-1."""
    from monai.data import list_data_collate
    from monai.utils import set_determinism

    parser = make_parser(run, preset, acceleration=4)
    for key, value in overrides.items():
        parser[key] = value
    parser["train#dataset#data"] = (f"$kmtr_monai.data.datalist.read_datalist(@datalist_file, 'training')"
                                    f"[:{N_SUBJECTS}]")  # fmt: skip
    parser["train#dataset#num_workers"] = 0
    parser["train#dataset#progress"] = False
    set_determinism(seed=seed)  # the network's initialisation and every random transform
    net, loss_fn = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    prepare, data = parser.get_parsed_content("prepare_batch"), parser.get_parsed_content("train#dataset")
    opt = torch.optim.AdamW(net.parameters(), lr=parser.get_parsed_content("learning_rate"),
                            weight_decay=parser.get_parsed_content("weight_decay"))  # fmt: skip
    device = torch.device("cpu")

    def draw():
        first, _, rest, _ = prepare(list_data_collate([data[i] for i in range(N_SUBJECTS)]), device)
        return (first, *rest)

    net.train()
    inputs, losses = draw(), []
    for step in range(steps):
        if fresh and step:
            inputs = draw()
        out = net(*inputs)
        loss = loss_fn(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    zk = torch.nn.functional.normalize(out["z_kspace"].detach(), dim=1)
    zi = torch.nn.functional.normalize(out["z_image"].detach(), dim=1)
    top1 = float(((zk @ zi.T).argmax(1) == torch.arange(len(zk))).float().mean())
    return {"losses": losses, "top1": top1}


def main(argv=None) -> None:
    ap = run_arguments(__doc__, split="validation")
    ap.add_argument("--steps", type=int, default=20)
    args, run = open_run(ap, argv, align=False)
    print(f"alignment fit — run {run}, preset {args.preset}, first {N_SUBJECTS} training subjects, {args.steps} "
          f"steps each (chance: loss log {N_SUBJECTS} = {math.log(N_SUBJECTS):.3f}, top-1 {1 / N_SUBJECTS:.3f})\n")
    print("| regime | loss, first step | loss, mean of last 5 steps | top-1 at the last step | seconds |")
    print("|---|---|---|---|---|")
    for name, (overrides, fresh) in REGIMES.items():
        t0 = time.perf_counter()
        res = fit(run, args.preset, overrides, fresh, args.steps)
        last = sum(res["losses"][-5:]) / len(res["losses"][-5:])
        print(f"| {name} | {res['losses'][0]:.3f} | {last:.3f} | {res['top1']:.3f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
