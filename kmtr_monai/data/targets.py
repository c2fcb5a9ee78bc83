"""Training-split target arrays and statistics read from a datalist (for standardisation and class weights)."""

from __future__ import annotations

import numpy as np

from kmtr_monai.data.datalist import read_datalist


def target_array(datalist_file: str, split: str, key: str) -> np.ndarray:
    """(N, K) float64 array of ``key`` (``phenotypes`` or ``diseases``) over the ``split`` items; null → NaN."""
    items = read_datalist(datalist_file, split)
    missing = [item.get("eid") for item in items if key not in item]
    if not items or missing:
        raise ValueError(f"datalist {datalist_file}: split {split!r} has no items or items without {key!r} "
                         f"(e.g. {missing[:3]})")  # fmt: skip
    return np.array([[np.nan if v is None else v for v in item[key]] for item in items], dtype=np.float64)


def target_stats(datalist_file: str, split: str, key: str) -> dict[str, list[float]]:
    """``{"mean": (K,), "std": (K,)}`` of ``key`` over ``split``, ignoring NaN (std floored at 1e-6)."""
    y = target_array(datalist_file, split, key)
    mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    if not np.isfinite(mean).all():
        raise ValueError(f"datalist {datalist_file}: some {key!r} columns have no value in split {split!r}")
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}


def stats_from_checkpoint(checkpoint: str, key: str = "model", prefix: str = "head.") -> dict[str, list[float]]:
    """The ``{"mean", "std"}`` a regression model was trained with, read from its own buffers (``head.target_mean``,
    ``head.target_std``) so inference needs no datalist; loaded with ``weights_only=True``."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get(key, state) if isinstance(state, dict) else state
    names = (f"{prefix}target_mean", f"{prefix}target_std")
    if not isinstance(state, dict) or any(n not in state for n in names):
        raise ValueError(f"checkpoint {checkpoint}: no {list(names)} under key {key!r}; is it a regress checkpoint?")
    return {"mean": state[names[0]].tolist(), "std": state[names[1]].tolist()}


def read_phenotype_table(path: str, names) -> dict[str, np.ndarray]:
    """``{eid: (K,) float64}`` of the ``names`` columns of a ukbb_cardiac ``phenotypes.csv`` (empty cell → NaN)."""
    import csv

    names = list(names)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [n for n in names if n not in (reader.fieldnames or [])]
        if missing or "eid" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: columns {missing or ['eid']} not found; it has {reader.fieldnames}")
        table = {}
        for row in reader:
            table[row["eid"]] = np.array([float(row[n]) if row[n] not in ("", None) else np.nan for n in names])
    return table


class PhenotypeTargetsd:
    """``d["phenotypes"]`` (K,) float32 = the ``names`` columns of ``table`` (a ukbb_cardiac ``phenotypes.csv``) for
    ``d["eid"]``: any subset of the ukbb_cardiac set (``constants.ALL_PHENOTYPES``) as regression targets, where the
    datalist carries only the paper's 12. A subject missing from the table is an error naming the file."""

    def __init__(self, names, table: str) -> None:
        self.names, self.path = list(names), str(table)
        self.table = read_phenotype_table(self.path, self.names)

    def __call__(self, data):
        import torch

        d = dict(data)
        eid = str(d["eid"])
        if eid not in self.table:
            raise KeyError(f"{self.path}: no row for subject {eid!r}")
        d["phenotypes"] = torch.as_tensor(self.table[eid], dtype=torch.float32)
        return d


def target_stats_from_table(datalist_file: str, split: str, table: str, names) -> dict[str, list[float]]:
    """``target_stats`` of the ``names`` columns of ``table`` over the subjects of ``split``."""
    rows = read_phenotype_table(table, names)
    eids = [str(item["eid"]) for item in read_datalist(datalist_file, split)]
    missing = [e for e in eids if e not in rows]
    if missing:
        raise ValueError(f"{table}: no row for {split} subjects {missing[:5]}")
    y = np.stack([rows[e] for e in eids])
    mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    if not np.isfinite(mean).all():
        raise ValueError(f"{table}: some of {list(names)} have no value in split {split!r}")
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}
