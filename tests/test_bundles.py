"""Every bundle trains one short epoch at the tiny preset through monai.bundle, and its metadata verifies offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

from kmtr_monai.bundle import bundle_command, config_files
from kmtr_monai.data.datalist import read_datalist

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SCHEMA = Path(__file__).resolve().parent.parent / "kmtr_monai" / "resources" / "meta_schema.json"
STAGE_ORDER = ("image-mae", "kspace-mae", "align", "regress", "classify", "segment-unetr", "recon")
KEY_METRIC = {"image-mae": "val_mse", "kspace-mae": "val_mse", "align": "val_top1", "regress": "val_mean_mae",
              "classify": "val_mean_auc", "segment-unetr": "val_mean_dice", "recon": "val_psnr"}  # fmt: skip


def run_bundle(name: str, cohort: Path, out: Path, workflow: str = "train", **overrides):
    bundle = BUNDLES / name
    args = {"bundle_root": str(bundle), "dataset_dir": str(cohort), "ckpt_dir": str(out / name / "models"),
            "output_dir": str(out / name / "eval"), "max_epochs": 1, **overrides}  # fmt: skip
    workflow = ConfigWorkflow(
        config_file=config_files(name, workflow, "tiny"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / "common" / "logging.conf"),
        workflow_type="train",
        **args,
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
    if name in ("segment-unetr", "recon"):  # per-subject rows, named by eid, for the report's paired intervals
        rows = (out / name / "eval" / f"{metric}_raw.csv").read_text().split()
        eids = [d["eid"] for d in read_datalist(str(tiny_cohort / "datalist.json"), "validation")]
        assert [r.split(",")[0] for r in rows[1:]] == eids
        table = np.array([[float(x) for x in r.split(",")[1:-1]] for r in rows[1:]])  # (subjects, classes)
        assert np.nanmean(np.nanmean(table, axis=0)) == pytest.approx(evaluated, abs=1e-4)  # mean of class means


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
        assert report["queue_length"] == 8 and report["queue_loss"] == pytest.approx(report["queue_ref_loss"], abs=1e-5)
        assert report["queue_loss"] > report["ref_loss"] and report["queue_max_grad_diff"] < 1e-5  # 4 more negatives
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


STAGE3 = ("regress", "classify", "segment-unetr", "recon")


def _infer(name: str, out: Path, input_path: Path, result: Path):
    return run_bundle(name, Path("/nonexistent"), out, workflow="inference", input_path=str(input_path),
                      output_dir=str(result))  # fmt: skip


def _subject_h5(name: str, subject_dir: Path, path: Path) -> Path:
    """The k-space the bundle simulates from a subject folder, written as an HDF5 file on the model's grid."""
    from monai.transforms import Compose

    from kmtr_monai.io.kspace_h5 import write_kspace_h5

    parser = _parsed(config_files(name, "inference", "tiny"), input_path=str(subject_dir))
    chain = Compose(parser.get_parsed_content("from_folder") + parser.get_parsed_content("kspace_sim#validate"))
    d = chain({"subject_dir": str(subject_dir)})
    write_kspace_h5(str(path), d["kspace"].numpy(), d["mask"].numpy(), parser.get_parsed_content("views"),
                    d["view_affine"].numpy(), pixel_spacing=(4.0, 4.0), frame_interval_ms=d["frame_interval_ms"],
                    eid=d["eid"])  # fmt: skip
    return path


