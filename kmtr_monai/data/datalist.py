"""Subject-level train/validation/test splits, stratified on the disease combination, as a datalist JSON.

The JSON has MONAI decathlon-style keys ``training`` / ``validation`` / ``test``; every item is
``{"eid": str, "phenotypes": [12 floats, constants.PHENOTYPES order, null = NaN], "diseases": [3 ints]}``.
Read it with ``read_datalist`` (``monai.data.load_decathlon_datalist`` also works, but it rewrites ``eid`` into a
path when ``<json folder>/<eid>`` exists; ``LoadCohortSubjectd`` reduces such paths back to the eid).
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from kmtr_monai.constants import DISEASES, DISEASES_CSV, PHENOTYPES, PHENOTYPES_CSV
from kmtr_monai.data.layout import list_subjects
from kmtr_monai.data.validate import (
    BAD_SUBJECTS_CSV,
    MISSING_VIEWS,
    ON_BAD_SUBJECT,
    Problem,
    apply_policy,
    check_choice,
    check_subject,
    log,
)

SPLITS = ("training", "validation", "test")
_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "testing": "test"}


def _read_csv(path: str, columns: tuple[str, ...]) -> dict[str, list[str]]:
    """``{eid: [values of columns]}`` from a CSV with an ``eid`` column; clear errors for a bad file."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {name!r}: expected {path} (eid + {list(columns)})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("eid", *columns) if c not in header]
        if missing:
            raise ValueError(f"{name!r} ({path}) lacks columns {missing}; found {header}")
        rows = {}
        for line, row in enumerate(reader, start=2):
            eid = (row["eid"] or "").strip()
            if not eid or eid in rows:
                raise ValueError(f"{name!r} line {line}: {'duplicate' if eid else 'empty'} eid {eid!r}")
            rows[eid] = [row[c] for c in columns]
    return rows


