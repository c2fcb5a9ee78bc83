"""The pipeline report on a synthetic run folder: files, figures, numbers, evidence answers, partial runs."""

import csv
import json
import math
import re

import numpy as np
import pytest

from kmtr_monai.constants import ALL_PHENOTYPES, DISEASES, PHENOTYPES
from kmtr_monai.io.outputs import write_diseases_csv, write_phenotypes_csv
from kmtr_monai.report import bootstrap_weights, summary_text, weighted_auc, weighted_mae, write_report

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


def _stage(name, task, method, tests):
    return {"name": name, "task": task, "method": method, "label": f"label {method}", "minutes": 1.5,
            "tests": {k: f"{name}/test/{k}" for k in tests}}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run with a perfect k-MTR, random baselines, one listed-but-missing stage and the optional data files."""
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("run")
    eids, ph, dis = _cohort(run / "cohort", rng)
    stages = [_stage("regress-kmtr", "regress", "kmtr", ["2", "4", "8", "16"]),
              _stage("regress-stage1", "regress", "stage1", ["4"]),
              _stage("regress-scratch", "regress", "scratch", ["4"]),  # listed, never run: missing
              _stage("regress-resnet50-image", "regress", "resnet50-image", ["full"]),
              _stage("regress-resnet50-zf", "regress", "resnet50-zf", ["4"]),
              _stage("classify-kmtr", "classify", "kmtr", ["4"]),
              _stage("classify-stage1", "classify", "stage1", ["4"]),
              _stage("classify-resnet50-image", "classify", "resnet50-image", ["full"]),
              _stage("classify-resnet50-zf", "classify", "resnet50-zf", ["4"]),
              _stage("segment-kmtr", "segment", "kmtr", ["8"]),
              _stage("segment-dynunet-zf", "segment", "dynunet-zf", ["8"]),
              _stage("recon-kmtr", "recon", "kmtr", ["4"]), _stage("align", "pretrain", "align", [])]  # fmt: skip
    seg_rows = rng.uniform(0.5, 1.0, (N_TEST, 5))
    seg_rows[0, 1] = np.nan
    for s in stages:
        folders = {k: run / v for k, v in s["tests"].items()}
        if s["name"] == "regress-kmtr":
            for k, f in folders.items():
                _regress(f, eids, ph, ph + (0 if k == "4" else float(k)))
        elif s["task"] == "regress" and s["method"] != "scratch":
            _regress(folders[next(iter(folders))], eids, ph, ph + rng.normal(0, 25, ph.shape))
        elif s["name"] == "classify-kmtr":
            _classify(folders["4"], eids, dis, dis.copy())
        elif s["task"] == "classify":
            _classify(folders[next(iter(folders))], eids, dis, rng.random(dis.shape))
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
        else:
            _metrics(run / "align" / "eval", {"val_retrieval_top1": 0.7})
    cfg = {"preset": "small", "cohort": str(run / "cohort"), "accelerations": [2, 4, 8, 16], "acceleration": 4,
           "seg_acceleration": 8, "stages": stages}  # fmt: skip
    (run / "pipeline.json").write_text(json.dumps(cfg))
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
    assert len(refs) == 6, refs  # every figure has its inputs here
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
    assert any("vit-image" in m for m in results["missing"])
    assert "scratch" not in results["regress"]["methods"]
    assert "regress-scratch" in (run_dir / "report" / "report.md").read_text()
    text = summary_text(results)
    assert 10 <= len(text.splitlines()) <= 20 and "report.md" in text


def test_partial_run(tmp_path):
    """Only a cohort and a listed stage whose folder is absent: the report is written, with notes, no crash."""
    _cohort(tmp_path / "cohort", np.random.default_rng(1))
    cfg = {"preset": "small", "cohort": str(tmp_path / "cohort"), "accelerations": [4], "acceleration": 4,
           "seg_acceleration": 8, "stages": [_stage("regress-kmtr", "regress", "kmtr", ["4"])]}  # fmt: skip
    (tmp_path / "pipeline.json").write_text(json.dumps(cfg))
    res = write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "regress-kmtr" in md and "Skipped" in md and not re.findall(r"!\[", md)
    assert res["regress"]["methods"] == {} and math.isfinite(res["regress"]["mean_predictor"]["mean_mae"])
    assert all(f["file"] is None and f["note"] for f in res["figures"].values())
    assert summary_text(res)


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
