"""The report's figures: MAE against R, 3-D t-SNE of k-MTR embeddings, Bland–Altman, ROC, segmentation and
reconstruction examples, and training curves. Each ``fig_*`` draws one PNG and returns None, or returns why it was
skipped (its inputs are missing)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from kmtr_monai.constants import NUM_CLASSES
from kmtr_monai.data.targets import read_phenotype_table
from kmtr_monai.report.run import output_path, read_history, stages_of
from kmtr_monai.report.stats import SEED
from kmtr_monai.report.tables import IMAGE_BOUND, KMTR, MEAN_LABEL

BA_PHENOTYPES = ("LVEDV (mL)", "LVEF (%)", "LVM (g)")
TSNE_PHENOTYPES = ("LVEDV (mL)", "LVM (g)", "RVEDV (mL)")
# The validation metric drawn per task in the training curves: the first of these a history holds, else its first
# ``val_*`` column.
KEY_METRICS = {"regress": ("val_mean_r2", "val_mean_mae"), "classify": ("val_mean_auc",),
               "segment": ("val_mean_dice",), "recon": ("val_psnr",)}  # fmt: skip


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def fig_mae_vs_r(results: dict, path: Path) -> str | None:
    """Mean phenotype MAE against R per k-space method, image bound and mean predictor as horizontal lines."""
    reg = results["regress"]
    curves = {m: {int(k): v for k, v in c.items() if k.isdigit()} for m, c in reg["mae_vs_R"].items()}
    curves = {m: c for m, c in curves.items() if c}
    if not curves:
        return "no k-space regression results"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, c in curves.items():
        rs = sorted(c)
        ax.plot(rs, [c[r] for r in rs], "o-", label=results["labels"]["regress"].get(m, m))
    image = reg["mae_vs_R"].get(IMAGE_BOUND, {}).get("full")
    if image is not None:
        ax.axhline(image, color="k", ls="--", label=f"{results['labels']['regress'].get(IMAGE_BOUND)} (bound)")
    ax.axhline(reg["mean_predictor"]["mean_mae"], color="grey", ls=":", label=MEAN_LABEL)
    ax.set(xscale="log", xlabel="acceleration R", ylabel="mean phenotype MAE", title="Phenotype MAE against R")
    ax.set_xticks(results["run"]["accelerations"], [str(r) for r in results["run"]["accelerations"]])
    ax.minorticks_off()
    ax.legend(fontsize=6)
    _save(fig, path)
    return None


def tsne_perplexity(n: int) -> float:
    """t-SNE perplexity adapted to N subjects: (N − 1) / 3, clipped to [1, 30] (sklearn needs it below N)."""
    return float(min(30.0, max(1.0, (n - 1) / 3)))


def tsne_3d(z: np.ndarray, seed: int = SEED) -> np.ndarray:
    """3-D t-SNE of (N, D) embeddings with :func:`tsne_perplexity`."""
    from sklearn.manifold import TSNE

    init = "pca" if z.shape[1] >= 3 else "random"
    return TSNE(n_components=3, perplexity=tsne_perplexity(len(z)), init=init, random_state=seed).fit_transform(z)


def fig_tsne(cfg: dict, results: dict, path: Path) -> str | None:
    """3-D t-SNE of the k-MTR test embeddings coloured by LVEDV, LVM and RVEDV (three subplots)."""
    src = cfg["dir"] / "report" / "data" / "embeddings.npz"
    if not src.is_file():
        return f"{src.relative_to(cfg['dir'])} not found"
    data = np.load(src, allow_pickle=False)
    z, eids = np.asarray(data["z"], dtype=np.float64), [str(e) for e in data["eid"]]
    if len(z) < 5:
        return f"only {len(z)} embeddings"
    table_path = Path(cfg["cohort"]) / "phenotypes.csv"
    with open(table_path, newline="") as f:
        header = next(csv.reader(f), [])
    if not set(TSNE_PHENOTYPES) <= set(header):
        return f"{table_path} lacks columns {sorted(set(TSNE_PHENOTYPES) - set(header))}"
    table = read_phenotype_table(str(table_path), TSNE_PHENOTYPES)
    colour = np.stack([table.get(e, np.full(len(TSNE_PHENOTYPES), np.nan)) for e in eids])
    xyz = tsne_3d(z)
    results["tsne"] = {"n": len(z), "dim": int(z.shape[1]), "perplexity": tsne_perplexity(len(z))}
    plt = _plt()
    fig = plt.figure(figsize=(13, 4.5))
    for j, name in enumerate(TSNE_PHENOTYPES):
        ax = fig.add_subplot(1, 3, j + 1, projection="3d")
        sc = ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colour[:, j], cmap="viridis", s=8)
        fig.colorbar(sc, ax=ax, shrink=0.6, label=name)
        ax.set_title(f"k-MTR embeddings: {name}", fontsize=9)
    _save(fig, path)
    return None


def bland_altman(pred: np.ndarray, true: np.ndarray) -> dict:
    """Bias (mean of pred − true) and 95 % limits of agreement (bias ± 1.96 SD) over finite pairs."""
    ok = np.isfinite(pred) & np.isfinite(true)
    diff = pred[ok] - true[ok]
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if ok.sum() > 1 else math.nan
    return {"bias": bias, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": int(ok.sum())}


def fig_bland_altman(ctx: dict, results: dict, path: Path) -> str | None:
    """Bland–Altman plots of k-MTR for LVEDV, LVEF and LVM at the default R."""
    d = ctx["regress"].get(KMTR)
    names = [n for n in BA_PHENOTYPES if d is not None and n in d["names"]]
    if not names:
        return "no k-MTR phenotype predictions with LVEDV / LVEF / LVM"
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    results["bland_altman"] = {}
    for ax, n in zip(axes[0], names):
        j = d["names"].index(n)
        p, t = d["pred"][:, j], d["true"][:, j]
        ba = results["bland_altman"][n] = bland_altman(p, t)
        ax.scatter((p + t) / 2, p - t, s=8)
        for y, ls in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
            ax.axhline(y, color="k", ls=ls, lw=0.8)
        ax.set(xlabel=f"mean of k-MTR and reference {n}", ylabel="k-MTR − reference",
               title=f"{n}: bias {ba['bias']:.2f}, LoA [{ba['loa_low']:.2f}, {ba['loa_high']:.2f}]")  # fmt: skip
        ax.title.set_fontsize(8)
    _save(fig, path)
    return None


def fig_roc(ctx: dict, results: dict, path: Path) -> str | None:
    """ROC curves per disease for every classify method at the default R."""
    from sklearn.metrics import roc_curve

    if not ctx["classify"]:
        return "no classification predictions"
    names = results["classify"]["diseases"]
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for j, (ax, n) in enumerate(zip(axes[0], names)):
        for m, d in ctx["classify"].items():
            ok = np.isfinite(d["true"][:, j])
            if np.unique(d["true"][ok, j]).size == 2:
                fpr, tpr, _ = roc_curve(d["true"][ok, j], d["prob"][ok, j])
                auc = results["classify"]["methods"][m]["per_disease"][n]["auc"]
                ax.plot(fpr, tpr, label=f"{results['labels']['classify'][m]} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], "k:", label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=n)
        ax.legend(fontsize=5)
    _save(fig, path)
    return None


def _examples(cfg: dict):
    src = cfg["dir"] / "report" / "data" / "examples.npz"
    return np.load(src, allow_pickle=False) if src.is_file() else None


def _show(ax, img, title: str, seg=None) -> None:
    ax.imshow(np.abs(img), cmap="gray")
    if seg is not None:
        ax.imshow(np.ma.masked_equal(seg, 0), cmap="tab10", vmin=0, vmax=NUM_CLASSES - 1, alpha=0.5,
                  interpolation="nearest")  # fmt: skip
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def fig_examples_recon(cfg: dict, path: Path) -> str | None:
    """Reconstructions of example subjects beside the ground truth and the zero-filled image."""
    ex = _examples(cfg)
    if ex is None or not {"image", "zero_filled", "recon_kmtr"} <= set(ex.files):
        return "report/data/examples.npz with image, zero_filled, recon_kmtr not found"
    cols = [("image", "ground truth"), ("zero_filled", "zero-filled"), ("recon_kmtr", "k-MTR"),
            ("recon_kgin", "k-GIN-style")]  # fmt: skip
    cols = [c for c in cols if c[0] in ex.files]
    return _example_grid(ex, [(ex[k], t, None) for k, t in cols], path)


def fig_examples_seg(cfg: dict, path: Path) -> str | None:
    """Segmentation overlays of example subjects beside the ground truth and the zero-filled image."""
    ex = _examples(cfg)
    if ex is None or not {"image", "zero_filled", "seg_true", "seg_kmtr"} <= set(ex.files):
        return "report/data/examples.npz with image, zero_filled, seg_true, seg_kmtr not found"
    cols = [(ex["zero_filled"], "zero-filled", None), (ex["image"], "ground truth", ex["seg_true"]),
            (ex["image"], "k-MTR", ex["seg_kmtr"])]  # fmt: skip
    if "seg_dynunet_zf" in ex.files:
        cols.append((ex["image"], "DynUNet (zero-filled)", ex["seg_dynunet_zf"]))
    return _example_grid(ex, cols, path)


def _example_grid(ex, cols: list, path: Path) -> str | None:
    n = cols[0][0].shape[0]
    titles = [str(t) for t in ex["titles"]] if "titles" in ex.files else [str(i) for i in range(n)]
    plt = _plt()
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (img, title, seg) in enumerate(cols):
            _show(axes[i, j], img[i], f"{titles[i]}: {title}", None if seg is None else seg[i])
    _save(fig, path)
    return None


def _key_metric(task: str, history: dict) -> str | None:
    for name in KEY_METRICS.get(task, ()):
        if name in history and np.isfinite(history[name]).any():
            return name
    return next((c for c in history if c.startswith("val_") and np.isfinite(history[c]).any()), None)


def training_curves(cfg: dict) -> dict:
    """``{stage: {task, label, metric, epoch, train_loss, values}}`` from every entry whose ``outputs.history``
    exists (``epoch``, ``train_loss``, ``val_*`` columns; a missing column gives NaN values)."""
    out = {}
    for stage in stages_of(cfg, kind=None):
        history = read_history(output_path(cfg, stage, "history"))
        if history is None:
            continue
        metric = _key_metric(stage.get("task"), history)
        nan = np.full(len(history["epoch"]), np.nan)
        out[stage["name"]] = {"task": stage.get("task"), "label": stage.get("label") or stage["name"],
                              "metric": metric, "epoch": history["epoch"].tolist(),
                              "train_loss": history.get("train_loss", nan).tolist(),
                              "values": history[metric].tolist() if metric else nan.tolist()}  # fmt: skip
    return out


def fig_curves(results: dict, path: Path) -> str | None:
    """Training loss and the key validation metric against epoch: one row of two panels per task, one line per
    stage (small multiples)."""
    curves = results.get("curves") or {}
    if not curves:
        return "no stage has an eval/history.csv"
    tasks = list(dict.fromkeys(c["task"] for c in curves.values()))
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 2.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        mine = {n: c for n, c in curves.items() if c["task"] == task}
        metrics = sorted({c["metric"] for c in mine.values() if c["metric"]})
        for c in mine.values():
            row[0].plot(c["epoch"], c["train_loss"], "o-", ms=3, label=c["label"])
            if c["metric"]:
                row[1].plot(c["epoch"], c["values"], "o-", ms=3, label=c["label"])
        row[0].set(xlabel="epoch", ylabel="train loss", title=f"{task}: training loss")
        row[1].set(xlabel="epoch", ylabel=", ".join(metrics) or "–", title=f"{task}: validation")
        epochs = sorted({e for c in mine.values() for e in c["epoch"] if np.isfinite(e)})
        for ax in row:
            if len(epochs) <= 10:  # a short run: one tick per epoch (a single epoch would get fractional ticks)
                ax.set_xticks(epochs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.title.set_fontsize(9)
            ax.legend(fontsize=5)
    _save(fig, path)
    return None


def make_figures(cfg: dict, ctx: dict, results: dict, out: Path) -> dict:
    """Draw every figure; ``{name: {"file": png or None, "note": why skipped}}``."""
    jobs = {"mae_vs_R": lambda p: fig_mae_vs_r(results, p), "tsne": lambda p: fig_tsne(cfg, results, p),
            "bland_altman": lambda p: fig_bland_altman(ctx, results, p), "roc": lambda p: fig_roc(ctx, results, p),
            "examples_segmentation": lambda p: fig_examples_seg(cfg, p),
            "examples_reconstruction": lambda p: fig_examples_recon(cfg, p),
            "curves": lambda p: fig_curves(results, p)}  # fmt: skip
    figures = {}
    for name, job in jobs.items():
        note = job(out / f"{name}.png")
        figures[name] = {"file": None if note else f"{name}.png", "note": note}
    return figures