def _to_float(text: str | None, where: str) -> float:
    text = (text or "").strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def stratified_split(strata: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> np.ndarray:
    """Assign each subject to a split so every stratum is split in proportion to ``fractions``; (N,) int split ids.

    Subjects are shuffled (seeded), grouped by stratum (strata in random order), and walked in that order while
    each position goes to the split furthest behind its quota ``fraction · position``. Totals are exactly the
    rounded targets and every stratum gets its proportional share ± 1, even strata of one subject (scikit-learn's
    stratified splitters refuse those, hence this small routine).
    """
    n = strata.shape[0]
    counts = np.array([round(f * n) for f in fractions[1:]], dtype=np.int64)
    counts = np.where((np.asarray(fractions[1:]) > 0) & (counts == 0), 1, counts)  # a requested split is never empty
    counts = np.concatenate([[n - counts.sum()], counts])
    if counts[0] < 1:
        raise ValueError(f"{n} subjects cannot be split into {fractions}: no training subject left")
    rng = np.random.default_rng(seed)
    _, stratum_id = np.unique(strata, axis=0, return_inverse=True)
    stratum_rank = rng.permutation(stratum_id.max() + 1)[stratum_id.ravel()]
    order = np.lexsort((rng.permutation(n), stratum_rank))  # by stratum, random within
    quota = counts / n
    assigned = np.zeros(len(counts), dtype=np.int64)
    split = np.empty(n, dtype=np.int64)
    for i, subject in enumerate(order):  # O(N·3) sequential apportionment; no per-frame/view work involved
        k = int(np.argmax(quota * (i + 1) - assigned))
        split[subject] = k
        assigned[k] += 1
    return split


def write_datalist(
    root: str,
    out: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    on_bad_subject: str = "fail",
    missing_views: str = "fail",
    check_files: bool = True,
    preset: str | None = None,
) -> str:
    """Build the stratified datalist of the cohort under ``root`` and write it (default ``<root>/datalist.json``).

    Reads ``<root>/phenotypes.csv`` (eid + at least ``PHENOTYPES``) and ``<root>/diseases.csv`` (eid + ``DISEASES``,
    0/1). With ``check_files`` every subject's NIfTI files are read and checked (``validate.check_subject``; with
    ``preset``, also against its ``DATA_PRESETS`` frames and SAX slices). Bad subjects (a bad file, a missing or
    invalid CSV row) stop the run under ``on_bad_subject="fail"`` or are left out of the datalist under ``"skip"``;
    missing view files follow ``missing_views`` (``"fail"``, ``"invalid"``: kept, the loader flags the view
    invalid, ``"skip"``). All are listed in ``bad_subjects.csv`` next to the JSON. Returns the JSON path.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    check_choice("on_bad_subject", on_bad_subject, ON_BAD_SUBJECT)
    check_choice("missing_views", missing_views, MISSING_VIEWS)
    n_frames, n_sax = 1, 0
    if preset is not None:
        from kmtr_monai.presets import DATA_PRESETS

        if preset not in DATA_PRESETS:
            raise ValueError(f"unknown data preset {preset!r}; expected one of {sorted(DATA_PRESETS)}")
        n_frames, n_sax = DATA_PRESETS[preset]["n_frames"], DATA_PRESETS[preset]["n_sax"]
    eids = list_subjects(root)
    out = out or os.path.join(root, "datalist.json")
    report = os.path.join(os.path.dirname(os.path.abspath(out)), BAD_SUBJECTS_CSV)
    pheno = _read_csv(os.path.join(root, PHENOTYPES_CSV), PHENOTYPES)
    dis = _read_csv(os.path.join(root, DISEASES_CSV), DISEASES)
    problems = []
    for csv_name, rows in ((PHENOTYPES_CSV, pheno), (DISEASES_CSV, dis)):
        no_row = [e for e in eids if e not in rows]
        problems += [Problem(e, csv_name, f"subject folder without a row in {csv_name!r}") for e in no_row]
        no_folder = [e for e in rows if e not in set(eids)]
        if no_folder and on_bad_subject == "fail":
            raise ValueError(f"{csv_name!r} rows whose subject folder is missing under {root}: {no_folder[:10]}")
        if no_folder:
            log.warning("%s: %d rows without a subject folder under %s (ignored): %s", csv_name, len(no_folder), root,
                        no_folder[:10])  # fmt: skip
    labels, values = {}, {}
    for e in eids:
        if e not in pheno or e not in dis:
            continue
        try:
            labels[e] = [_to_float(v, f"{DISEASES_CSV!r}: eid {e} {c}") for v, c in zip(dis[e], DISEASES)]
            bad = [(c, v) for c, v in zip(DISEASES, labels[e]) if v not in (0.0, 1.0)]
            if bad:
                raise ValueError(f"{DISEASES_CSV!r}: eid {e} {bad[0][0]} = {bad[0][1]}; expected 0 or 1")
        except ValueError as err:
            problems.append(Problem(e, DISEASES_CSV, str(err)))
        try:
            values[e] = [_to_float(v, f"{PHENOTYPES_CSV!r}: eid {e} {c}") for v, c in zip(pheno[e], PHENOTYPES)]
        except ValueError as err:
            problems.append(Problem(e, PHENOTYPES_CSV, str(err)))
    if check_files:
        for e in eids:  # one subject per iteration: file reading dominates
            problems += check_subject(root, e, n_frames=n_frames, n_sax=n_sax)
    left_out = apply_policy(problems, on_bad_subject, missing_views, report=report)
    eids = [e for e in eids if e not in left_out]
    if not eids:
        raise ValueError(f"no usable subject left under {root}; see {report}")
    label_arr = np.array([labels[e] for e in eids], dtype=np.float64)
    value_arr = np.array([values[e] for e in eids], dtype=np.float64)

    fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
    split = stratified_split(label_arr.astype(np.int64), fractions, seed)
    items = [
        {
            "eid": e,
            "phenotypes": [None if math.isnan(v) else float(v) for v in value_arr[i]],
            "diseases": [int(v) for v in label_arr[i]],
        }
        for i, e in enumerate(eids)
    ]
    doc = {name: [items[i] for i in np.flatnonzero(split == k)] for k, name in enumerate(SPLITS)}
    doc.update(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
               phenotype_names=list(PHENOTYPES), disease_names=list(DISEASES))  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    print(f"datalist: {len(eids)} subjects -> {out}")
    for k, name in enumerate(SPLITS):
        prev = label_arr[split == k].mean(axis=0) if (split == k).any() else np.full(len(DISEASES), np.nan)
        rates = "  ".join(f"{d} {p:.2f}" for d, p in zip(DISEASES, prev))
        print(f"  {name:<10} {int((split == k).sum()):5d}  {rates}")
    n_nan = int(np.isnan(value_arr).any(axis=1).sum())
    if n_nan:
        print(f"  {n_nan} subjects have NaN phenotypes (QC failures or missing views), written as null")
    if left_out:
        print(f"  {len(left_out)} subjects left out -> {report}")
    return out


def read_datalist(path: str, split: str) -> list[dict]:
    """Items of one split (``training``/``validation``/``test``; aliases train/val) of a ``write_datalist`` JSON."""
    key = _ALIASES.get(split, split)
    if key not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or {sorted(_ALIASES)})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist {path} does not exist (write it with `kmtr datalist <root>`)")
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or key not in doc:
        raise ValueError(f"datalist {path} has no {key!r} list")
    return doc[key]
