"""How fast does the Stage III phenotype head learn from frozen pretrained features, with and without ``input_norm``?

The regress bundle at ``--preset`` builds the image-MAE encoder of a pipeline run (``RUN/image-mae``, frozen, the
"image MAE" upper bound) and its ``TemporalMLPHead``; the encoder's tokens of every training and validation subject
(the bundle's deterministic validation preprocessing, fully-sampled images) are computed once, and the head alone is
then trained on them with the bundle's loss (Huber on standardised targets), AdamW at the bundle's learning rate and
batch size, for ``--steps`` steps, once with raw features and once with ``input_norm=True`` (each feature of the
cell tokens standardised over the batch). Printed every ``--every`` steps: the mean R² over the 12 phenotypes on the
training subjects (how well the head fits) and on the validation subjects. References in the same run: a ridge
probe on the standardised per-cell features (``RidgeCV`` per phenotype, strength by leave-one-out) and the
training-mean predictor (R² <= 0).

``--probe-lrs``: the probe-initialised head (``head_kind: probe``) as well: fitted in closed form on the same
training and validation features (:func:`kmtr_monai.engines.probe_init.install_fit`, what the bundle does when
training starts), then trained on with AdamW at each of these learning rates; the validation R² of the fit (step 0)
and after the steps shows which rate keeps it (the rate of the presets' frozen stages).

Usage::

    python benchmarks/head_fit.py --run runs/small --preset small --steps 600
    python benchmarks/head_fit.py --run runs/small --preset small --steps 150 --every 50 --heads probe \
        --probe-lrs 1e-5,3e-5,1e-4,5e-4,2e-3
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def regress_parser(run: Path, preset: str):
    """``ConfigParser`` of the regress bundle with the run's cohort and frozen image-MAE encoder."""
    from monai.bundle import ConfigParser

    from kmtr_monai.bundle import config_files

    parser = ConfigParser()
    parser.read_config(config_files(BUNDLES / "regress", "train", preset))
    for key, value in {"bundle_root": str(BUNDLES / "regress"), "dataset_dir": str(run / "cohort"),
                       "image_mae_ckpt": str(run / "image-mae" / "models" / "model.pt"),
                       "encoder": "@baselines#image_mae", "input": "image", "init": "stage1", "freeze_encoder": True,
                       "num_workers": 0, "ckpt_dir": str(run / "head_fit"), "output_dir": str(run / "head_fit")}.items():
        parser[key] = value  # fmt: skip
    return parser


def encode_split(parser, encoder, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, 1+N_tok, C), phenotypes (N, 12)) of ``split`` through the validation preprocessing."""
    parser["validate#dataset#data"] = f"$kmtr_monai.data.datalist.read_datalist(@datalist_file, {split!r})"
    parser["validate#dataset#progress"] = False
    loader = parser.get_parsed_content("validate#dataloader", lazy=False)
    tokens, targets = [], []
    with torch.no_grad():
        for batch in loader:
            tokens.append(encoder.encode(torch.as_tensor(batch["image"]))[0])
            targets.append(torch.as_tensor(batch["phenotypes"]))
    return torch.cat(tokens), torch.cat(targets)


def mean_r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over columns of R² (NaN targets skipped per column)."""
    values = []
    for k in range(y.shape[1]):
        ok = torch.isfinite(y[:, k])
        yy, pp = y[ok, k], pred[ok, k]
        values.append(float(1 - (yy - pp).square().sum() / (yy - yy.mean()).square().sum()))
    return float(np.mean(values))


