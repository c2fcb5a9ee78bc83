"""Named sizes shared by the cohort generator, the loader, the networks, the bundles and the pipeline.

The one source is ``bundles/presets/<name>.json``: the bundles merge that file into their configs, and this module
reads the same file, so every number is written once. Views of it:

``COHORT_PRESETS``: what ``kmtr simulate`` renders on disk (UK Biobank layout) and the pipeline's default subject count.
``DATA_PRESETS``: what the loader cuts from it for a network (views, frames, crop).
``MODEL_PRESETS``: network sizes (n_views = 3 LAX + n_sax).
``PRESETS``: the whole file per name (training settings included: batch sizes, epochs, learning rate, head widths).
"""

from __future__ import annotations

import json
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "bundles" / "presets"
PRESET_NAMES = ("tiny", "small", "paper")
_DATA_KEYS = ("n_sax", "n_frames", "crop")
_MODEL_KEYS = ("dim", "depth", "heads", "dec_dim", "dec_depth", "dec_heads", "patch")


def load_preset(name: str) -> dict:
    """The parsed ``bundles/presets/<name>.json`` (``patch`` as a tuple)."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"preset file {path} not found; kmtr-monai reads its presets from the bundles/ folder "
                                "of a source checkout (install with `pip install -e .`)")  # fmt: skip
    preset = json.loads(path.read_text())
    missing = [k for k in ("cohort", *_DATA_KEYS, *_MODEL_KEYS) if k not in preset]
    if missing:
        raise ValueError(f"preset file {path} lacks keys {missing}")
    preset["patch"] = tuple(preset["patch"])
    return preset


PRESETS = {name: load_preset(name) for name in PRESET_NAMES}
COHORT_PRESETS = {name: {k: v for k, v in p["cohort"].items() if k != "subjects"} for name, p in PRESETS.items()}
DATA_PRESETS = {name: {k: p[k] for k in _DATA_KEYS} for name, p in PRESETS.items()}
MODEL_PRESETS = {name: {k: p[k] for k in _MODEL_KEYS} for name, p in PRESETS.items()}
DEFAULT_SUBJECTS = {name: p["cohort"]["subjects"] for name, p in PRESETS.items()}
