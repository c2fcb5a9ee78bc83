"""Presets: one source of sizes (bundles/presets/*.json) read by the package and merged into every bundle."""

import json
from pathlib import Path

import pytest

from kmtr_monai.presets import COHORT_PRESETS, DATA_PRESETS, PRESETS

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


@pytest.mark.parametrize("name", sorted(DATA_PRESETS))
def test_cohort_preset_covers_loader_preset(name):
    cohort, data = COHORT_PRESETS[name], DATA_PRESETS[name]
    assert cohort["frames"] >= data["n_frames"]
    assert cohort["matrix"] >= data["crop"]
    assert cohort["sax_slices"] >= data["n_sax"] + 2  # ViTa: start 2 slices below the first LV slice


def test_paper_preset_states_the_paper_settings():
    p = PRESETS["paper"]
    assert (p["depth"], p["dec_depth"], p["dim"], p["patch"], p["mask_ratio"]) == (6, 2, 1024, (5, 8, 8), 0.7)
    assert (p["n_sax"] + 3, p["n_frames"], p["crop"]) == (9, 50, 128)
    assert (p["mae_batch_size"], p["align_batch_size"], p["head_hidden"], p["unetr_feature_size"]) == (2, 256, 256, 576)


def test_every_preset_has_the_same_keys():
    keys = {name: set(p) for name, p in PRESETS.items()}
    assert all(k == keys["paper"] for k in keys.values()), keys


def test_sizes_are_written_only_in_the_preset_files():
    """No bundle config (nor the shared one) sets a preset key: the preset is the one place for every size."""
    preset_keys = set(PRESETS["paper"]) - {"preset"}
    for path in BUNDLES.glob("*/configs/*.json"):
        if path.parent.parent.name == "presets" or path.name == "metadata.json":
            continue
        clash = preset_keys & set(json.loads(path.read_text()))
        assert not clash, f"{path} sets preset keys {sorted(clash)}"
    for path in (BUNDLES / "common").glob("*.json"):
        clash = preset_keys & set(json.loads(path.read_text()))
        assert not clash, f"{path} sets preset keys {sorted(clash)}"
