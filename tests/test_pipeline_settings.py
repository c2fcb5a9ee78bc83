"""``kmtr pipeline --set KEY=VALUE``: bundle settings for every stage (models, floors, probes), their fingerprint,
linear-cache key, manifest and report line, and the one-line errors. Unit level: no stage runs."""

import io
import json
from pathlib import Path

import pytest

from kmtr_monai import pipeline
from kmtr_monai.bundle import config_files, default_bundles_dir
from kmtr_monai.linear_eval import _CACHE_VERSION, file_digest, inputs_digest, inputs_parser
from kmtr_monai.pipeline import PipelineRun, parse_settings, write_manifest
from kmtr_monai.presets import PRESETS
from kmtr_monai.stages import all_stages

BUNDLES = default_bundles_dir()
ACQ = {"kspace_geometry": "acquisition"}
STAGES = {s.name: s for s in all_stages()}


class Stop(Exception):
    """Raised by a spy once it has seen what it checks, so that nothing is loaded."""


@pytest.fixture
def cohort(tmp_path):
    """A cohort folder with the two files the cache key reads (nothing is loaded from it)."""
    path = tmp_path / "cohort"
    path.mkdir()
    (path / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": []}))
    (path / "phenotypes.csv").write_text("eid\n")
    return path


def _run(tmp_path, settings=None, **kw):
    budget = PRESETS["tiny"]["pipeline"]
    return PipelineRun(tmp_path, "tiny", tmp_path / "cohort", [4, 8], epochs=dict(budget["epochs"]),
                       overrides=dict(budget.get("overrides", {})), settings=dict(settings or {}), **kw)  # fmt: skip


def test_parse_settings_reads_key_value_pairs_as_json_or_strings():
    assert parse_settings(None) == parse_settings("") == {}
    got = parse_settings("kspace_geometry=acquisition, pe_lines=64,kspace_patch=[2, 4],freeze_encoder=true")
    assert got == {"kspace_geometry": "acquisition", "pe_lines": 64, "kspace_patch": [2, 4], "freeze_encoder": True}
    assert parse_settings(["kspace_geometry=acquisition", "pe_lines=64"]) == {"kspace_geometry": "acquisition",
                                                                              "pe_lines": 64}  # fmt: skip
    assert parse_settings({"kspace_geometry": "acquisition"}) == ACQ
    assert parse_settings("optimizer#lr=0.001") == {"optimizer#lr": 0.001}


@pytest.mark.parametrize("text, match", [
    ("kspace_geomtry=acquisition", "unknown config key 'kspace_geomtry'"),
    ("nope#x=1", "unknown config key 'nope'"),
    ("dataset_dir=/data", "sets 'dataset_dir' itself"), ("align_ckpt=a.pt", "sets 'align_ckpt' itself"),
    ("max_epochs=3", "sets 'max_epochs' itself"), ("device=cuda", "sets 'device' itself"),
    ("val_acceleration=8", "sets 'val_acceleration' itself"), ("eval_split=test", "sets 'eval_split' itself"),
    ("acquisition", "expected KEY=VALUE"),
])  # fmt: skip
def test_unknown_or_pipeline_owned_keys_are_one_line_errors(text, match, tmp_path):
    with pytest.raises(ValueError, match=match) as err:
        parse_settings(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=match):  # refused before anything runs
        pipeline.run_pipeline(out=str(tmp_path / "run"), preset="tiny", settings=text)
    assert not (tmp_path / "run").exists()


def test_cli_set_is_repeatable_and_reaches_run_pipeline(monkeypatch):
    from kmtr_monai import cli

    seen = {}
    monkeypatch.setattr(pipeline, "run_pipeline", lambda **kw: seen.update(kw))
    cli.main(["pipeline", "--out", "x", "--set", "kspace_geometry=acquisition", "--set=pe_lines=64"])
    assert parse_settings(seen["settings"]) == {"kspace_geometry": "acquisition", "pe_lines": 64}
    cli.main(["pipeline", "--set", "kspace_geometry=acquisition"])
    assert seen["settings"] == "kspace_geometry=acquisition"
    cli.main(["pipeline"])
    assert seen["settings"] is None


def test_settings_reach_every_model_stage_below_the_stage_and_preset_overrides(tmp_path):
    """Lowest precedence: the stage table's method keys and the preset's per-stage budget win, and are listed."""
    run = _run(tmp_path, {**ACQ, "tokenizer": "hybrid", "freeze_encoder": False})
    kmtr = run.train_overrides(STAGES["regress-kmtr"])
    assert kmtr["kspace_geometry"] == "acquisition" and kmtr["freeze_encoder"] is True  # the tiny preset's
    assert run.train_overrides(STAGES["regress-stage1"])["freeze_encoder"] is False
    assert run.train_overrides(STAGES["recon-kgin"])["tokenizer"] == "line"  # the stage table's
    for name in ("image-mae", "kspace-mae", "align", "segment-dynunet-zf", "classify-cnn-image"):
        assert run.train_overrides(STAGES[name])["kspace_geometry"] == "acquisition", name
    cmd = run.command(STAGES["align"], run.train_overrides(STAGES["align"]))
    assert cmd[cmd.index("--kspace_geometry") + 1] == "acquisition"
    shadowed = run.shadowed_settings(all_stages())
    assert shadowed["tokenizer"] == ["recon-kgin"] and shadowed["freeze_encoder"] == ["regress-kmtr"]
    assert "kspace_geometry" not in shadowed


def test_fingerprint_without_settings_is_the_old_form_and_changes_with_them(tmp_path):
    for name in ("regress-kmtr", "regress-floor-kspace", "classify-probe-kmtr-mean"):
        stage = STAGES[name]
        plain, acq = _run(tmp_path), _run(tmp_path, ACQ)
        old = {"preset": "tiny", "overrides": {k: str(v) for k, v in plain.train_overrides(stage).items()},
               "tests": plain.test_accelerations(stage), "upstream": {u: None for u in stage.upstream}}  # fmt: skip
        assert plain.fingerprint(stage) == old
        assert acq.fingerprint(stage) != old and acq.fingerprint(stage)["settings"] == ACQ
        assert acq.fingerprint(stage) != _run(tmp_path, {"kspace_geometry": "image_crop"}).fingerprint(stage)


def test_manifest_and_report_state_the_settings(tmp_path):
    from kmtr_monai.report.markdown import md_head, settings_text

    assert json.loads(write_manifest(_run(tmp_path), all_stages()).read_text())["settings"] == {}
    doc = json.loads(write_manifest(_run(tmp_path, {**ACQ, "pe_lines": 64}), all_stages()).read_text())
    assert doc["settings"] == {"kspace_geometry": "acquisition", "pe_lines": 64}
    assert doc["stages"][0]["overrides"]["kspace_geometry"] == "acquisition"
    assert settings_text(doc["settings"]) == "bundle settings: kspace_geometry=acquisition, pe_lines=64"
    run = {"dir": "d", "preset": "small", "n_test": 3, "acceleration": 4, "seg_acceleration": 8}
    results = {"headline": {"text": "h"}, "run": {**run, "settings": doc["settings"]}}
    assert "Every stage ran with bundle settings: kspace_geometry=acquisition, pe_lines=64." in md_head(results)
    assert "settings" not in md_head({**results, "run": {**run, "settings": {}}})


def test_floor_and_probe_stages_pass_the_settings_to_their_parsers(tmp_path, cohort, monkeypatch):
    """The runners hand the settings on; the inputs' parser and the probe encoder's parser hold them (the n_pe
    expression sees the acquisition geometry: tiny pe_lines 48, not crop 32)."""
    from kmtr_monai import floors, linear_eval, probes

    run = _run(tmp_path, ACQ)
    run.cohort = cohort
    seen = {}

    def fake(name):
        def fit(*args, **kwargs):
            seen[name] = args[-1]
            return {"minutes": 0.0, "tests": {}, "validation": {}}
        return fit

    monkeypatch.setattr(floors, "run_floor", fake("floor"))
    monkeypatch.setattr(probes, "run_probe", fake("probe"))
    progress = pipeline.Progress(1, stream=io.StringIO())
    pipeline.run_floor_stage(run, STAGES["regress-floor-kspace"], 1, progress)
    pipeline.run_probe_stage(run, STAGES["regress-probe-scratch-mean"], 1, progress)
    assert seen == {"floor": ACQ, "probe": ACQ}
    monkeypatch.undo()

    parsers = []

    def spy(bundle, preset, overrides):
        parsers.append(real(bundle, preset, overrides))
        raise Stop

    real = linear_eval.bundle_parser
    monkeypatch.setattr(linear_eval, "bundle_parser", spy)
    monkeypatch.setattr(probes, "bundle_parser", spy)
    with pytest.raises(Stop):
        floors.run_floor(cohort, BUNDLES, "tiny", "kspace", 4, "regress", tmp_path / "f", tmp_path / "cache", ACQ)
    with pytest.raises(Stop):
        probes.run_probe(cohort, BUNDLES, "tiny", "scratch", "mean", "regress", {}, 4, tmp_path / "p",
                         tmp_path / "cache", overrides=ACQ)  # fmt: skip
    with pytest.raises(Stop):
        probes.build_encoder(BUNDLES, "tiny", "scratch", {}, ACQ)
    assert len(parsers) == 3
    for parser in parsers:
        assert parser["kspace_geometry"] == "acquisition" and parser.get_parsed_content("n_pe") == 48
    monkeypatch.undo()
    plain = inputs_parser(cohort, BUNDLES, "tiny", "kspace", 4)
    assert plain.get_parsed_content("n_pe") == 32 and plain["val_acceleration"] == 4
    owned = inputs_parser(cohort, BUNDLES, "tiny", "kspace", 4, {"input": "image", **ACQ})
    assert owned["input"] == "kspace"  # the keys split_inputs sets win


def test_linear_cache_key_differs_with_settings_and_is_unchanged_without(cohort):
    def key(overrides=None, split="test"):
        return inputs_digest(cohort, BUNDLES, "tiny", "kspace", 4, split, overrides)

    configs = config_files(Path(BUNDLES).resolve() / "regress", "train", "tiny")
    old = file_digest(_CACHE_VERSION, cohort / "datalist.json", cohort / "phenotypes.csv", *map(Path, configs),
                      str(cohort.resolve()), "tiny", "kspace", 4, "test")  # fmt: skip
    assert key() == key({}) == old
    assert key(ACQ) != old and key(ACQ) != key({"kspace_geometry": "image_crop"})
