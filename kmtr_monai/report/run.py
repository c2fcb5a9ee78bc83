"""Reading a run folder: the manifest (``DIR/pipeline.json``), test folders, predictions and training histories.

Nothing here knows the pipeline's stage table: the methods, their order and labels are those of the manifest.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from kmtr_monai.constants import DISEASES, PHENOTYPES
from kmtr_monai.data.datalist import read_datalist
from kmtr_monai.data.targets import read_phenotype_table, target_array

VECTOR_TASKS = ("regress", "classify")


def load_run(run_dir) -> dict:
    """``pipeline.json`` of ``run_dir`` with ``dir`` (Path), ``cohort`` (absolute path string: a relative one is
    relative to ``run_dir``), ``datalist`` (path string) and ``test_eids`` (the datalist's test split) added."""
    run_dir = Path(run_dir).resolve()
    cfg = json.loads((run_dir / "pipeline.json").read_text())
    cfg["dir"] = run_dir
    cfg["cohort"] = str((run_dir / cfg["cohort"]).resolve())
    cfg["datalist"] = str(Path(cfg["cohort"]) / "datalist.json")
    cfg["test_eids"] = [str(it["eid"]) for it in read_datalist(cfg["datalist"], "test")]
    return cfg


def kind_of(stage: dict) -> str:
    return stage.get("kind") or "model"


def is_done(stage: dict) -> bool:
    """The manifest's ``done`` (a manifest without it: True, the files decide)."""
    return bool(stage.get("done", True))


def stages_of(cfg: dict, task: str | None = None, kind: str | None = "model", done: bool = True) -> list[dict]:
    """Entries of the manifest in its order (the paper's), of ``task`` and ``kind`` when given; only done ones
    unless ``done`` is False."""
    return [s for s in cfg.get("stages", []) if (task is None or s.get("task") == task)
            and (kind is None or kind_of(s) == kind) and (is_done(s) or not done)]  # fmt: skip


def label_of(stage: dict) -> str:
    return stage.get("label") or stage.get("method") or stage["name"]


def method_key(stage: dict) -> str:
    return stage.get("method") or stage["name"]


def input_of(stage: dict) -> str:
    """What a model reads: ``image``, ``zero_filled`` or ``kspace`` (the manifest's ``input``, else overrides)."""
    return str(stage.get("input") or (stage.get("overrides") or {}).get("input") or "kspace")


def tests_of(stage: dict) -> dict:
    """``{R or "full": test folder relative to DIR}`` (``outputs.tests``; a top-level ``tests`` also read)."""
    return (stage.get("outputs") or {}).get("tests") or stage.get("tests") or {}


def test_key(stage: dict, r) -> str | None:
    """The test key to read at acceleration ``r``: ``str(r)``, else ``"full"`` (image inputs), else None."""
    tests = tests_of(stage)
    return str(r) if str(r) in tests else ("full" if "full" in tests else None)


def test_folder(cfg: dict, stage: dict, key: str | None) -> Path | None:
    """The test folder of ``stage`` under ``key`` when it exists, else None."""
    rel = tests_of(stage).get(key) if key is not None else None
    folder = cfg["dir"] / rel if rel else None
    return folder if folder is not None and folder.is_dir() else None


def output_path(cfg: dict, stage: dict, name: str) -> Path | None:
    """``DIR / outputs[name]`` (e.g. ``history``) when the manifest names it and it exists, else None."""
    rel = (stage.get("outputs") or {}).get(name)
    path = cfg["dir"] / rel if rel else None
    return path if path is not None and path.exists() else None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_metrics(folder: Path | None) -> dict[str, float]:
    """``metrics.csv`` (``name,value`` rows) of a folder; {} when absent."""
    path = folder / "metrics.csv" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2 and _is_number(row[1])}


def read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(eids, {column: float array}) of a prediction CSV; an empty cell is NaN."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0].keys() if rows else []) if c != "eid"]
    data = {c: np.array([float(r[c]) if r[c] not in ("", None) else np.nan for r in rows]) for c in cols}
    return [str(r["eid"]) for r in rows], data


def read_history(path: Path | None) -> dict[str, np.ndarray] | None:
    """Columns of a ``history.csv`` (``epoch``, ``train_loss``, ``val_*``; empty cells NaN); None when absent or
    without an ``epoch`` column."""
    if path is None or not path.is_file():
        return None
    _, table = _read_columns(path)
    return table if "epoch" in table and len(table["epoch"]) else None