@pytest.mark.parametrize("name", STAGE3)
def test_inference_on_subject_folder_and_hdf5(stage_outputs, tiny_cohort, tmp_path, name):
    """Both inputs give the same outputs (same k-space); CSVs have the clinical columns; NIfTIs sit on the source."""
    import csv

    import nibabel as nib
    import numpy as np

    from kmtr_monai.constants import DISEASES, PHENOTYPES

    out, _ = stage_outputs
    subject = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    _infer(name, out, subject, tmp_path / "folder")
    _infer(name, out, _subject_h5(name, subject, tmp_path / "k.h5"), tmp_path / "h5")
    if name in ("regress", "classify"):
        file, names = ("phenotypes.csv", PHENOTYPES) if name == "regress" else ("diseases.csv", DISEASES)
        rows = [list(csv.DictReader(open(tmp_path / d / file))) for d in ("folder", "h5")]
        assert len(rows[0]) == 1 and rows[0][0]["eid"] == subject.name
        for column in names:
            assert float(rows[0][0][column]) == pytest.approx(float(rows[1][0][column]), rel=1e-4, abs=1e-4)
        if name == "classify":
            assert {rows[0][0][d] for d in DISEASES} <= {"0", "1"}
        else:
            assert f"{PHENOTYPES[0]} lower" in rows[0][0]
        return
    if name == "segment-unetr":
        _check_segmentation_on_source_grid(subject, tmp_path / "folder" / subject.name, tmp_path / "h5" / subject.name)
        return
    kind = "recon"
    for view, source in (("la_4ch", "la_4ch.nii.gz"), ("sax_1", "sa.nii.gz")):
        got = [nib.load(tmp_path / d / subject.name / f"{kind}_{view}.nii.gz") for d in ("folder", "h5")]
        np.testing.assert_allclose(got[0].get_fdata(), got[1].get_fdata(), atol=1e-4)
        assert got[0].shape == (32, 32, 1, 4) and np.allclose(got[0].affine, got[1].affine)
        # the output grid is the source grid shifted by whole voxels: it overlays the source in a viewer
        src = nib.load(subject / source)
        to_source = np.linalg.inv(src.affine) @ got[0].affine
        np.testing.assert_allclose(to_source[:3, :3], np.eye(3), atol=1e-6)
        offset = to_source[:3, 3]
        np.testing.assert_allclose(offset, np.round(offset), atol=1e-5)
        offset = np.round(offset)
        assert 0 <= offset[2] < src.shape[2] and abs(offset[0]) < src.shape[0] and abs(offset[1]) < src.shape[1]


def _check_segmentation_on_source_grid(subject: Path, folder: Path, h5: Path) -> None:
    """Folder input: ``seg_<file>.nii.gz`` with each input file's shape and affine. HDF5 input (no source NIfTI):
    one file per view on the model grid. The same k-space gives the same labels: the model-grid file, put at its
    whole-voxel offset in the source grid and at the source frames the loader took, equals the source-grid file."""
    import nibabel as nib

    from kmtr_monai.data.cohort import frame_indices

    assert sorted(os.listdir(folder)) == ["seg_la_2ch.nii.gz", "seg_la_3ch.nii.gz", "seg_la_4ch.nii.gz", "seg_sa.nii.gz"]
    for view, source in (("la_4ch", "la_4ch.nii.gz"), ("sax_0", "sa.nii.gz"), ("sax_1", "sa.nii.gz")):
        src = nib.load(subject / source)
        full = nib.load(folder / f"seg_{source}")
        assert full.shape == src.shape and np.array_equal(full.affine, src.affine)
        crop = nib.load(h5 / f"seg_{view}.nii.gz")
        assert crop.shape == (32, 32, 1, 4)
        offset = np.linalg.inv(src.affine) @ crop.affine
        np.testing.assert_allclose(offset[:3, :3], np.eye(3), atol=1e-6)
        x0, y0, z = (int(v) for v in np.round(offset[:3, 3]))
        got = np.asanyarray(full.dataobj)[..., z, :][..., frame_indices(src.shape[3], 4)]  # (X, Y, 4)
        ref = np.asanyarray(crop.dataobj)[:, :, 0]  # (32, 32, 4)
        xs, ys = slice(max(x0, 0), min(x0 + 32, src.shape[0])), slice(max(y0, 0), min(y0 + 32, src.shape[1]))
        np.testing.assert_array_equal(got[xs, ys], ref[xs.start - x0: xs.stop - x0, ys.start - y0: ys.stop - y0])
        outside = np.ones(src.shape[:2], bool)
        outside[xs, ys] = False
        if source == "la_4ch.nii.gz":
            assert not got[outside].any()  # nothing outside the crop


