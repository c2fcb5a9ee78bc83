"""Arrays the report draws that no metric file holds: k-MTR embeddings of the test subjects (t-SNE) and example
images (segmentation overlays, reconstructions beside the ground truth and the zero-filled image).

They come from the trained bundles themselves: each stage's ``evaluate.json`` config list (with the overrides the
stage was trained with) is parsed in this process and its evaluator run on the test split, with one Ignite handler
that keeps what the report needs. Nothing here re-implements a network, a transform or a checkpoint load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.bundle import config_files
from kmtr_monai.constants import LAX_VIEWS
from kmtr_monai.pipeline import all_stages, output_to

EXAMPLE_SUBJECTS = 2


def _evaluator(run, stage, scratch: Path, max_subjects: int | None):
    """The stage's test-split evaluator, built from its bundle configs in this process; metrics go to ``scratch``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(run.bundles / stage.bundle, "evaluate", run.preset))
    overrides = {**run.train_overrides(stage), "output_dir": scratch, "eval_split": "test",
                 "bundle_root": run.bundles / stage.bundle, "num_workers": 0}  # fmt: skip
    overrides.pop("max_epochs", None)
    for key, value in overrides.items():
        parser[key] = str(value) if isinstance(value, Path) else value
    if max_subjects is not None:  # only the first subjects are drawn: cache just those
        parser["validate#dataset#data"] = (
            f"$kmtr_monai.data.datalist.read_datalist(@datalist_file, @eval_split)[:{max_subjects}]")
    return parser.get_parsed_content("validate#evaluator")


def run_and_keep(run, stage, keep, max_subjects: int | None = None) -> list:
    """Run the stage's evaluator on the test split; ``keep(batch, output)`` is called per iteration and its
    results returned in order."""
    from ignite.engine import Events

    scratch = run.out / "report" / "data" / f".{stage.name}"
    kept = []
    with output_to(run.out / "report" / "data" / "log.txt"):
        evaluator = _evaluator(run, stage, scratch, max_subjects)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                    lambda e: kept.append(keep(e.state.batch, e.state.output)))  # fmt: skip
        evaluator.run()
    shutil.rmtree(scratch, ignore_errors=True)
    return kept


def _numpy(x) -> np.ndarray:
    return torch.as_tensor(x).detach().cpu().float().numpy()


def embeddings(run, stage) -> dict[str, np.ndarray]:
    """``z`` (N, D) k-space embeddings of the aligned encoder on the test split and their ``eid`` (N,)."""
    kept = run_and_keep(run, stage, lambda b, o: (list(b["eid"]), _numpy(o["pred"]["z_kspace"])))
    return {"eid": np.array([e for eids, _ in kept for e in eids]), "z": np.concatenate([z for _, z in kept])}


def _example_views(n_sax: int) -> list[tuple[int, str]]:
    """(view index, name): the 4-chamber view and the mid short-axis slice."""
    return [(LAX_VIEWS.index("la_4ch"), "la_4ch"), (len(LAX_VIEWS) + n_sax // 2, f"sax_{n_sax // 2}")]


def _first(kept: list, key: str) -> np.ndarray:
    return np.concatenate([k[key] for k in kept])[:EXAMPLE_SUBJECTS]


def examples(run, stages: dict) -> dict[str, np.ndarray]:
    """Frame-0 examples (E, H, W) of the first test subjects, views 4ch and mid-SAX: ``image``, ``zero_filled`` and
    each reconstruction (``recon_<method>``) from the recon stages; ``seg_true`` and ``seg_<method>`` from the
    segmentation stages. ``stages``: {stage name: Stage} of the stages that are done."""
    from kmtr_monai.presets import PRESETS

    views = _example_views(PRESETS[run.preset]["n_sax"])
    out: dict[str, np.ndarray] = {}

    def pick(x: np.ndarray) -> np.ndarray:  # (N, S, T, H, W) -> (N·views, H, W) at frame 0
        return np.stack([x[n, v, 0] for n in range(x.shape[0]) for v, _ in views])

    for name, stage in stages.items():
        if stage.task == "recon":
            kept = run_and_keep(run, stage, lambda b, o: {"image": _numpy(b["image"]), "zf": _numpy(b["zero_filled"]),
                                                          "pred": _numpy(o["pred"][:, 0]), "eid": list(b["eid"])},
                                max_subjects=EXAMPLE_SUBJECTS)  # fmt: skip
            out["image"], out["zero_filled"] = pick(_first(kept, "image")), pick(_first(kept, "zf"))
            out[f"recon_{stage.method}"] = pick(_first(kept, "pred"))
        elif stage.task == "segment":
            kept = run_and_keep(run, stage, lambda b, o: {"true": _numpy(b["seg"]),
                                                          "pred": _numpy(o["pred"].argmax(1))},
                                max_subjects=EXAMPLE_SUBJECTS)  # fmt: skip
            out["seg_true"] = pick(_first(kept, "true")).astype(np.int64)
            out[f"seg_{stage.method}"] = pick(_first(kept, "pred")).astype(np.int64)
    if out:
        out["titles"] = np.array([f"subject {n + 1}, {view}" for n in range(EXAMPLE_SUBJECTS) for _, view in views])
    return out


def collect_report_data(run) -> Path:
    """Write ``DIR/report/data/embeddings.npz`` and ``examples.npz`` from the stages that are done; returns the
    folder. A stage that is not done is left out (the report says what is missing)."""
    data = run.out / "report" / "data"
    data.mkdir(parents=True, exist_ok=True)
    done = {s.name: s for s in all_stages() if run.is_done(s)}
    if "align" in done:
        np.savez(data / "embeddings.npz", **embeddings(run, done["align"]))
    shown = {n: s for n, s in done.items() if s.task in ("recon", "segment") and s.method in ("kmtr", "kgin",
                                                                                                 "dynunet-zf")}
    found = examples(run, dict(sorted(shown.items(), key=lambda kv: kv[1].task != "recon")))
    if found:
        np.savez(data / "examples.npz", **found)
    return data
