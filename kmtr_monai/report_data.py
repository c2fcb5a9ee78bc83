"""Arrays the report draws that no metric file holds: k-MTR embeddings of the test subjects (t-SNE) and example
images (segmentation overlays, reconstructions beside the ground truth and the zero-filled image).

They come from the trained bundles themselves: each stage's ``evaluate.json`` config list (with the overrides the
stage was trained with) is parsed in this process and its evaluator run on the test split, with one Ignite handler
that keeps what the report needs. Nothing here re-implements a network, a transform or a checkpoint load.

Like the report, it reads only the run folder: ``DIR/pipeline.json`` gives each stage's bundle, the preset and
the overrides it was trained with (paths relative to DIR resolved against it), so a copied run folder works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kmtr_monai.bundle import config_files, default_bundles_dir
from kmtr_monai.capture import output_to
from kmtr_monai.constants import LAX_VIEWS
from kmtr_monai.report.run import load_run, stages_of

EXAMPLE_SUBJECTS = 2


def _bundle(cfg: dict, stage: dict) -> Path:
    """The stage's bundle folder: under the manifest's ``bundles``, else the installed bundles (a run folder moved
    to another machine)."""
    for root in (Path(cfg.get("bundles") or default_bundles_dir()), default_bundles_dir()):
        if (root / stage["bundle"]).is_dir():
            return root / stage["bundle"]
    raise FileNotFoundError(f"bundle {stage['bundle']!r} of stage {stage['name']} is neither under "
                            f"{cfg.get('bundles')} nor under {default_bundles_dir()}")  # fmt: skip


def stage_overrides(cfg: dict, stage: dict) -> dict:
    """The overrides the stage was trained with (``pipeline.json``), its path overrides resolved against DIR."""
    over = dict(stage.get("overrides") or {})
    for key in stage.get("paths") or ():
        over[key] = cfg["dir"] / over[key]
    return over


def _evaluator(cfg: dict, stage: dict, scratch: Path, max_subjects: int | None):
    """The stage's test-split evaluator, built from its bundle configs in this process; metrics go to ``scratch``."""
    from monai.bundle import ConfigParser

    bundle = _bundle(cfg, stage)
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "evaluate", cfg["preset"]))
    overrides = {**stage_overrides(cfg, stage), "output_dir": scratch, "eval_split": "test", "bundle_root": bundle,
                 "num_workers": 0}  # fmt: skip
    overrides.pop("max_epochs", None)
    for key, value in overrides.items():
        parser[key] = str(value) if isinstance(value, Path) else value
    if max_subjects is not None:  # only the first subjects are drawn: cache just those
        parser["validate#dataset#data"] = (
            f"$kmtr_monai.data.datalist.read_datalist(@datalist_file, @eval_split)[:{max_subjects}]")
    return parser.get_parsed_content("validate#evaluator")


def run_and_keep(cfg: dict, stage: dict, keep, max_subjects: int | None = None) -> list:
    """Run the stage's evaluator on the test split; ``keep(batch, output)`` is called per iteration and its
    results returned in order."""
    from ignite.engine import Events

    data = cfg["dir"] / "report" / "data"
    scratch = data / f".{stage['name']}"
    kept = []
    with output_to(data / "log.txt"):
        evaluator = _evaluator(cfg, stage, scratch, max_subjects)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                    lambda e: kept.append(keep(e.state.batch, e.state.output)))  # fmt: skip
        evaluator.run()
    shutil.rmtree(scratch, ignore_errors=True)
    return kept


def _numpy(x) -> np.ndarray:
    return torch.as_tensor(x).detach().cpu().float().numpy()


def embeddings(cfg: dict, stage: dict) -> dict[str, np.ndarray]:
    """``z`` (N, D) k-space embeddings of the aligned encoder on the test split and their ``eid`` (N,)."""
    kept = run_and_keep(cfg, stage, lambda b, o: (list(b["eid"]), _numpy(o["pred"]["z_kspace"])))
    return {"eid": np.array([e for eids, _ in kept for e in eids]), "z": np.concatenate([z for _, z in kept])}


def _example_views(n_sax: int) -> list[tuple[int, str]]:
    """(view index, name): the 4-chamber view and the mid short-axis slice."""
    return [(LAX_VIEWS.index("la_4ch"), "la_4ch"), (len(LAX_VIEWS) + n_sax // 2, f"sax_{n_sax // 2}")]


def _first(kept: list, key: str) -> np.ndarray:
    return np.concatenate([k[key] for k in kept])[:EXAMPLE_SUBJECTS]


def examples(cfg: dict, stages: dict) -> dict[str, np.ndarray]:
    """Frame-0 examples (E, H, W) of the first test subjects, views 4ch and mid-SAX: ``image``, ``zero_filled`` and
    each reconstruction (``recon_<method>``) from the recon stages; ``seg_true`` and ``seg_<method>`` (``-`` written
    ``_``) from the segmentation stages. ``stages``: {stage name: manifest entry} of the stages that are done."""
    from kmtr_monai.presets import PRESETS

    views = _example_views(PRESETS[cfg["preset"]]["n_sax"])
    out: dict[str, np.ndarray] = {}

    def pick(x: np.ndarray) -> np.ndarray:  # (N, S, T, H, W) -> (N·views, H, W) at frame 0
        return np.stack([x[n, v, 0] for n in range(x.shape[0]) for v, _ in views])

    for name, stage in stages.items():
        if stage["task"] == "recon":
            kept = run_and_keep(cfg, stage, lambda b, o: {"image": _numpy(b["image"]), "zf": _numpy(b["zero_filled"]),
                                                          "pred": _numpy(o["pred"][:, 0]), "eid": list(b["eid"])},
                                max_subjects=EXAMPLE_SUBJECTS)  # fmt: skip
            out["image"], out["zero_filled"] = pick(_first(kept, "image")), pick(_first(kept, "zf"))
            out[f"recon_{stage['method']}"] = pick(_first(kept, "pred"))
        elif stage["task"] == "segment":
            kept = run_and_keep(cfg, stage, lambda b, o: {"true": _numpy(b["seg"]),
                                                          "pred": _numpy(o["pred"].argmax(1))},
                                max_subjects=EXAMPLE_SUBJECTS)  # fmt: skip
            out["seg_true"] = pick(_first(kept, "true")).astype(np.int64)
            out[f"seg_{stage['method'].replace('-', '_')}"] = pick(_first(kept, "pred")).astype(np.int64)
    if out:
        out["titles"] = np.array([f"subject {n + 1}, {view}" for n in range(EXAMPLE_SUBJECTS) for _, view in views])
    return out


def collect_report_data(run_dir) -> Path:
    """Write ``DIR/report/data/embeddings.npz`` and ``examples.npz`` from the model stages of ``DIR/pipeline.json``
    that are done; returns the folder. A stage that is not done is left out (the report says what is missing)."""
    cfg = load_run(run_dir)
    data = cfg["dir"] / "report" / "data"
    data.mkdir(parents=True, exist_ok=True)
    done = {s["name"]: s for s in stages_of(cfg) if s.get("done")}
    if "align" in done:
        np.savez(data / "embeddings.npz", **embeddings(cfg, done["align"]))
    shown = {n: s for n, s in done.items() if s["task"] in ("recon", "segment") and s["method"] in ("kmtr", "kgin",
                                                                                                    "dynunet-zf")}
    found = examples(cfg, dict(sorted(shown.items(), key=lambda kv: kv[1]["task"] != "recon")))
    if found:
        np.savez(data / "examples.npz", **found)
    return data
