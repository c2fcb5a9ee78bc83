"""``report.md`` and the terminal summary, both rendered from the JSON-ready results alone."""

from __future__ import annotations

import json
import math

from kmtr_monai.report.evidence import QUESTIONS
from kmtr_monai.report.tables import CHANCE_LABEL, KMTR, MEAN_LABEL

SMOKE_PRESETS = ("tiny",)
SMOKE_NOTE = ("Note: the tiny preset checks that every stage runs end to end (a few dozen subjects, one or two "
              "epochs per model); its numbers are not evidence, and models at or below the mean predictor or "
              "chance are expected here. Use --preset small for evidence.")
STATS = ("auc", "f1", "recall", "precision", "ap")


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _ci(ci, digits: int = 3) -> str:
    return "–" if not ci else f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _diff(stat: dict | None) -> str:
    if not stat or stat.get("estimate") is None:
        return "–"
    lo, hi = stat["ci"]
    return f"{stat['estimate']:+.3g} [{_f(lo)}, {_f(hi)}]"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def md_stages(results: dict) -> str:
    rows = [[s["name"], s["task"], s["kind"], s["label"], s["status"] or "–", _f(s["minutes"]),
             ", ".join(s["tests"]) or "–"] for s in results["stages"]]  # fmt: skip
    return "## Stages\n\n" + md_table(["stage", "task", "kind", "method", "status", "minutes", "tests"], rows)


def md_regress(results: dict) -> str:
    reg = results["regress"]
    ms, fl, mp = reg["methods"], reg["floors"], reg["mean_predictor"]
    if not ms and not fl:
        return "## Table 1: phenotype regression\n\nNo regression predictions in this run."
    cols = [*ms.values(), *fl.values()]
    header = ["phenotype", *(v["label"] + (f" ({v['test']})" if k in fl else "") for k, v in [*ms.items(),
              *fl.items()]), MEAN_LABEL]  # fmt: skip
    rows = [[n, *(_f(v["mae"].get(n)) for v in cols), _f(mp["mae"].get(n))] for n in reg["phenotypes"]]
    rows.append(["**mean MAE**", *(_f(v["mean_mae"]) for v in cols), _f(mp["mean_mae"])])
    rows.append(["95 % CI", *(_ci(v["mean_mae_ci"]) for v in cols), _ci(mp["mean_mae_ci"])])
    rows.append(["**mean R²**", *(_f(v["mean_r2"]) for v in cols), _f(mp["mean_r2"])])
    rows.append(["95 % CI", *(_ci(v["mean_r2_ci"]) for v in cols), _ci(mp["mean_r2_ci"])])
    curves = reg["mae_vs_R"]
    rs = sorted({k for c in curves.values() for k in c}, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))
    by_r = md_table(["method", *(f"R={k}" if k.isdigit() else k for k in rs)],
                    [[results["labels"].get("regress", {}).get(m, m), *(_f(c.get(k)) for k in rs)]
                     for m, c in curves.items()])  # fmt: skip
    floors = " Floors (linear models on each input) beside the training-mean predictor." if fl else ""
    return (f"## Table 1: phenotype regression (MAE, native units, R={reg['R']}; image methods fully sampled)\n\n"
            f"Intervals: 95 % bootstrap over the same resampled test subjects for every column.{floors}\n\n"
            f"{md_table(header, rows)}\n\nMean MAE per acceleration:\n\n{by_r}")  # fmt: skip


def md_classify(results: dict) -> str:
    cl = results["classify"]
    ms, fl, ref = cl["methods"], cl["floors"], cl["reference"]
    if not ms and not fl:
        return "## Table 2: disease classification\n\nNo classification predictions in this run."
    cols = [*ms.values(), *fl.values()]
    header = ["disease", "metric", *(v["label"] + (f" ({v['test']})" if k in fl else "") for k, v in [*ms.items(),
              *fl.items()]), CHANCE_LABEL]  # fmt: skip
    rows = [[n, s, *(_f(v["per_disease"][n][s]) for v in cols), _f(ref[n][s])] for n in cl["diseases"] for s in STATS]
    rows += [["**mean**", s, *(_f(v["mean"][s]) for v in cols), _f(ref["mean"][s])] for s in STATS]
    rows.append(["mean AUC", "95 % CI", *(_ci(v["mean_auc_ci"]) for v in cols), "0.5"])
    return f"## Table 2: disease classification (R={cl['R']}; stored thresholds)\n\n{md_table(header, rows)}"


