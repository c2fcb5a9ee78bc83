"""The evidence questions, each answered from a 95 % paired bootstrap interval of a difference over the same test
subjects, and the headline: whether this run can rank methods at all.

(i) every model against its floor (the linear model on the same input), (ii) every model against the mean
predictor / chance, (iii) k-MTR against the unaligned k-space MAE and the scratch encoder, (iv) k-MTR's gap to the
fully-sampled image bound against the zero-filled baseline's, (v) segmentation against DynUNet (zero-filled),
(vi) reconstruction against view sharing.
"""

from __future__ import annotations

import math

import numpy as np

from kmtr_monai.report.run import VECTOR_TASKS, input_of, label_of, method_key, stages_of
from kmtr_monai.report.stats import (
    align,
    auc_of,
    bootstrap,
    mae_diff,
    mae_of,
    paired_diff,
    r2_of,
    ratio,
    verdict,
)
from kmtr_monai.report.tables import FLOOR_OF_INPUT, FLOORS, IMAGE_BOUND, KMTR, ZF_BASELINE

QUESTIONS = {"floors": "(i) Does each model beat its floor (a linear model on the same input)?",
             "references": "(ii) Does every model beat the mean predictor / chance?",
             "kmtr_vs_unaligned": "(iii) Does k-MTR beat the unaligned k-space MAE and the scratch encoder?",
             "upper_bound": "(iv) Is k-MTR closer to the fully-sampled image bound than zero-filled?",
             "segmentation_recon": "(v, vi) Segmentation against DynUNet (zero-filled); recon against view "
                                   "sharing"}  # fmt: skip


def _item(question: str, comparison: str, stat: dict, lower_is_better: bool, unit: str = "") -> dict:
    ans = verdict(stat["ci"], lower_is_better)
    lo, hi = stat["ci"]
    text = f"{comparison}: {stat['estimate']:+.3g}{unit} [{lo:+.3g}, {hi:+.3g}] (n={stat['n']}) → {ans}"
    return {"question": question, "comparison": comparison, **stat, "answer": ans, "text": text}


def _not_available(question: str, comparison: str, absent) -> dict:
    """An evidence entry whose inputs are missing from the run."""
    ans = f"not available: no {', '.join(absent)} results"
    return {"question": question, "comparison": comparison, "estimate": math.nan, "ci": [math.nan, math.nan],
            "answer": ans, "text": f"{comparison}: {ans}"}  # fmt: skip


def _absent(data: dict, methods) -> list[str]:
    return [m for m in methods if m not in data]


def evidence_floors(cfg: dict, ctx: dict) -> list[dict]:
    """(i) Every regress / classify model against the floor of its input (image → floor-image, zero_filled →
    floor-zf, kspace → floor-kspace): paired mean R² or mean AUC difference (model − floor; above 0 = yes)."""
    out, q = [], "beats the linear floor on its input"
    for task, of, what in (("regress", r2_of, "mean R²"), ("classify", auc_of, "mean AUC")):
        if not ctx["floors"][task]:
            if ctx[task]:
                out.append(_not_available(q, f"every {task} model: {what} − its floor", [f"{task} floor"])
                           | {"task": task, "input": None, "method": None})  # fmt: skip
            continue
        for stage in stages_of(cfg, task):
            m = method_key(stage)
            if m not in ctx[task]:
                continue
            inp = input_of(stage)
            floor = FLOOR_OF_INPUT.get(inp, "floor-kspace")
            comparison = f"{label_of(stage)}: {what} − {floor}"
            extra = {"method": m, "task": task, "input": inp, "floor": floor, "label": label_of(stage)}
            ref = ctx["floors"][task].get(floor)
            out.append((_not_available(q, comparison, [f"{task} {floor}"]) if ref is None else
                        _item(q, comparison, paired_diff(of, ctx[task][m], ref), False)) | extra)  # fmt: skip
    return out


