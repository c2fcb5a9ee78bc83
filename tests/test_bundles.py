"""Every bundle trains one short epoch at the tiny preset through monai.bundle, and its metadata verifies offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

from kmtr_monai.bundle import bundle_command, config_files

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SCHEMA = Path(__file__).resolve().parent.parent / "kmtr_monai" / "resources" / "meta_schema.json"
STAGE_ORDER = ("image-mae", "kspace-mae", "align", "regress", "classify", "segment-unetr", "recon")
KEY_METRIC = {"image-mae": "val_mse", "kspace-mae": "val_mse", "align": "val_top1", "regress": "val_mean_mae",
              "classify": "val_mean_auc", "segment-unetr": "val_mean_dice", "recon": "val_psnr"}  # fmt: skip


def run_bundle(name: str, cohort: Path, out: Path, workflow: str = "train", **overrides):
    bundle = BUNDLES / name
    workflow = ConfigWorkflow(
        config_file=config_files(name, workflow, "tiny"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / "common" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        dataset_dir=str(cohort),
        ckpt_dir=str(out / name / "models"),
        output_dir=str(out / name / "eval"),
        max_epochs=1,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_metadata_verifies_offline(name):
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_bundle_files_present():
    for name in STAGE_ORDER:
        for f in ("configs/train.json", "configs/metadata.json", "docs/README.md"):
            assert (BUNDLES / name / f).is_file(), f"{name}/{f} missing"


@pytest.fixture(scope="module")
def stage_outputs(tiny_cohort, tmp_path_factory):
    """Train every bundle one epoch in pipeline order, each chained from its upstream checkpoints."""
    out = tmp_path_factory.mktemp("bundles")
    workflows = {}
    for name in STAGE_ORDER:
        extra = {"image_mae_ckpt": str(out / "image-mae/models/model.pt"),
                 "kspace_mae_ckpt": str(out / "kspace-mae/models/model.pt"),
                 "align_ckpt": str(out / "align/models/model.pt")}  # fmt: skip
        workflows[name] = run_bundle(name, tiny_cohort, out, **extra)
    return out, workflows


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_bundle_trains_and_checkpoints(stage_outputs, name):
    out, workflows = stage_outputs
    ckpt = out / name / "models" / "model.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "model" in state and state["model"], "checkpoint holds no weights"
    saved = (out / name / "eval" / "metrics.csv").read_text()
    assert saved.strip(), "MetricsSaver wrote nothing"


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_evaluate_config_reloads_checkpoint(stage_outputs, tiny_cohort, name):
    metric = KEY_METRIC[name]
    out, _ = stage_outputs
    (out / name / "eval" / "metrics.csv").unlink()
    run_bundle(name, tiny_cohort, out, workflow="evaluate")
    evaluated = float(dict(r.split(",") for r in (out / name / "eval" / "metrics.csv").read_text().split())[metric])
    best = torch.load(out / name / "models" / "model.pt", map_location="cpu", weights_only=True)["metrics"][metric]
    assert evaluated == pytest.approx(best, rel=1e-5)  # the reloaded best checkpoint reproduces its metric


def test_align_two_process_gloo_keeps_ranks_identical(stage_outputs, tiny_cohort):
    """align through its own configs (train + multi_gpu_train) on 2 gloo ranks: one step equals the single-process
    step on the global batch (loss and every gradient, the learnable temperature's included), and after 3 epochs
    every parameter is identical on both ranks. A trainable parameter outside the DDP module (the temperature once
    lived in the loss) is stepped with each rank's own gradient and fails both checks."""
    out, _ = stage_outputs
    run = out / "align-ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "ddp_align_worker.py"), str(run), str(tiny_cohort),
           str(out / "image-mae" / "models" / "model.pt"), str(out / "kspace-mae" / "models" / "model.pt")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = [json.loads((run / f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["loss"] == pytest.approx(report["ref_loss"], abs=1e-5)
        assert report["n_grads"] == report["n_ref_grads"] > 0 and report["max_grad_diff"] < 1e-5
        assert abs(report["temperature_grad"]) > 1e-6 and report["temperature_moved"] > 1e-6  # it is trained
    states = [torch.load(run / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in range(2)]
    assert states[0].keys() == states[1].keys() and "logit_scale.log_logit_scale" in states[0]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"
    assert (run / "models" / "model.pt").is_file()
    assert "val_top1" in (run / "eval" / "metrics.csv").read_text()


def test_align_inputs_get_independent_poses(tiny_cohort):
    """The image and the image its k-space is simulated from are rotated by separate draws (no shared pose)."""
    from monai.bundle import ConfigParser

    from kmtr_monai.data.datalist import read_datalist
    from kmtr_monai.transforms import RandViewRotated

    parser = ConfigParser()
    parser.read_config(config_files("align", "train", "tiny"))
    parser["dataset_dir"] = str(tiny_cohort)
    chain = parser.get_parsed_content("train#preprocessing")
    chain.set_random_state(0)
    rotations = [t for t in chain.transforms if isinstance(t, RandViewRotated)]
    assert sorted(k for t in rotations for k in t.keys) == ["image", "image_k"] and len(rotations) == 2
    out = chain(read_datalist(str(tiny_cohort / "datalist.json"), "training")[0])
    assert out["kspace"].shape[0] == 2 and out["image"].ndim == 4 and "image_k" not in out
    first, second = (t.t.angles for t in rotations)
    assert len(first) == out["image"].shape[0] and (abs(first - second) > 1e-3).all()


def _parsed(files, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("name", STAGE_ORDER)
def test_exported_config_instantiates_the_same_objects(stage_outputs, tiny_cohort, tmp_path, name):
    from kmtr_monai.bundle import export_bundle

    out, _ = stage_outputs
    exported = export_bundle(name, tmp_path / name, preset="tiny")
    overrides = {"dataset_dir": str(tiny_cohort), "image_mae_ckpt": str(out / "image-mae/models/model.pt"),
                 "kspace_mae_ckpt": str(out / "kspace-mae/models/model.pt"),
                 "align_ckpt": str(out / "align/models/model.pt")}  # fmt: skip
    layered = _parsed(config_files(name, "train", "tiny"), bundle_root=str(BUNDLES / name), **overrides)
    flat = _parsed([str(exported / "configs" / "train.json")], bundle_root=str(exported), **overrides)
    for key in ("n_views", "batch_size", "max_epochs", "learning_rate", "key_metric_mode"):
        assert flat.get_parsed_content(key) == layered.get_parsed_content(key), key
    nets = [p.get_parsed_content("network_def") for p in (layered, flat)]
    assert type(nets[0]) is type(nets[1])
    shapes = [{k: tuple(v.shape) for k, v in n.state_dict().items()} for n in nets]
    assert shapes[0] == shapes[1] and shapes[0]
    chains = [[type(t).__name__ for t in p.get_parsed_content("train#preprocessing").transforms] for p in (layered, flat)]
    assert chains[0] == chains[1] and len(chains[0]) >= 2
    text = "".join(f.read_text() for f in (exported / "configs").glob("*.json"))
    assert "/.." not in text  # nothing outside the folder
    for f in ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (exported / f).is_file(), f


def test_exported_bundle_runs_from_its_own_folder(stage_outputs, tiny_cohort, tmp_path):
    from kmtr_monai.bundle import export_bundle

    out, _ = stage_outputs
    weights = out / "kspace-mae" / "models" / "model.pt"
    exported = export_bundle("kspace-mae", tmp_path / "kspace-mae", preset="tiny", weights=weights)
    base = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", "configs/metadata.json",
            "--logging_file", "configs/logging.conf", "--dataset_dir", str(tiny_cohort)]  # fmt: skip
    evaluate = subprocess.run(base + ["--config_file", "['configs/train.json','configs/evaluate.json']"],
                              cwd=exported, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metric = float(dict(r.split(",") for r in (exported / "eval" / "metrics.csv").read_text().split())["val_mse"])
    saved = torch.load(weights, map_location="cpu", weights_only=True)["metrics"]["val_mse"]
    assert metric == pytest.approx(saved, rel=1e-5)  # the copied weights reproduce their metric
    train = subprocess.run(base + ["--config_file", "configs/train.json", "--max_epochs", "1"],
                           cwd=exported, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]


def test_export_refuses_weights_of_another_bundle(stage_outputs, tmp_path):
    from kmtr_monai.bundle import export_bundle

    out, _ = stage_outputs
    with pytest.raises(ValueError, match="does not match ImageMAE"):
        export_bundle("image-mae", tmp_path / "x", preset="tiny", weights=out / "kspace-mae" / "models" / "model.pt")
