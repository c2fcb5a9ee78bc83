"""The bundle preset files and the package presets describe the same sizes."""

import json
from pathlib import Path

import pytest

from kmtr_monai.presets import COHORT_PRESETS, DATA_PRESETS, MODEL_PRESETS

PRESET_DIR = Path(__file__).resolve().parent.parent / "bundles" / "presets"


@pytest.mark.parametrize("name", sorted(DATA_PRESETS))
def test_bundle_preset_matches_package(name):
    bundle = json.loads((PRESET_DIR / f"{name}.json").read_text())
    assert bundle["preset"] == name
    for key, value in {**DATA_PRESETS[name], **MODEL_PRESETS[name]}.items():
        assert key in bundle, f"{name}.json lacks {key!r}"
        assert bundle[key] == (list(value) if isinstance(value, tuple) else value), f"{name}.json {key}"


@pytest.mark.parametrize("name", sorted(DATA_PRESETS))
def test_cohort_preset_covers_loader_preset(name):
    cohort, data = COHORT_PRESETS[name], DATA_PRESETS[name]
    assert cohort["frames"] >= data["n_frames"]
    assert cohort["matrix"] >= data["crop"]
    assert cohort["sax_slices"] >= data["n_sax"] + 2  # ViTa: start 2 slices below the first LV slice