def evidence_references(ctx: dict, labels: dict) -> list[dict]:
    """(ii) Every regress model against the training-mean predictor, every classifier against chance (AUC 0.5)."""
    q, out, mean = "beats the reference", [], ctx["mean_predictor"]["train_mean"]
    for m, d in ctx["regress"].items():
        ref = {**d, "pred": np.broadcast_to(np.array([mean[n] for n in d["names"]]), d["pred"].shape)}
        stat = mae_diff(d, ref)
        out.append(_item(q, f"{labels['regress'][m]}: mean MAE − mean predictor", stat, True) | {"method": m})
    for m, d in ctx["classify"].items():
        stat = bootstrap(lambda w: auc_of(d, w) - 0.5, len(d["eid"]))
        out.append(_item(q, f"{labels['classify'][m]}: mean AUC − 0.5", stat, False) | {"method": m})
    return out


def evidence_kmtr(ctx: dict, labels: dict) -> list[dict]:
    """(iii) k-MTR against the unaligned k-space MAE (stage1) and the scratch encoder (paired differences)."""
    out = []
    for other in ("stage1", "scratch"):
        name = labels.get("regress", {}).get(other) or labels.get("classify", {}).get(other) or other
        q = f"k-MTR beats {name}"
        for task, what, of, lower in (("regress", "MAE", mae_of, True), ("classify", "AUC", auc_of, False)):
            comparison, absent = f"mean {what} k-MTR − {other}", _absent(ctx[task], (KMTR, other))
            out.append(_not_available(q, comparison, [f"{task} {m}" for m in absent]) if absent else
                       _item(q, comparison, paired_diff(of, ctx[task][KMTR], ctx[task][other]), lower))  # fmt: skip
    return out


def _gap(task: str, d: dict, bound: dict, w: np.ndarray) -> np.ndarray:
    """(B,) signed gap to the image upper bound: how much worse ``d`` is (MAE above / AUC below the bound)."""
    if task == "regress":
        return mae_of(d, w) - mae_of(bound, w)
    return auc_of(bound, w) - auc_of(d, w)


def evidence_upper_bound(ctx: dict) -> list[dict]:
    """(iv) Is k-MTR closer to the fully-sampled image bound than the zero-filled baseline?

    Paired bootstrap of gap(k-MTR) − gap(zero-filled), gaps signed as in :func:`_gap` (negative = yes); a model
    above the bound has a negative gap, which counts as closing it."""
    out, q = [], "k-MTR closer to the image upper bound than zero-filled"
    for task, what in (("regress", "mean MAE"), ("classify", "mean AUC")):
        data, comparison = ctx[task], f"{what} gap to image bound: k-MTR − zero-filled"
        absent = _absent(data, (KMTR, ZF_BASELINE, IMAGE_BOUND))
        if absent:
            out.append(_not_available(q, comparison, [f"{task} {m}" for m in absent]))
        else:
            k, z, i = align(data[KMTR], data[ZF_BASELINE], data[IMAGE_BOUND])
            stat = bootstrap(lambda w: _gap(task, k, i, w) - _gap(task, z, i, w), len(k["eid"]))
            one = np.ones((1, len(k["eid"])))
            gaps = {"gap_kmtr": float(_gap(task, k, i, one)[0]), "gap_zero_filled": float(_gap(task, z, i, one)[0])}
            item = _item(q, comparison, stat, True)
            item["text"] += f" (gaps: k-MTR {gaps['gap_kmtr']:+.3g}, zero-filled {gaps['gap_zero_filled']:+.3g})"
            out.append(item | gaps)
    return out


def _point_item(question: str, comparison: str, diff: float) -> dict:
    ans = "not available" if not np.isfinite(diff) else ("yes" if diff > 0 else "no")
    ans += " (point estimate: the test folders hold means only, no interval)" if np.isfinite(diff) else ""
    return {"question": question, "comparison": comparison, "estimate": diff, "ci": [math.nan, math.nan],
            "answer": ans, "text": f"{comparison}: {diff:+.3g} → {ans}"}  # fmt: skip


def _dense_item(question: str, comparison: str, rows: tuple, means: tuple) -> dict:
    """Paired bootstrap of the per-subject difference (higher is better) when both ``rows`` are loaded, else the
    point estimate of the two ``means``."""
    if any(r is None for r in rows):
        return _point_item(question, comparison, means[0] - means[1])
    a, b = align(*rows)
    diff = a["value"] - b["value"]
    ok = np.isfinite(diff)
    stat = bootstrap(lambda w: ratio(w[:, ok] @ diff[ok], w[:, ok].sum(axis=1)), int(ok.sum()))
    return _item(question, comparison, stat, lower_is_better=False)