def md_probes(results: dict) -> str:
    pr = results["probes"]
    if not pr["rows"]:
        return "## Linear probes\n\nNo linear probes in this run."
    header = ["encoder", "pooling", "mean R²", "95 % CI", *(f"R² {p.split(' ')[0]}" for p in pr["phenotypes"]),
              "mean AUC", "95 % CI", "mean cosine", "effective rank"]  # fmt: skip
    rows = [[r["encoder"], r["pooling"], _f(r.get("mean_r2")), _ci(r.get("mean_r2_ci")),
             *(_f((r.get("r2") or {}).get(p)) for p in pr["phenotypes"]), _f(r.get("mean_auc")),
             _ci(r.get("mean_auc_ci")), _f(r["mean_cosine"]), _f(r["effective_rank"])] for r in pr["rows"]]  # fmt: skip
    body = md_table(header, rows)
    if pr["differences"]:
        diffs = md_table(["comparison", "Δ mean R² [95 % CI]", "Δ mean AUC [95 % CI]"],
                         [[d["comparison"], _diff(d["mean_r2"]), _diff(d["mean_auc"])] for d in pr["differences"]])
        body += f"\n\nPaired differences (same test subjects):\n\n{diffs}"
    return (f"## Linear probes (frozen features, linear model fitted on the training split; R={pr['R']})\n\n"
            f"{body}")


def md_segment(results: dict) -> str:
    seg = results["segment"]
    rows = [[v["label"], k, _f(t["mean_dice"]), *(_f(t["dice"][c]) for c in seg["classes"])]
            for v in seg["methods"].values() for k, t in v["tests"].items()]  # fmt: skip
    body = md_table(["method", "R", "mean Dice", *seg["classes"]], rows) if rows else "No segmentation results."
    return f"## Segmentation (Dice per foreground class)\n\n{body}"


def md_recon(results: dict) -> str:
    rec = results["recon"]
    entries = list(rec["methods"].values()) + list(rec["references"].values())
    rows = [[v["label"], k, _f(t["psnr"], 4), _f(t["ssim"])] for v in entries for k, t in v["tests"].items()]
    body = md_table(["method", "R", "PSNR (dB)", "SSIM"], rows) if rows else "No reconstruction results."
    return f"## Reconstruction\n\n{body}"


def md_coverage(results: dict) -> str:
    rows = [[v["label"], _f(v["coverage"]["mean"]), _f(v["coverage"]["metrics_csv"])]
            for v in results["regress"]["methods"].values()]  # fmt: skip
    body = md_table(["method", "coverage (CSV bounds)", "metrics.csv"], rows) if rows else "No regression results."
    return f"## Conformal interval coverage (test split)\n\n{body}"


def md_pretrain(results: dict) -> str:
    rows = [[name, _f(v["minutes"]), ", ".join(f"{k}={_f(x, 4)}" for k, x in v["metrics"].items()) or "missing"]
            for name, v in results["pretrain"].items()]  # fmt: skip
    return "## Pretraining (validation)\n\n" + (md_table(["stage", "minutes", "metrics"], rows) if rows else "None.")


def md_evidence(results: dict) -> str:
    parts = ["## Evidence (differences with 95 % paired bootstrap intervals over the same test subjects)"]
    for key, title in QUESTIONS.items():
        items = results["evidence"][key]
        parts.append(f"### {title}\n\n" + ("\n".join(f"- {i['text']}" for i in items) or "- not available: inputs "
                                                                                            "missing"))  # fmt: skip
    return "\n\n".join(parts)


def md_figures(results: dict) -> str:
    lines = ["## Figures"]
    for name, f in results["figures"].items():
        lines.append(f"### {name}\n\n![{name}]({f['file']})" if f["file"] else f"### {name}\n\nSkipped: {f['note']}.")
    return "\n\n".join(lines)


def settings_text(settings: dict | None) -> str:
    """``bundle settings: k=v, ...`` (the pipeline's ``--set``, strings bare, other values as JSON); "" when none."""
    shown = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (settings or {}).items()]
    return "bundle settings: " + ", ".join(shown) if shown else ""


def md_head(results: dict) -> str:
    run = results["run"]
    head = (f"# k-MTR pipeline report\n\n**{results['headline']['text']}**\n\nRun `{run['dir']}`, preset "
            f"`{run['preset']}`, {run['n_test']} test subjects; default R={run['acceleration']}, segmentation "
            f"R={run['seg_acceleration']}.")  # fmt: skip
    if settings := settings_text(run.get("settings")):
        head += f"\n\nEvery stage ran with {settings}."
    if run["preset"] in SMOKE_PRESETS:
        head += "\n\n" + SMOKE_NOTE
    return head


def render_markdown(results: dict) -> str:
    head = md_head(results)
    missing = "## Missing\n\n" + ("\n".join(f"- {m}" for m in results["missing"]) or "Nothing.")
    notes = ("## Notes\n\nExpected warnings met while computing the tables (a metric undefined on this test split):\n\n"
             + "\n".join(f"- {n}" for n in results["notes"])) if results["notes"] else ""  # fmt: skip
    parts = [head, missing, md_stages(results), md_regress(results), md_classify(results), md_probes(results),
             md_segment(results), md_recon(results), md_coverage(results), md_evidence(results), md_pretrain(results),
             md_figures(results), notes]  # fmt: skip
    return "\n\n".join(p for p in parts if p) + "\n"


