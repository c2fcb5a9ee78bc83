"""Every bundle trains one short epoch at the tiny preset through monai.bundle, and its metadata verifies offline."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

from kmtr_monai.pipeline import bundle_command

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SCHEMA = Path(__file__).resolve().parent.parent / "kmtr_monai" / "resources" / "meta_schema.json"
STAGE_ORDER = ("image-mae", "kspace-mae", "align")


def run_bundle(name: str, cohort: Path, out: Path, config: str = "train.json", **overrides):
    bundle = BUNDLES / name
    files = [str(bundle / "configs" / config), str(BUNDLES / "presets" / "tiny.json")]
    if config != "train.json":
        files.insert(0, str(bundle / "configs" / "train.json"))
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
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
        for f in ("configs/train.json", "configs/evaluate.json", "configs/multi_gpu_train.json",
                  "configs/logging.conf", "configs/metadata.json", "docs/README.md", "LICENSE"):
            assert (BUNDLES / name / f).is_file(), f"{name}/{f} missing"


@pytest.fixture(scope="module")
def stage_outputs(tiny_cohort, tmp_path_factory):
    """Train image-mae, kspace-mae, then align (chained from their checkpoints), one epoch each."""
    out = tmp_path_factory.mktemp("bundles")
    workflows = {}
    for name in STAGE_ORDER:
        extra = {}
        if name == "align":
            extra = {"image_mae_ckpt": str(out / "image-mae/models/model.pt"),
                     "kspace_mae_ckpt": str(out / "kspace-mae/models/model.pt")}
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


@pytest.mark.parametrize("name,metric", [("image-mae", "val_mse"), ("kspace-mae", "val_mse"), ("align", "val_top1")])
def test_evaluate_config_reloads_checkpoint(stage_outputs, tiny_cohort, name, metric):
    out, _ = stage_outputs
    (out / name / "eval" / "metrics.csv").unlink()
    run_bundle(name, tiny_cohort, out, config="evaluate.json")
    evaluated = float(dict(r.split(",") for r in (out / name / "eval" / "metrics.csv").read_text().split())[metric])
    best = torch.load(out / name / "models" / "model.pt", map_location="cpu", weights_only=True)["metrics"][metric]
    assert evaluated == pytest.approx(best, rel=1e-5)  # the reloaded best checkpoint reproduces its metric


def test_align_two_process_gloo(stage_outputs, tiny_cohort):
    """The multi-GPU path (torchrun + DDP + DistributedSampler + gathered CLIP loss) runs on CPU with 2 gloo ranks."""
    out, _ = stage_outputs
    overrides = {"dataset_dir": tiny_cohort, "ckpt_dir": out / "align-ddp" / "models",
                 "output_dir": out / "align-ddp" / "eval", "max_epochs": 1,
                 "image_mae_ckpt": out / "image-mae" / "models" / "model.pt",
                 "kspace_mae_ckpt": out / "kspace-mae" / "models" / "model.pt"}  # fmt: skip
    cmd = bundle_command(BUNDLES / "align", "tiny", overrides, multi_gpu=True)
    cmd = [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + cmd[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (out / "align-ddp" / "models" / "model.pt").is_file()
    assert "val_top1" in (out / "align-ddp" / "eval" / "metrics.csv").read_text()


def test_align_inputs_get_independent_poses(tiny_cohort):
    """The image and the image its k-space is simulated from are rotated by separate draws (no shared pose)."""
    from monai.bundle import ConfigParser

    from kmtr_monai.data.datalist import read_datalist
    from kmtr_monai.transforms import RandViewRotated

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "align" / "configs" / "train.json"), str(BUNDLES / "presets" / "tiny.json")])
    parser["dataset_dir"] = str(tiny_cohort)
    chain = parser.get_parsed_content("train#preprocessing")
    chain.set_random_state(0)
    rotations = [t for t in chain.transforms if isinstance(t, RandViewRotated)]
    assert sorted(k for t in rotations for k in t.keys) == ["image", "image_k"] and len(rotations) == 2
    out = chain(read_datalist(str(tiny_cohort / "datalist.json"), "training")[0])
    assert out["kspace"].shape[0] == 2 and out["image"].ndim == 4 and "image_k" not in out
    first, second = (t.t.angles for t in rotations)
    assert len(first) == out["image"].shape[0] and (abs(first - second) > 1e-3).all()