def ridge_reference(x_train, y_train, x_val, y_val, cells) -> float:
    """Validation mean R² of per-phenotype ``RidgeCV`` on standardised flattened per-cell mean features."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from kmtr_monai.networks.mae import pool_tokens

    def flat(x):
        return pool_tokens(x, "view_time", None, cells).flatten(1).numpy()

    scaler = StandardScaler().fit(flat(x_train))
    a, b = scaler.transform(flat(x_train)), scaler.transform(flat(x_val))
    pred = np.full(y_val.shape, np.nan)
    for k in range(y_train.shape[1]):
        ok = np.isfinite(y_train[:, k].numpy())
        model = RidgeCV(alphas=np.logspace(-2, 5, 30)).fit(a[ok], y_train[ok, k].numpy())
        pred[:, k] = model.predict(b)
    return mean_r2(torch.from_numpy(pred), y_val)


def train_head(parser, head, data, steps: int, every: int, seed: int = 0, lr: float | None = None
               ) -> list[tuple[int, float, float]]:  # fmt: skip
    """Train ``head`` alone on cached tokens (AdamW at ``lr``, default the bundle's); (step, training R², validation
    R²) at step 0 and every ``every`` steps."""
    (x_train, y_train), (x_val, y_val) = data
    stats = parser.get_parsed_content("target_stats")
    mean, std = torch.as_tensor(stats["mean"]), torch.as_tensor(stats["std"])
    loss_fn = parser.get_parsed_content("loss")
    opt = torch.optim.AdamW(head.parameters(), lr=parser.get_parsed_content("learning_rate") if lr is None else lr,
                            weight_decay=parser.get_parsed_content("weight_decay"))  # fmt: skip
    batch = parser.get_parsed_content("batch_size")
    gen = torch.Generator().manual_seed(seed)
    head.eval()
    with torch.no_grad():
        rows = [(0, mean_r2(mean + std * head(x_train), y_train), mean_r2(mean + std * head(x_val), y_val))]
    head.train()
    for step in range(1, steps + 1):
        idx = torch.randperm(len(x_train), generator=gen)[:batch]
        loss = loss_fn(mean + std * head(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            head.eval()
            with torch.no_grad():
                fit = mean_r2(mean + std * head(x_train), y_train)
                val = mean_r2(mean + std * head(x_val), y_val)
            head.train()
            rows.append((step, fit, val))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="output folder of `kmtr pipeline` (cohort/, image-mae/)")
    ap.add_argument("--preset", default="small", choices=("tiny", "small"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heads", default="temporal,probe", help="temporal (raw and input_norm), probe, or both")
    ap.add_argument("--probe-lrs", default="1e-5,1e-4", help="learning rates after the probe head's fit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run).resolve()
    parser = regress_parser(run, args.preset)
    encoder = parser.get_parsed_content("encoder").eval()
    data = (encode_split(parser, encoder, "training"), encode_split(parser, encoder, "validation"))
    cells = encoder.view_time_cells
    (x_train, _), _ = data
    spread = float(x_train.std(0).mean()), float(x_train.abs().mean())
    print(f"head fit — run {run}, frozen image MAE, {len(x_train)} training / {len(data[1][0])} validation "
          f"subjects; features: across-subject std {spread[0]:.3f}, mean magnitude {spread[1]:.3f}\n")  # fmt: skip
    print(f"references: ridge probe on standardised cell features, validation R² "
          f"{ridge_reference(*data[0], *data[1], cells):.3f}; training-mean predictor R² <= 0\n")  # fmt: skip
    heads = args.heads.split(",")
    if "temporal" in heads:
        results = {}
        for norm in (False, True):
            parser["head_input_norm"] = norm
            torch.manual_seed(0)
            head = parser.get_parsed_content("task_head#head", lazy=False)  # a new instance
            results[norm] = train_head(parser, head, data, args.steps, args.every)
        print("| steps | raw features: training R² | validation R² | input_norm: training R² | validation R² |")
        print("|---|---|---|---|---|")
        for (step, f0, v0), (_, f1, v1) in zip(results[False], results[True]):
            print(f"| {step} | {f0:.3f} | {v0:.3f} | {f1:.3f} | {v1:.3f} |")
    if "probe" in heads:
        probe_table(parser, data, [float(v) for v in args.probe_lrs.split(",")], args.steps, args.every)


def probe_table(parser, data, lrs: list[float], steps: int, every: int) -> None:
    """The probe head fitted in closed form, then trained on at each rate: validation R² per step."""
    from kmtr_monai.engines.probe_init import install_fit

    parser["head_kind"] = "probe"
    (x_train, y_train), (x_val, y_val) = data
    wrapper = parser.get_parsed_content("task_head", lazy=False)  # PhenotypeRegressor(LinearProbeHead)
    with torch.no_grad():
        install_fit(wrapper, wrapper.head.features(x_train).double().numpy(), y_train.double().numpy(),
                    wrapper.head.features(x_val).double().numpy(), y_val.double().numpy())  # fmt: skip
    results = {lr: train_head(parser, copy.deepcopy(wrapper.head), data, steps, every, lr=lr) for lr in lrs}
    print("\nprobe head (closed-form fit at step 0, then AdamW), validation R²:\n")
    print("| steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    print("|---|" + "---|" * len(lrs))
    for i, (step, *_) in enumerate(results[lrs[0]]):
        print(f"| {step} | " + " | ".join(f"{results[lr][i][2]:.3f}" for lr in lrs) + " |")


if __name__ == "__main__":
    main()