# ------------------------------------------------------------------------------------------------------ summary
def _headline_method(section: dict) -> str | None:
    ms = section["methods"]
    return KMTR if KMTR in ms else (list(ms)[-1] if ms else None)


def _summary_vector(results: dict) -> list[str]:
    lines, reg, cl = [], results["regress"], results["classify"]
    m = _headline_method(reg)
    if m:
        v, mp = reg["methods"][m], reg["mean_predictor"]
        lines.append(f"Phenotypes (R={reg['R']}): {v['label']} mean MAE {_f(v['mean_mae'])} {_ci(v['mean_mae_ci'])}, "
                     f"R² {_f(v['mean_r2'])} {_ci(v['mean_r2_ci'])}; mean predictor {_f(mp['mean_mae'])} "
                     f"{_ci(mp['mean_mae_ci'])}")  # fmt: skip
        lines.append(f"Interval coverage ({v['label']}): {_f(v['coverage']['mean'])}")
    m = _headline_method(cl)
    if m:
        v = cl["methods"][m]
        lines.append(f"Diseases (R={cl['R']}): {v['label']} mean AUC {_f(v['mean']['auc'])} {_ci(v['mean_auc_ci'])}, "
                     f"F1 {_f(v['mean']['f1'])}; chance AUC 0.5")
    floors = [f"{k} R² {_f(v['mean_r2'])} {_ci(v['mean_r2_ci'])}" for k, v in reg["floors"].items()]
    if floors:
        lines.append("Floors (phenotypes): " + "; ".join(floors))
    return lines


def _summary_images(results: dict) -> list[str]:
    lines, seg, rec = [], results["segment"], results["recon"]
    parts = [f"{v['label']} {_f(v['tests'][str(seg['R'])]['mean_dice'])}" for v in seg["methods"].values()
             if str(seg["R"]) in v["tests"]]  # fmt: skip
    if parts:
        lines.append(f"Segmentation mean Dice (R={seg['R']}): " + "; ".join(parts))
    r = str(rec["R"])
    parts = [f"{v['label']} {_f(v['tests'][r]['psnr'], 4)} dB" for v in [*rec["methods"].values(),
             *rec["references"].values()] if r in v["tests"]]  # fmt: skip
    if parts:
        lines.append(f"Reconstruction PSNR (R={r}): " + "; ".join(parts))
    return lines


def _summary_evidence(results: dict) -> list[str]:
    ev = results["evidence"]
    lines = []
    for key, what in (("floors", "their floor (linear model on the same input)"),
                      ("references", "the mean predictor / chance")):  # fmt: skip
        shown = [i for i in ev[key] if "n" in i]
        if shown or key == "references":
            lines.append(f"Evidence: {sum(i['answer'] == 'yes' for i in shown)}/{len(ev[key])} models beat {what}")
    items = ev["kmtr_vs_unaligned"] + ev["upper_bound"] + ev["segmentation_recon"]
    shown = [i for i in items if not i["answer"].startswith("not available")]
    lines += [f"  {i['comparison']}: {i['answer'].split(' (')[0]}" for i in shown[:6]]
    if len(shown) < len(items):
        lines.append(f"  {len(items) - len(shown)} comparison(s) not available (inputs missing)")
    return lines


def summary_text(results: dict) -> str:
    """At most 20 plain-text lines: the headline (can this run rank methods?), the key figure per task with
    intervals, the evidence answers, and last the report's path."""
    run = results["run"]
    lines = [f"k-MTR pipeline report: preset {run['preset']}, {run['n_test']} test subjects, "
             f"bootstrap 95 % intervals ({run['bootstrap']['draws']} draws)", results["headline"]["text"]]
    if settings := settings_text(run.get("settings")):
        lines.append(settings)
    if run["preset"] in SMOKE_PRESETS:
        lines.append(SMOKE_NOTE)
    lines += _summary_vector(results) + _summary_images(results) + _summary_evidence(results)
    if results["missing"]:
        shown = "; ".join(results["missing"][:3]) + ("; ..." if len(results["missing"]) > 3 else "")
        lines.append(f"Missing ({len(results['missing'])}): {shown}")
    skipped = [n for n, f in results["figures"].items() if not f["file"]]
    tail = [f"Figures: {sum(1 for f in results['figures'].values() if f['file'])} written"
            + (f", skipped {', '.join(skipped)}" if skipped else ""),
            f"Report: {results['report']['markdown']} (numbers: {results['report']['json']})"]  # fmt: skip
    return "\n".join(lines[: 20 - len(tail)] + tail)