def _read_columns(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0].keys()) if rows else []
    num = {c: np.array([float(r[c]) if _is_number(r[c] or "") else np.nan for r in rows]) for c in cols}
    return cols, num


def _stack(table: dict[str, np.ndarray], names) -> np.ndarray:
    return np.stack([table[n] for n in names], axis=1)


def _reindex(eids: list[str], ref_eids: list[str], arr: np.ndarray) -> np.ndarray:
    """Rows of ``arr`` (ordered as ``ref_eids``) reordered to ``eids``."""
    where = {e: i for i, e in enumerate(ref_eids)}
    return arr[[where[e] for e in eids]]


def in_order(d: dict, eids: list[str]) -> dict:
    """``d`` (a loaded test folder) with its rows in the order of ``eids`` (the test split), subjects not in it
    after, so that every method's bootstrap draws the same subjects."""
    rank = {e: i for i, e in enumerate(eids)}
    idx = sorted(range(len(d["eid"])), key=lambda i: (rank.get(d["eid"][i], len(rank)), i))
    return {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 else v) for k, v in d.items()} | {
        "eid": [d["eid"][i] for i in idx]}


def read_predictions(folder: Path | None, file: str) -> tuple | None:
    """(eids, prediction columns, target names, targets aligned to eids) of ``folder/file`` and
    ``folder/targets.csv``; None when either is missing."""
    if folder is None or not (folder / file).is_file() or not (folder / "targets.csv").is_file():
        return None
    eids, table = read_table(folder / file)
    t_eids, true = read_table(folder / "targets.csv")
    names = list(true)
    return eids, table, names, _reindex(eids, t_eids, _stack(true, names))


def load_regress(folder: Path | None, order: list[str] | None = None) -> dict | None:
    """Predictions, bounds and targets of a regress test folder, aligned by eid (rows in ``order`` when given);
    None when files are missing."""
    found = read_predictions(folder, "phenotypes.csv")
    if found is None:
        return None
    eids, pred, names, true = found
    out = {"eid": eids, "names": names, "pred": _stack(pred, names), "true": true}
    if all(f"{n} lower" in pred and f"{n} upper" in pred for n in names):
        out["lower"] = _stack(pred, [f"{n} lower" for n in names])
        out["upper"] = _stack(pred, [f"{n} upper" for n in names])
    return in_order(out, order) if order is not None else out


def load_classify(folder: Path | None, order: list[str] | None = None) -> dict | None:
    """Probabilities, stored labels and targets of a classify test folder (rows in ``order`` when given); None
    when files are missing."""
    found = read_predictions(folder, "diseases.csv")
    if found is None:
        return None
    eids, table, names, true = found
    prob, labels = _stack(table, [f"{n}_probability" for n in names]), _stack(table, names)
    out = {"eid": eids, "names": names, "prob": prob, "labels": labels, "true": true}
    return in_order(out, order) if order is not None else out


LOADERS = {"regress": load_regress, "classify": load_classify}


def load_test(cfg: dict, stage: dict, r) -> tuple[str | None, Path | None, dict | None]:
    """(test key, folder, loaded predictions in test-split order) of a regress / classify entry at R=``r``."""
    key = test_key(stage, r)
    folder = test_folder(cfg, stage, key)
    return key, folder, LOADERS[stage["task"]](folder, cfg.get("test_eids"))


def split_targets(cfg: dict, split: str, key: str, names: list[str]) -> np.ndarray:
    """(N, K) targets of the ``names`` columns on ``split`` (datalist, else the cohort's phenotypes.csv)."""
    known = PHENOTYPES if key == "phenotypes" else DISEASES
    if all(n in known for n in names):
        return target_array(cfg["datalist"], split, key)[:, [known.index(n) for n in names]]
    table = read_phenotype_table(str(Path(cfg["cohort"]) / "phenotypes.csv"), names)
    return np.stack([table[str(it["eid"])] for it in read_datalist(cfg["datalist"], split)])


def read_subject_rows(folder: Path | None, metric: str) -> dict | None:
    """``{"eid": [N], "value": (N,)}`` of ``folder/<metric>_raw.csv`` (per-subject metric details: eid, class
    columns, their ``mean``, which is the value); None when absent."""
    path = folder / f"{metric}_raw.csv" if folder is not None else None
    if path is None or not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"eid": [r["filename"] for r in rows], "value": np.array([float(r["mean"]) for r in rows])}