def test_inference_refuses_a_checkpoint_of_another_bundle(stage_outputs, tiny_cohort, tmp_path):
    out, _ = stage_outputs
    subject = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    with pytest.raises(RuntimeError) as err:
        run_bundle("classify", tiny_cohort, out, workflow="inference", input_path=str(subject),
                   output_dir=str(tmp_path), ckpt_dir=str(out / "segment-unetr" / "models"))  # fmt: skip
    cause = err.value.__cause__
    assert isinstance(cause, ValueError) and "bundle 'classify'" in str(cause) and "model.pt" in str(cause)
    assert "missing keys ['head.head." in str(cause) and "unexpected keys ['head." in str(cause)


def test_exported_segmentation_meets_the_monai_label_contract(stage_outputs, tiny_cohort, tmp_path):
    """MONAI Label's monaibundle app reads only configs/inference.json + metadata.json (+ models/model.pt): the image
    key is the first input, the prediction key the first output, labels from its channel_def; it instantiates
    network_def, runs preprocessing, the inferer and postprocessing on {image: a cine NIfTI path}."""
    from monai.bundle import ckpt_export, verify_net_in_out

    from kmtr_monai.bundle import export_bundle

    out, _ = stage_outputs
    exported = export_bundle("segment-unetr", tmp_path / "seg", preset="tiny",
                             weights=out / "segment-unetr" / "models" / "model.pt")  # fmt: skip
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    image_key = next(iter(meta["network_data_format"]["inputs"]))
    pred_key, pred_spec = next(iter(meta["network_data_format"]["outputs"].items()))
    labels = {int(k): v for k, v in pred_spec["channel_def"].items() if int(k) > 0}
    assert (image_key, pred_key) == ("image", "pred") and labels == {1: "LV blood pool", 2: "LV myocardium",
                                                                     3: "RV blood pool", 4: "LA", 5: "RA"}  # fmt: skip
    parser = _parsed([str(exported / "configs" / "inference.json")], bundle_root=str(exported))
    for key in ("bundle_root", "device", "network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in parser, key
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(exported / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    network.eval()
    subject = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    data = parser.get_parsed_content("preprocessing")({image_key: str(subject / "sa.nii.gz")})
    with torch.no_grad():
        data[pred_key] = parser.get_parsed_content("inferer")(data[image_key][None], network)[0]
    data = parser.get_parsed_content("postprocessing")(data)
    grid = pred_spec["spatial_shape"]
    assert tuple(data[pred_key].shape) == (1, *grid) and set(data[pred_key].unique().tolist()) <= set(range(6))
    # MONAI's own bundle tools on the exported folder: shape check and a traced TorchScript export
    verify_net_in_out(net_id="network_def", meta_file=str(exported / "configs" / "metadata.json"),
                      config_file=str(exported / "configs" / "inference.json"), bundle_root=str(exported))  # fmt: skip
    ckpt_export(net_id="network_def", filepath=str(exported / "models" / "model.ts"),
                ckpt_file=str(exported / "models" / "model.pt"), key_in_ckpt="model", use_trace=True,
                input_shape=[1, 3, *grid],
                meta_file=str(exported / "configs" / "metadata.json"),
                config_file=str(exported / "configs" / "inference.json"), bundle_root=str(exported))  # fmt: skip
    scripted = torch.jit.load(str(exported / "models" / "model.ts"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(data[image_key][None]), network(data[image_key][None]))


def test_regress_two_process_gloo(stage_outputs, tiny_cohort):
    """A Stage III bundle through its own configs + multi_gpu_train.json on 2 gloo ranks, chained from align."""
    out, _ = stage_outputs
    run = out / "regress-ddp"
    overrides = {"dataset_dir": tiny_cohort, "ckpt_dir": run / "models", "output_dir": run / "eval", "max_epochs": 1,
                 "align_ckpt": out / "align" / "models" / "model.pt"}  # fmt: skip
    cmd = bundle_command("regress", "tiny", overrides, multi_gpu=True)
    cmd = [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + cmd[1:]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    metrics = dict(r.split(",") for r in (run / "eval" / "metrics.csv").read_text().split())
    saved = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert float(metrics["val_mean_mae"]) == pytest.approx(saved["metrics"]["val_mean_mae"])  # all 8 subjects scored


def test_probe_head_fits_the_same_on_one_and_two_processes(stage_outputs, tiny_cohort):
    """``head_kind: probe`` through the regress bundle's own configs: the closed-form head fitted by 2 gloo ranks
    (multi_gpu_train.json) equals the single-process one (learning rate 0 keeps the fit as it was)."""
    out, _ = stage_outputs
    over = {"dataset_dir": tiny_cohort, "max_epochs": 1, "align_ckpt": out / "align" / "models" / "model.pt",
            "freeze_encoder": True, "head_kind": "probe", "learning_rate": 0.0}  # fmt: skip
    heads = {}
    for ranks in (1, 2):
        run = out / f"regress-probe-{ranks}"
        cmd = bundle_command("regress", "tiny", {**over, "ckpt_dir": run / "models", "output_dir": run / "eval"},
                             multi_gpu=ranks == 2)  # fmt: skip
        if ranks == 2:
            cmd = [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + cmd[1:]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        state = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
        heads[ranks] = {k.removeprefix("module."): v for k, v in state.items() if ".head." in k}
    assert bool(heads[1]["head.head.fitted"]) and float(heads[1]["head.head.linear.weight"].abs().sum()) > 0
    assert heads[1].keys() == heads[2].keys()
    for key in heads[1]:
        torch.testing.assert_close(heads[2][key], heads[1][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["image-mae", "recon"])
def test_cohort_with_a_missing_view_trains_with_the_view_masked(stage_outputs, tiny_cohort, tmp_path, name):
    """`--missing_views invalid`: a subject without its 2-chamber files trains and validates (the view is zeros with
    view_valid 0, weighted out of the loss) instead of crashing inside a network."""
    import shutil

    from kmtr_monai.data.datalist import write_datalist

    out, _ = stage_outputs
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    subject = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    for f in ("la_2ch.nii.gz", "seg_la_2ch.nii.gz"):
        (subject / f).unlink()
    write_datalist(str(cohort), val_fraction=0.5, test_fraction=0.0, seed=0, missing_views="invalid")
    assert subject.name in (cohort / "datalist.json").read_text()
    run_bundle(name, cohort, tmp_path, missing_views="invalid", align_ckpt=str(out / "align/models/model.pt"))
    metrics = dict(r.split(",") for r in (tmp_path / name / "eval" / "metrics.csv").read_text().split())
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_regress_any_subset_of_the_ukbb_cardiac_columns(stage_outputs, tiny_cohort, tmp_path):
    """`--phenotype_names` picks any ukbb_cardiac columns (LVESV is not among the paper's 12) from phenotypes.csv;
    the model, its statistics and the written CSVs follow."""
    import csv

    out, _ = stage_outputs
    names = ["LVESV (mL)", "LVEF (%)"]
    run_bundle("regress", tiny_cohort, tmp_path, phenotype_names=names, align_ckpt=str(out / "align/models/model.pt"))
    state = torch.load(tmp_path / "regress" / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    table = {r["eid"]: r for r in csv.DictReader(open(tiny_cohort / "phenotypes.csv"))}
    train = [table[i["eid"]] for i in json.loads((tiny_cohort / "datalist.json").read_text())["training"]]
    expected = [np.mean([float(r[n]) for r in train]) for n in names]
    np.testing.assert_allclose(state["head.target_mean"].numpy(), expected, rtol=1e-5)
    run_bundle("regress", tiny_cohort, tmp_path, workflow="evaluate", phenotype_names=names)
    header = next(csv.reader(open(tmp_path / "regress" / "eval" / "phenotypes.csv")))
    assert header[:3] == ["eid", *names]