def evidence_dense(results: dict, ctx: dict) -> list[dict]:
    """(v) Dice k-MTR − DynUNet (zero-filled) at seg_acceleration; (vi) PSNR k-MTR − view sharing (default R)."""
    out, seg, rec = [], results["segment"], results["recon"]
    r = str(seg["R"])
    k, z = (seg["methods"].get(m, {}).get("tests", {}).get(r) for m in (KMTR, "dynunet-zf"))
    q = "k-MTR segments better than DynUNet on zero-filled images"
    comparison = f"mean Dice k-MTR − DynUNet (zero-filled) at R={r}"
    absent = [f"segment {m} at R={r}" for m, x in ((KMTR, k), ("dynunet-zf", z)) if not x]
    out.append(_not_available(q, comparison, absent) if absent else
               _dense_item(q, comparison, (ctx["segment"].get(KMTR), ctx["segment"].get("dynunet-zf")),
                           (k["mean_dice"], z["mean_dice"])))  # fmt: skip
    r = str(rec["R"])
    k, v = rec["methods"].get(KMTR, {}).get("tests", {}).get(r), rec["references"]["view-sharing"]["tests"].get(r)
    q, comparison = "k-MTR reconstructs better than view sharing", f"PSNR k-MTR − view sharing at R={r} (dB)"
    absent = [f"recon {m} at R={r}" for m, x in ((KMTR, k), ("view-sharing", v)) if not x]
    out.append(_not_available(q, comparison, absent) if absent else
               _dense_item(q, comparison, (ctx["recon"].get(KMTR), ctx["recon"].get("view-sharing")),
                           (k["psnr"], v["psnr"])))  # fmt: skip
    return out


def headline(ctx: dict, floor_items: list[dict]) -> dict:
    """Whether this run can rank methods: only when some fully-sampled image model (input image) beats the linear
    floor on the same pixels (floor-image) on mean R², i.e. the training budget takes even the upper-bound models
    past a linear read-out of their input. ``{"can_rank": True / False / None (no floors), "text"}``."""
    if not any(ctx["floors"][t] for t in VECTOR_TASKS):
        return {"can_rank": None, "text": f"No floors in this run ({', '.join(FLOORS)}: linear models on each input), "
                "so whether the models learned more than a linear read-out of their input is not checked; read the "
                "comparisons below with that in mind."}  # fmt: skip
    if "floor-image" not in ctx["floors"]["regress"]:
        return {"can_rank": False, "text": "This run cannot rank methods: floor-image (the linear model on the "
                "fully-sampled pixels) has no phenotype predictions, so the training budget cannot be checked."}
    image = [i for i in floor_items if i["task"] == "regress" and i["input"] == "image" and "n" in i]
    beating = [i for i in image if i["answer"] == "yes"]
    if beating:
        best = max(beating, key=lambda i: i["ci"][0])
        return {"can_rank": True, "text": f"Training check passed: {best['label']} beats floor-image on mean R² by "
                f"{best['estimate']:+.3g} [{best['ci'][0]:+.3g}, {best['ci'][1]:+.3g}], so the budget trains models "
                "past a linear read-out of their input and the comparisons below can rank methods."}  # fmt: skip
    if not image:
        why = "there are no fully-sampled image model results to check the training budget against it"
    else:
        best = max(image, key=lambda i: i["estimate"])
        why = (f"none beats it on mean R² (best: {best['label']} {best['estimate']:+.3g} [{best['ci'][0]:+.3g}, "
               f"{best['ci'][1]:+.3g}]), so the training budget does not take even the upper-bound models past a "
               "linear read-out of the same pixels and differences between methods reflect the budget, not the "
               "methods")  # fmt: skip
    return {"can_rank": False, "text": f"This run cannot rank methods: floor-image is the linear model on the "
            f"fully-sampled pixels, and {why}."}  # fmt: skip


def evidence(cfg: dict, results: dict, ctx: dict) -> dict:
    """Every evidence list, keyed as :data:`QUESTIONS`."""
    labels = results["labels"]
    return {"floors": evidence_floors(cfg, ctx), "references": evidence_references(ctx, labels),
            "kmtr_vs_unaligned": evidence_kmtr(ctx, labels), "upper_bound": evidence_upper_bound(ctx),
            "segmentation_recon": evidence_dense(results, ctx)}  # fmt: skip
