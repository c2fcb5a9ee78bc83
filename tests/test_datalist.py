"""write_datalist / read_datalist / stratified_split: exact counts, proportional strata, determinism, errors."""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from kmtr_monai.constants import ALL_PHENOTYPES, DISEASES, PHENOTYPES
from kmtr_monai.data.datalist import read_datalist, stratified_split, write_datalist


def make_csv_cohort(root, n, seed=0, nan_eid=None):
    """``n`` subject folders (seven tiny valid NIfTI files each), phenotypes.csv (ALL_PHENOTYPES) and diseases.csv."""
    rng = np.random.default_rng(seed)
    eids = [str(1000 + i) for i in range(n)]
    labels = (rng.random((n, 3)) < [0.2, 0.4, 0.3]).astype(int)
    values = rng.normal(50, 10, (n, len(ALL_PHENOTYPES)))
    for e in eids:
        os.makedirs(os.path.join(root, e), exist_ok=True)
        for view in ("sa", "la_2ch", "la_3ch", "la_4ch"):
            shape = (4, 4, 3 if view == "sa" else 1, 2)
            nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), os.path.join(root, e, f"{view}.nii.gz"))
            if view != "la_3ch":
                seg = nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4))
                nib.save(seg, os.path.join(root, e, f"seg_{view}.nii.gz"))
    with open(os.path.join(root, "phenotypes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["eid", *ALL_PHENOTYPES])
        for e, v in zip(eids, values):
            cells = ["nan" if (e == nan_eid and c == "LAEF (%)") else f"{x:.6g}" for x, c in zip(v, ALL_PHENOTYPES)]
            w.writerow([e, *cells])
    with open(os.path.join(root, "diseases.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["eid", *DISEASES])
        w.writerows([[e, *lab] for e, lab in zip(eids, labels)])
    return eids, labels, values


def test_stratified_split_counts_and_proportions():
    rng = np.random.default_rng(3)
    strata = (rng.random((200, 3)) < [0.1, 0.3, 0.2]).astype(int)
    split = stratified_split(strata, (0.7, 0.15, 0.15), seed=1)
    assert np.bincount(split, minlength=3).tolist() == [140, 30, 30]
    _, sid = np.unique(strata, axis=0, return_inverse=True)
    for s in np.unique(sid):
        members = split[sid.ravel() == s]
        expected = np.array([0.7, 0.15, 0.15]) * members.size
        assert np.all(np.abs(np.bincount(members, minlength=3) - expected) <= 1.5), (s, members.size)
    np.testing.assert_array_equal(split, stratified_split(strata, (0.7, 0.15, 0.15), seed=1))
    assert not np.array_equal(split, stratified_split(strata, (0.7, 0.15, 0.15), seed=2))


def test_tiny_cohort_gets_non_empty_splits():
    strata = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])  # 5 strata, 6 subjects
    split = stratified_split(strata, (0.7, 0.15, 0.15), seed=0)
    assert np.bincount(split, minlength=3).tolist() == [4, 1, 1]
    with pytest.raises(ValueError, match="no training subject"):
        stratified_split(strata[:2], (0.5, 0.25, 0.25))


def test_write_and_read_datalist(tmp_path, capsys):
    root = str(tmp_path)
    eids, labels, values = make_csv_cohort(root, 40, nan_eid="1003")
    out = write_datalist(root, seed=0)
    assert out == os.path.join(root, "datalist.json")
    with open(out) as f:
        doc = json.load(f)
    sizes = [len(doc[k]) for k in ("training", "validation", "test")]
    assert sizes == [28, 6, 6]
    all_items = doc["training"] + doc["validation"] + doc["test"]
    assert sorted(i["eid"] for i in all_items) == sorted(eids)  # a partition: no overlap, nobody lost
    idx = [ALL_PHENOTYPES.index(p) for p in PHENOTYPES]
    for item in all_items:
        i = eids.index(item["eid"])
        assert item["diseases"] == labels[i].tolist()
        got = np.array([np.nan if v is None else v for v in item["phenotypes"]])
        ref = np.array([float(f"{x:.6g}") for x in values[i, idx]])
        if item["eid"] == "1003":
            ref[PHENOTYPES.index("LAEF (%)")] = np.nan
        np.testing.assert_allclose(got, ref, equal_nan=True)
    assert read_datalist(out, "val") == doc["validation"]
    assert "40 subjects" in capsys.readouterr().out
    # same seed -> same file; MONAI's reader sees the same splits
    out2 = write_datalist(root, out=str(tmp_path / "again.json"), seed=0)
    with open(out2) as f:
        assert json.load(f)["test"] == doc["test"]
    monai_items = load_decathlon_datalist(out, data_list_key="validation")
    assert [os.path.basename(i["eid"]) for i in monai_items] == [i["eid"] for i in doc["validation"]]


def test_cli_datalist(tmp_path):
    root = str(tmp_path)
    make_csv_cohort(root, 6)
    res = subprocess.run(
        [sys.executable, "-m", "kmtr_monai", "datalist", root, "--val", "0.2", "--test", "0.2", "--seed", "4"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert [len(read_datalist(os.path.join(root, "datalist.json"), s)) for s in ("train", "val", "test")] == [4, 1, 1]


@pytest.mark.parametrize(
    "breakage, exc, words",
    [
        ("no_diseases_csv", FileNotFoundError, ["diseases.csv"]),
        ("extra_folder", ValueError, ["without a row", "phenotypes.csv", "9999"]),
        ("extra_row", ValueError, ["diseases.csv", "folder is missing", "1002"]),
        ("bad_label", ValueError, ["diseases.csv", "1000", "expected 0 or 1"]),
        ("missing_column", ValueError, ["phenotypes.csv", "LVM (g)"]),
    ],
)
def test_datalist_errors(tmp_path, breakage, exc, words):
    root = str(tmp_path)
    make_csv_cohort(root, 6)
    if breakage == "no_diseases_csv":
        os.remove(os.path.join(root, "diseases.csv"))
    elif breakage == "extra_folder":
        os.makedirs(os.path.join(root, "9999"))
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 1, 1)), np.eye(4)), os.path.join(root, "9999", "sa.nii.gz"))
    elif breakage == "extra_row":
        import shutil

        shutil.rmtree(os.path.join(root, "1002"))
        with open(os.path.join(root, "phenotypes.csv")) as f:  # keep phenotypes consistent, diseases not
            lines = [line for line in f if not line.startswith("1002,")]
        with open(os.path.join(root, "phenotypes.csv"), "w") as f:
            f.writelines(lines)
    elif breakage == "bad_label":
        text = open(os.path.join(root, "diseases.csv")).read().splitlines()
        text[1] = "1000,2,0,0"
        open(os.path.join(root, "diseases.csv"), "w").write("\n".join(text) + "\n")
    elif breakage == "missing_column":
        text = open(os.path.join(root, "phenotypes.csv")).read().replace("LVM (g)", "LV mass")
        open(os.path.join(root, "phenotypes.csv"), "w").write(text)
    with pytest.raises(exc) as err:
        write_datalist(root)
    for w in words:
        assert w in str(err.value)


def test_read_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_datalist(str(tmp_path / "none.json"), "training")
    with pytest.raises(ValueError, match="unknown split"):
        read_datalist(str(tmp_path / "none.json"), "holdout")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_datalist(str(tmp_path / "bad.json"), "test")
