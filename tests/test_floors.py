"""Linear protocol (kmtr_monai.linear_eval) and linear floors (kmtr_monai.floors)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.linear_eval import SPLITS, linear_eval, reduce_features, split_inputs, write_linear_results

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metrics(folder):
    with open(Path(folder) / "metrics.csv", newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}


def _synthetic(seed=0, n=(40, 20, 20), d=30):
    rng = np.random.default_rng(seed)
    x = {s: rng.standard_normal((k, d)) for s, k in zip(SPLITS, n)}
    return rng, x


# ----------------------------------------------------------------------------------------------- the protocol
def test_reduction_predicts_as_sklearn_on_raw_standardised_features():
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    rng, x = _synthetic(d=120)  # more features than training rows: the reduced basis is the rows' span
    x = {s: v * rng.uniform(0.1, 10, 120) + 3 for s, v in x.items()}
    y = {s: (x[s][:, :2] @ [1.0, -2.0] + rng.standard_normal(len(x[s])))[:, None] for s in SPLITS}
    res = linear_eval(x, y, "regress", names=["a"])
    sc = StandardScaler().fit(x["training"])
    yt = y["training"][:, 0]
    ref = Ridge(alpha=res["strength"]["a"]).fit(sc.transform(x["training"]), (yt - yt.mean()) / yt.std())
    np.testing.assert_allclose(res["pred"]["test"][:, 0], ref.predict(sc.transform(x["test"])) * yt.std() + yt.mean(),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    lab = {s: (v + 3 * rng.standard_normal(v.shape) > 0).astype(float) for s, v in y.items()}  # not separable
    res = linear_eval(x, lab, "classify", names=["d"])
    ref = LogisticRegression(C=res["strength"]["d"], class_weight="balanced", max_iter=5000, tol=1e-10)
    ref.fit(sc.transform(x["training"]), lab["training"][:, 0])
    np.testing.assert_allclose(res["pred"]["test"][:, 0], ref.predict_proba(sc.transform(x["test"]))[:, 1], atol=1e-4)


def test_strength_is_chosen_on_validation_only():
    rng, x = _synthetic(1)
    y = {s: x[s][:, :3] @ rng.standard_normal((3, 2)) + rng.standard_normal((len(x[s]), 2)) for s in SPLITS}
    a = linear_eval(x, y, "regress", names=["p", "q"])
    y2 = dict(y, test=rng.standard_normal(y["test"].shape) * 100)
    b = linear_eval(x, y2, "regress", names=["p", "q"])
    assert a["strength"] == b["strength"] and a["metrics"]["validation"] == b["metrics"]["validation"]
    np.testing.assert_array_equal(a["pred"]["test"], b["pred"]["test"])
    y3 = dict(y, validation=y["validation"] + rng.standard_normal(y["validation"].shape) * 5)
    assert linear_eval(x, y3, "regress", names=["p", "q"])["metrics"]["validation"] != a["metrics"]["validation"]
    lab = {s: (v > 0).astype(float) for s, v in y.items()}
    c = linear_eval(x, lab, "classify", names=["p", "q"])
    d = linear_eval(x, dict(lab, test=1 - lab["test"]), "classify", names=["p", "q"])
    assert c["strength"] == d["strength"] and c["metrics"]["validation"] == d["metrics"]["validation"]
    np.testing.assert_array_equal(c["thresholds"], d["thresholds"])


def test_linear_signal_and_noise():
    rng, x = _synthetic(2, n=(60, 30, 30), d=20)
    y = {s: np.stack([3 * x[s][:, 0] + 5, rng.standard_normal(len(x[s]))], 1) for s in SPLITS}
    res = linear_eval(x, y, "regress", names=["signal", "noise"])
    assert res["metrics"]["test"]["val_r2_signal"] > 0.999
    assert res["metrics"]["test"]["val_r2_noise"] <= 0.05
    lab = {s: np.stack([(x[s][:, 1] > 0.2), rng.random(len(x[s])) > 0.5], 1).astype(float) for s in SPLITS}
    res = linear_eval(x, lab, "classify", names=["separable", "noise"])
    assert res["metrics"]["test"]["val_auc_separable"] == 1.0
    assert res["metrics"]["test"]["val_auc_noise"] < 0.8


def test_nan_targets_dropped_per_column_only():
    rng, x = _synthetic(3, d=10)
    y = {s: np.stack([x[s][:, 0] + 0.1 * rng.standard_normal(len(x[s])), x[s][:, 1]], 1) for s in SPLITS}
    a = linear_eval(x, y, "regress", names=["a", "b"])
    yn = {s: v.copy() for s, v in y.items()}
    for s in SPLITS:
        yn[s][::3, 1] = np.nan
    b = linear_eval(x, yn, "regress", names=["a", "b"])
    np.testing.assert_array_equal(a["pred"]["test"][:, 0], b["pred"]["test"][:, 0])
    assert np.isfinite(b["pred"]["test"]).all() and b["metrics"]["test"]["val_r2_b"] > 0.99


def test_reduce_features_constant_columns_and_rank():
    rng = np.random.default_rng(4)
    tr = np.concatenate([rng.standard_normal((10, 50)), np.full((10, 3), 7.0)], 1)
    z_tr, z_te, scale = reduce_features(tr, tr[:4])
    assert z_tr.shape == (10, 9) and scale == pytest.approx(50)  # centred: rank N - 1; constant columns → 0
    np.testing.assert_allclose(z_te, z_tr[:4], atol=1e-9)


def test_written_results_read_back_in_the_output_formats(tmp_path):
    eids = ["1000003", "1000001", "1000002"]
    pred, true = np.arange(36.0).reshape(3, 12), np.arange(36.0).reshape(3, 12) + 1
    true[1, 4] = np.nan
    write_linear_results(tmp_path / "r", "regress", eids, pred, PHENOTYPES, true, {"val_mean_mae": 1.0})
    rows, tgt = _read(tmp_path / "r" / "phenotypes.csv"), _read(tmp_path / "r" / "targets.csv")
    assert list(rows[0]) == ["eid", *PHENOTYPES] and [r["eid"] for r in rows] == eids == [r["eid"] for r in tgt]
    assert float(rows[2][PHENOTYPES[3]]) == 27.0 and tgt[1][PHENOTYPES[4]] == ""
    assert _metrics(tmp_path / "r") == {"val_mean_mae": 1.0}
    prob = np.array([[0.1, 0.6, 0.9], [0.8, 0.2, 0.5], [0.5, 0.5, 0.5]])
    write_linear_results(tmp_path / "c", "classify", eids, prob, DISEASES, (prob > 0.5).astype(float),
                         {"val_mean_auc": 0.5}, thresholds=[0.5, 0.6, 0.95])  # fmt: skip
    rows = _read(tmp_path / "c" / "diseases.csv")
    assert list(rows[0]) == ["eid", *(f"{d}_probability" for d in DISEASES), *DISEASES]
    assert [int(rows[i]["CAD"]) for i in range(3)] == [0, 1, 1] and rows[0]["high_blood_pressure"] == "1"
    assert [r["eid"] for r in _read(tmp_path / "c" / "targets.csv")] == eids


# ------------------------------------------------------------------------------------------ on a tiny cohort
def test_floor_end_to_end_writes_a_model_test_folder(split_cohort, tmp_path):
    from kmtr_monai.floors import run_floor

    cache = tmp_path / "cache"
    rec = run_floor(split_cohort, BUNDLES, "tiny", "kspace", 4, "regress", tmp_path / "floor-kspace", cache)
    assert rec["tests"] == {"4": "floor-kspace/test/R4"} and set(rec["validation"]) >= {"val_mean_mae", "val_mean_r2"}
    folder = tmp_path / rec["tests"]["4"]
    test_eids = [str(i["eid"]) for i in json.loads((split_cohort / "datalist.json").read_text())["test"]]
    rows, tgt = _read(folder / "phenotypes.csv"), _read(folder / "targets.csv")
    assert [r["eid"] for r in rows] == [r["eid"] for r in tgt] == test_eids and list(rows[0]) == ["eid", *PHENOTYPES]
    table = {r["eid"]: r for r in _read(split_cohort / "phenotypes.csv")}
    for r in tgt:
        assert float(r["LVEDV (mL)"]) == pytest.approx(float(table[r["eid"]]["LVEDV (mL)"]), rel=1e-5)
    m = _metrics(folder)
    assert {"val_mean_mae", "val_mean_r2", "alpha_LVEDV (mL)"} <= set(m)
    assert _metrics(tmp_path / "floor-kspace" / "eval").keys() == m.keys()
    rec = run_floor(split_cohort, BUNDLES, "tiny", "kspace", 4, "classify", tmp_path / "floor-c", cache)
    rows = _read(tmp_path / rec["tests"]["4"] / "diseases.csv")
    assert [r["eid"] for r in rows] == test_eids and "val_mean_auc" in _metrics(tmp_path / rec["tests"]["4"])


def test_kspace_floor_reads_nothing_from_unsampled_locations(split_cohort, tmp_path):
    from kmtr_monai.floors import floor_features

    a = split_inputs(split_cohort, BUNDLES, "tiny", "kspace", 4, "validation", tmp_path)
    unsampled = (1 - a["mask"])[:, None, ..., None]
    assert np.all(a["kspace"] * unsampled == 0) and 0 < a["mask"].mean() < 1  # the bundle's kspace is masked
    noisy = dict(a, kspace=a["kspace"] + unsampled * np.random.default_rng(0).normal(0, 1e3, a["kspace"].shape))
    f = floor_features("kspace", a)
    np.testing.assert_array_equal(f, floor_features("kspace", noisy))
    s, t, h, w = a["mask"].shape[1:] + a["kspace"].shape[-1:]
    assert f.shape == (len(a["eid"]), 3 * s * t * h * (w // 2))


def test_pixel_floors_read_what_the_models_read(split_cohort, tmp_path):
    from kmtr_monai.data.cohort import LoadCohortSubjectd
    from kmtr_monai.floors import floor_features
    from kmtr_monai.presets import DATA_PRESETS
    from kmtr_monai.transforms.fft import ifft2c

    img = split_inputs(split_cohort, BUNDLES, "tiny", "image", None, "test", tmp_path)
    p = DATA_PRESETS["tiny"]
    load = LoadCohortSubjectd(str(split_cohort), p["n_sax"], p["n_frames"], p["crop"], load_seg=False)
    ref = np.stack([np.asarray(load({"eid": e})["image"]) for e in img["eid"]])
    np.testing.assert_array_equal(img["image"], ref)
    zf = split_inputs(split_cohort, BUNDLES, "tiny", "zero_filled", 4, "test", tmp_path)
    k = split_inputs(split_cohort, BUNDLES, "tiny", "kspace", 4, "test", tmp_path)
    assert list(zf["eid"]) == list(k["eid"]) == list(img["eid"])
    mag = ifft2c(torch.complex(torch.as_tensor(k["kspace"][:, 0]), torch.as_tensor(k["kspace"][:, 1]))).abs()
    np.testing.assert_allclose(zf["zero_filled"], mag.numpy(), atol=1e-6)
    f = floor_features("zero_filled", zf)
    n, s, t, h, w = zf["zero_filled"].shape
    pooled = zf["zero_filled"].reshape(n, s, t, h // 2, 2, w // 2, 2).mean((4, 6)).reshape(n, -1)
    np.testing.assert_allclose(f, pooled, rtol=1e-6, atol=1e-7)


def test_inputs_cache_is_reused_and_invalidated_by_the_datalist(split_cohort, tmp_path, monkeypatch):
    import kmtr_monai.linear_eval as le
    from kmtr_monai.data.datalist import write_datalist

    cohort = tmp_path / "cohort"
    shutil.copytree(split_cohort, cohort, symlinks=True)
    first = split_inputs(cohort, BUNDLES, "tiny", "image", None, "test", tmp_path / "cache")
    calls = []
    real = le.load_split
    monkeypatch.setattr(le, "load_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = split_inputs(cohort, BUNDLES, "tiny", "image", None, "test", tmp_path / "cache")
    assert not calls and np.array_equal(first["image"], again["image"])
    write_datalist(str(cohort), val_fraction=0.25, test_fraction=0.25, seed=5)
    new = split_inputs(cohort, BUNDLES, "tiny", "image", None, "test", tmp_path / "cache")
    want = [str(i["eid"]) for i in json.loads((cohort / "datalist.json").read_text())["test"]]
    assert calls == [1] and list(new["eid"]) == want and want != list(first["eid"])
