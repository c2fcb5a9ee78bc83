"""The pipeline report on a synthetic run folder: files, figures, numbers, evidence answers, partial runs, floors,
linear probes, training curves and a run folder moved elsewhere."""

import csv
import json
import math
import re
import shutil

import numpy as np
import pytest

from kmtr_monai.constants import ALL_PHENOTYPES, DISEASES, PHENOTYPES
from kmtr_monai.io.outputs import write_diseases_csv, write_phenotypes_csv
from kmtr_monai.report import (
    bootstrap_weights,
    summary_text,
    weighted_auc,
    weighted_mae,
    weighted_r2,
    write_report,
)

N_TRAIN, N_TEST = 30, 24


def _cohort(root, rng):
    """A fake cohort: datalist.json and phenotypes.csv; returns the test eids, phenotypes and diseases."""
    root.mkdir(parents=True)
    n = N_TRAIN + 4 + N_TEST
    eids = [str(1000 + i) for i in range(n)]
    table = rng.normal(100, 20, (n, len(ALL_PHENOTYPES)))
    ph = table[:, [ALL_PHENOTYPES.index(p) for p in PHENOTYPES]]
    dis = (rng.random((n, len(DISEASES))) < 0.4).astype(int)
    dis[-N_TEST:][:2] = [[0, 0, 0], [1, 1, 1]]  # both classes in the test split
    items = [{"eid": e, "phenotypes": ph[i].tolist(), "diseases": dis[i].tolist()} for i, e in enumerate(eids)]
    doc = {"training": items[:N_TRAIN], "validation": items[N_TRAIN:-N_TEST], "test": items[-N_TEST:]}
    (root / "datalist.json").write_text(json.dumps(doc))
    with open(root / "phenotypes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["eid", *ALL_PHENOTYPES])
        w.writerows([[e, *table[i]] for i, e in enumerate(eids)])
    return eids[-N_TEST:], ph[-N_TEST:], dis[-N_TEST:].astype(float)


def _metrics(folder, values):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(values.items())


def _raw(folder, metric, eids, rows):
    """``<metric>_raw.csv`` as MONAI's MetricsSaver writes metric details: eid, class columns, their mean."""
    with open(folder / f"{metric}_raw.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *(f"class{i}" for i in range(rows.shape[1])), "mean"])
        w.writerows([[e, *r, np.nanmean(r)] for e, r in zip(eids, rows)])


def _regress(folder, eids, true, pred):
    hw = np.full(true.shape[1], 5.0)
    _metrics(folder, {"val_mean_mae": float(np.abs(pred - true).mean()), "val_mean_r2": 0.1,
                      "val_interval_coverage": 0.9})  # fmt: skip
    write_phenotypes_csv(str(folder / "phenotypes.csv"), eids, pred, pred - hw, pred + hw)
    write_phenotypes_csv(str(folder / "targets.csv"), eids, true)


def _classify(folder, eids, true, prob):
    _metrics(folder, {"val_mean_auc": 0.5})
    write_diseases_csv(str(folder / "diseases.csv"), eids, prob, np.full(len(DISEASES), 0.5))
    write_phenotypes_csv(str(folder / "targets.csv"), eids, true, names=DISEASES)


def _input(method):
    return "image" if method.endswith("-image") else "zero_filled" if method.endswith("-zf") else "kspace"


def _stage(name, task, method, tests, kind="model", done=True, **extra):
    """A pipeline.json entry as the pipeline writes it (version 2)."""
    entry = {"name": name, "task": task, "method": method, "label": f"label {method}", "kind": kind,
             "bundle": task, "status": "done" if done else "not run", "done": done, "minutes": 1.5,
             "overrides": {"dataset_dir": "cohort", "ckpt_dir": f"{name}/models"}, "paths": ["ckpt_dir", "dataset_dir"],
             "outputs": {"ckpt": f"{name}/models/model.pt", "eval": f"{name}/eval",
                         "history": f"{name}/eval/history.csv", "tests": {k: f"{name}/test/{k}" for k in tests}},
             **extra}  # fmt: skip
    if kind == "model" and task != "pretrain":
        entry["input"] = _input(method)
    return entry


def _history(run, name, epochs, metric):
    folder = run / name / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", metric])
        w.writerows([[e, 1.0 / e, 0.1 * e] for e in range(1, epochs + 1)])


def _manifest(run, stages, **extra):
    cfg = {"version": 2, "preset": "small", "bundles": "/nowhere/bundles", "cohort": "cohort",
           "accelerations": [2, 4, 8, 16], "acceleration": 4, "seg_acceleration": 8, "stages": stages, **extra}
    (run / "pipeline.json").write_text(json.dumps(cfg))


PROBES = [(enc, "mean") for enc in ("kmtr", "stage1", "scratch")] + [("kmtr", "layout")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run with a perfect k-MTR, random baselines, linear floors between them, probes (k-MTR perfect), one
    listed-but-missing stage, one stage never run, training histories and the optional data files."""
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("run")
    eids, ph, dis = _cohort(run / "cohort", rng)
    stages = [_stage("align", "pretrain", "align", []),
              _stage("regress-cnn-image", "regress", "cnn-image", ["full"]),
              _stage("regress-vit-image", "regress", "vit-image", ["full"], done=False),  # never run
              _stage("regress-cnn-zf", "regress", "cnn-zf", ["4"]),
              _stage("regress-scratch", "regress", "scratch", ["4"]),  # listed as done, folder missing
              _stage("regress-stage1", "regress", "stage1", ["4"]),
              _stage("regress-kmtr", "regress", "kmtr", ["2", "4", "8", "16"]),
              _stage("classify-cnn-image", "classify", "cnn-image", ["full"]),
              _stage("classify-cnn-zf", "classify", "cnn-zf", ["4"]),
              _stage("classify-stage1", "classify", "stage1", ["4"]),
              _stage("classify-kmtr", "classify", "kmtr", ["4"]),
              _stage("segment-dynunet-zf", "segment", "dynunet-zf", ["8"]),
              _stage("segment-kmtr", "segment", "kmtr", ["8"]),
              _stage("recon-kmtr", "recon", "kmtr", ["4"])]  # fmt: skip
    for task in ("regress", "classify"):
        stages += [_stage(f"{task}-floor-image", task, "floor-image", ["full"], kind="floor"),
                   _stage(f"{task}-floor-zf", task, "floor-zf", ["4"], kind="floor"),
                   _stage(f"{task}-floor-kspace", task, "floor-kspace", ["4"], kind="floor")]  # fmt: skip
        stages += [_stage(f"probe-{task}-{enc}-{pool}", task, f"probe-{enc}-{pool}", ["4"], kind="probe",
                          encoder=enc, pooling=pool) for enc, pool in PROBES]  # fmt: skip
    seg_rows = rng.uniform(0.5, 1.0, (N_TEST, 5))
    seg_rows[0, 1] = np.nan
    floor_noise = {"floor-image": 8.0, "floor-zf": 15.0, "floor-kspace": 12.0}
    for s in stages:
        folders = {k: run / v for k, v in s["outputs"]["tests"].items()}
        first = next(iter(folders.values()), None)
        perfect = s["method"] == "kmtr" or s.get("encoder") == "kmtr"
        if s["task"] == "regress" and s["name"] == "regress-kmtr":
            for k, f in folders.items():
                _regress(f, eids, ph, ph + (0 if k == "4" else float(k)))
        elif s["task"] == "regress" and s["method"] not in ("scratch", "vit-image"):
            noise = 0 if perfect else floor_noise.get(s["method"], 25.0)
            _regress(first, eids, ph, ph + rng.normal(0, 1, ph.shape) * noise)
            if s["kind"] == "probe":
                _metrics(first, {"val_mean_mae": 1.0, "mean_cosine": 0.3, "effective_rank": 5.0})
        elif s["task"] == "classify":
            prob = dis.copy() if perfect else np.clip(dis * 0.3 + rng.random(dis.shape) * 0.7, 0, 1) \
                if s["kind"] == "floor" else rng.random(dis.shape)  # fmt: skip
            _classify(first, eids, dis, prob)
        elif s["task"] == "segment":
            dice = {f"val_dice_{c}": 0.8 if s["method"] == "kmtr" else 0.6 for c in ("LV", "MYO", "RV", "LA", "RA")}
            _metrics(folders["8"], {"val_mean_dice": 0.8 if s["method"] == "kmtr" else 0.6, **dice})
            # per subject: DynUNet exactly 0.25 below k-MTR (MYO absent in one subject), its rows in reverse order
            rows = seg_rows - (0 if s["method"] == "kmtr" else 0.25)
            order = slice(None) if s["method"] == "kmtr" else slice(None, None, -1)
            _raw(folders["8"], "val_mean_dice", eids[order], rows[order])
        elif s["task"] == "recon":
            _metrics(folders["4"], {"val_psnr": 30.0, "val_ssim": 0.9, "val_zero_filled_psnr": 22.0,
                                    "val_view_sharing_psnr": 26.0, "val_view_sharing_ssim": 0.8})  # fmt: skip
        elif s["task"] == "pretrain":
            _metrics(run / "align" / "eval", {"val_retrieval_top1": 0.7})
    _history(run, "regress-kmtr", 4, "val_mean_r2")
    _history(run, "classify-kmtr", 3, "val_mean_auc")
    _history(run, "align", 5, "val_top1")
    _manifest(run, stages)
    data = run / "report" / "data"
    data.mkdir(parents=True)
    np.savez(data / "embeddings.npz", z=rng.normal(size=(N_TEST, 8)), eid=np.array(eids))
    img = rng.random((2, 16, 16))
    seg = rng.integers(0, 4, (2, 16, 16))
    np.savez(data / "examples.npz", image=img, zero_filled=img, recon_kmtr=img, seg_true=seg, seg_kmtr=seg,
             titles=np.array(["a", "b"]))  # fmt: skip
    return run


@pytest.fixture(scope="module")
def results(run_dir):
    return write_report(run_dir)


def test_files_and_figures(run_dir, results):
    out = run_dir / "report"
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
    md = (out / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 7, refs  # every figure has its inputs here
    assert all((out / r).is_file() and (out / r).stat().st_size > 0 for r in refs)
    assert json.loads((out / "results.json").read_text()) == results


def test_numbers_finite_where_inputs_exist(results, json_leaves):
    reg, cl = results["regress"], results["classify"]
    for v in [*reg["methods"].values(), reg["mean_predictor"]]:
        assert all(isinstance(x, float) and math.isfinite(x) for x in [v["mean_mae"], *v["mean_mae_ci"]])
        assert all(math.isfinite(x) for x in v["mae"].values())
    for v in cl["methods"].values():
        assert all(isinstance(x, float) and math.isfinite(x) for x in [v["mean"]["auc"], *v["mean_auc_ci"]])
    for item in [i for items in results["evidence"].values() for i in items if "n" in i]:
        assert math.isfinite(item["estimate"]) and all(math.isfinite(x) for x in item["ci"])
    assert set(reg["mae_vs_R"]["kmtr"]) == {"2", "4", "8", "16"}
    assert results["segment"]["methods"]["kmtr"]["tests"]["8"]["dice"]["LV"] == pytest.approx(0.8)
    assert results["recon"]["references"]["view-sharing"]["tests"]["4"]["psnr"] == pytest.approx(26.0)
    assert all(x is None or isinstance(x, (str, int, float, bool)) for x in json_leaves(results))


def test_perfect_method(results):
    k = results["regress"]["methods"]["kmtr"]
    assert k["mean_mae"] == 0 and k["mean_mae_ci"] == [0, 0] and k["coverage"]["mean"] == 1
    assert results["classify"]["methods"]["kmtr"]["mean"]["auc"] == 1
    assert results["classify"]["methods"]["kmtr"]["mean"]["f1"] == 1
    refs = {(i["method"], i["comparison"].split(":")[1].strip()): i["answer"]
            for i in results["evidence"]["references"]}  # fmt: skip
    assert refs[("kmtr", "mean MAE − mean predictor")] == "yes"
    assert refs[("kmtr", "mean AUC − 0.5")] == "yes"
    vs = {i["comparison"]: i["answer"] for i in results["evidence"]["kmtr_vs_unaligned"]}
    assert vs["mean MAE k-MTR − stage1"] == "yes" and vs["mean AUC k-MTR − stage1"] == "yes"
    assert [i["answer"] for i in results["evidence"]["upper_bound"]] == ["yes", "yes"]
    assert [i["answer"].split(" ")[0] for i in results["evidence"]["segmentation_recon"]] == ["yes", "yes"]


def test_dense_comparisons_pair_subjects_by_eid(results):
    """Dice from per-subject rows, paired by eid (the baseline's rows are in reverse order): a constant per-subject
    difference of 0.25 gives the interval [0.25, 0.25]; recon without per-subject rows stays a point estimate."""
    seg, rec = results["evidence"]["segmentation_recon"]
    assert seg["estimate"] == pytest.approx(0.25) and seg["ci"] == pytest.approx([0.25, 0.25]) and seg["n"] == N_TEST
    assert rec["estimate"] == pytest.approx(4.0) and "point estimate" in rec["answer"] and "n" not in rec


def test_missing_stage_reported(run_dir, results):
    assert any("regress-scratch" in m for m in results["missing"])
    assert any("regress-vit-image: not done" in m for m in results["missing"])
    assert "scratch" not in results["regress"]["methods"]
    assert "regress-scratch" in (run_dir / "report" / "report.md").read_text()
    text = summary_text(results)
    assert 10 <= len(text.splitlines()) <= 20 and "report.md" in text


def test_partial_run(tmp_path):
    """Only a cohort and a listed stage whose folder is absent: the report is written, with notes, no crash."""
    _cohort(tmp_path / "cohort", np.random.default_rng(1))
    _manifest(tmp_path, [_stage("regress-kmtr", "regress", "kmtr", ["4"])], accelerations=[4])
    res = write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "regress-kmtr" in md and "Skipped" in md and not re.findall(r"!\[", md)
    assert res["regress"]["methods"] == {} and math.isfinite(res["regress"]["mean_predictor"]["mean_mae"])
    assert all(f["file"] is None and f["note"] for f in res["figures"].values())
    assert res["headline"]["can_rank"] is None and "No floors" in res["headline"]["text"]
    assert md.splitlines()[2].startswith("**No floors") and summary_text(res).splitlines()[1].startswith("No floors")


def test_weighted_auc_and_mae_match_resampling():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 40).astype(float), np.round(rng.random(40), 1)  # ties
    w = bootstrap_weights(40, draws=5, seed=1)
    idx = [np.repeat(np.arange(40), w[b].astype(int)) for b in range(5)]
    assert weighted_auc(y, s, w) == pytest.approx([roc_auc_score(y[i], s[i]) for i in idx])
    err = np.abs(rng.normal(size=(40, 3)))
    err[0, 1] = np.nan
    assert weighted_mae(err, w) == pytest.approx([np.nanmean(np.nanmean(err[i], axis=0)) for i in idx])


def test_weighted_r2_matches_sklearn_on_resampled_subjects():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(4)
    true, pred = rng.normal(50, 10, (30, 3)), rng.normal(50, 10, (30, 3))
    true[2, 1] = np.nan  # dropped for that column only, as regression_metrics does
    w = bootstrap_weights(30, draws=5, seed=2)
    idx = [np.repeat(np.arange(30), w[b].astype(int)) for b in range(5)]
    expected = [np.mean([r2_score(true[i, k][np.isfinite(true[i, k])], pred[i, k][np.isfinite(true[i, k])])
                         for k in range(3)]) for i in idx]  # fmt: skip
    assert weighted_r2(true, pred, w) == pytest.approx(expected)


def test_floors_are_columns_beside_the_references(run_dir, results):
    """Floors at the default R (floor-image fully sampled) next to the mean predictor / chance; every column of
    Table 1, the mean predictor included, has a mean R² with a finite interval."""
    reg, cl = results["regress"], results["classify"]
    assert list(reg["floors"]) == list(cl["floors"]) == ["floor-image", "floor-zf", "floor-kspace"]
    assert reg["floors"]["floor-image"]["test"] == "full" and reg["floors"]["floor-kspace"]["test"] == "4"
    for v in [*reg["methods"].values(), *reg["floors"].values(), reg["mean_predictor"]]:
        lo, hi = v["mean_r2_ci"]
        assert lo <= hi and math.isfinite(lo) and math.isfinite(v["mean_r2"])
    assert reg["methods"]["kmtr"]["mean_r2"] == 1 and reg["mean_predictor"]["mean_r2"] <= 0
    md = (run_dir / "report" / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("## Table 2")[0]
    header = next(line for line in table1.splitlines() if line.startswith("| phenotype"))
    assert header.index("label floor-kspace") < header.index("Training-mean predictor")
    assert "**mean R²**" in table1
    assert "label floor-image (full)" in md.split("## Table 2")[1].split("## Linear probes")[0]


def test_each_model_against_its_floor_and_the_headline(run_dir, results):
    """Evidence (i) pairs each model with the floor of its input; the image model loses to floor-image, so the
    headline says the run cannot rank methods, first in report.md and in the summary."""
    ev = {(i["task"], i["method"]): i for i in results["evidence"]["floors"]}
    assert set(ev) == {("regress", m) for m in ("cnn-image", "cnn-zf", "stage1", "kmtr")} | {
        ("classify", m) for m in ("cnn-image", "cnn-zf", "stage1", "kmtr")}
    assert [ev[("regress", m)]["floor"] for m in ("cnn-image", "cnn-zf", "kmtr")] == [
        "floor-image", "floor-zf", "floor-kspace"]
    assert ev[("regress", "kmtr")]["answer"] == "yes" and ev[("classify", "kmtr")]["answer"] == "yes"
    assert ev[("regress", "cnn-image")]["answer"] == "no"
    head = results["headline"]
    assert head["can_rank"] is False and "cannot rank" in head["text"] and "floor-image" in head["text"]
    md = (run_dir / "report" / "report.md").read_text()
    assert md.splitlines()[2] == f"**{head['text']}**"
    assert summary_text(results).splitlines()[1] == head["text"]
    assert "(i) Does each model beat its floor" in md


def test_linear_probes_rows_and_paired_differences(run_dir, results):
    pr = results["probes"]
    rows = {(r["encoder"], r["pooling"]): r for r in pr["rows"]}
    assert list(rows) == PROBES
    k = rows[("kmtr", "mean")]
    assert k["mean_r2"] == 1 and k["mean_auc"] == 1 and k["mean_cosine"] == 0.3 and k["effective_rank"] == 5
    assert set(k["r2"]) == {"LVEDV (mL)", "LVM (g)", "RVEDV (mL)", "LVEF (%)"}
    assert all(math.isfinite(x) for x in k["mean_r2_ci"] + k["mean_auc_ci"])
    diffs = {(d["pooling"], d["other"]): d for d in pr["differences"]}
    assert set(diffs) == {(p, o) for p in ("mean", "layout") for o in ("stage1", "scratch", "floor-kspace")}
    for other in ("stage1", "scratch", "floor-kspace"):
        d = diffs[("mean", other)]
        assert d["mean_r2"]["ci"][0] > 0 and d["mean_auc"]["estimate"] > 0, other
    assert diffs[("layout", "stage1")]["mean_r2"] is None  # no unaligned probe with layout pooling
    assert diffs[("layout", "floor-kspace")]["mean_r2"]["estimate"] > 0
    md = (run_dir / "report" / "report.md").read_text()
    assert "## Linear probes" in md and "k-MTR − k-space floor (mean pooling)" in md


def test_training_curves(run_dir, results):
    curves = results["curves"]
    assert set(curves) == {"regress-kmtr", "classify-kmtr", "align"}
    assert curves["regress-kmtr"]["metric"] == "val_mean_r2" and curves["regress-kmtr"]["epoch"] == [1, 2, 3, 4]
    assert curves["align"]["metric"] == "val_top1"
    assert results["figures"]["curves"]["file"] == "curves.png"
    assert "![curves](curves.png)" in (run_dir / "report" / "report.md").read_text()


def test_report_reads_only_the_run_folder_in_the_manifests_order(run_dir, results, tmp_path):
    """A copy of the run folder reports the same numbers with the original gone; columns and labels follow the
    manifest (here reversed and relabelled), not the pipeline's stage table."""
    moved = tmp_path / "moved run"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("*.png", "results.json", "report.md"))
    cfg = json.loads((moved / "pipeline.json").read_text())
    cfg["stages"] = [{**s, "label": s["label"].upper()} for s in reversed(cfg["stages"])]
    (moved / "pipeline.json").write_text(json.dumps(cfg))
    hidden = run_dir.with_name(run_dir.name + "-hidden")
    run_dir.rename(hidden)
    try:
        res = write_report(moved)
    finally:
        hidden.rename(run_dir)
    assert res["run"]["dir"] == str(moved) and res["run"]["cohort"] == str(moved / "cohort")
    assert list(res["regress"]["methods"]) == list(reversed(results["regress"]["methods"]))
    assert res["regress"]["methods"]["kmtr"]["label"] == "LABEL KMTR"
    for m, v in results["regress"]["methods"].items():
        assert res["regress"]["methods"][m]["mean_mae_ci"] == v["mean_mae_ci"]
    assert res["evidence"]["floors"][0]["text"].startswith("LABEL KMTR")


def test_headline_can_rank_when_an_image_model_beats_floor_image(tmp_path):
    rng = np.random.default_rng(5)
    eids, ph, _ = _cohort(tmp_path / "cohort", rng)
    stages = [_stage("regress-cnn-image", "regress", "cnn-image", ["full"]),
              _stage("regress-floor-image", "regress", "floor-image", ["full"], kind="floor")]  # fmt: skip
    _regress(tmp_path / stages[0]["outputs"]["tests"]["full"], eids, ph, ph + rng.normal(0, 2, ph.shape))
    _regress(tmp_path / stages[1]["outputs"]["tests"]["full"], eids, ph, ph + rng.normal(0, 15, ph.shape))
    _manifest(tmp_path, stages)
    res = write_report(tmp_path)
    assert res["headline"]["can_rank"] is True and "Training check passed" in res["headline"]["text"]
    assert summary_text(res).splitlines()[1].startswith("Training check passed")
