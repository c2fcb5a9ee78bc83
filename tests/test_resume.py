"""Resume after SIGKILL, and safe loading of checkpoints (weights_only, errors listing mismatched keys and shapes)."""

import ast
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from kmtr_monai.bundle import bundle_command, config_files

TESTS = Path(__file__).resolve().parent
BUNDLES = TESTS.parent / "bundles"
PACKAGE = TESTS.parent / "kmtr_monai"


class PauseAt:
    """Test-only trainer handler: after iteration ``iteration`` of epoch ``epoch``, write ``marker`` and sleep, so
    the test can SIGKILL the run at a known point in the middle of an epoch. It draws no random numbers."""

    def __init__(self, epoch: int, iteration: int, marker: str, seconds: float = 300.0) -> None:
        self.epoch, self.iteration, self.marker, self.seconds = epoch, iteration, marker, seconds

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        s = engine.state
        if s.epoch == self.epoch and (s.iteration - 1) % s.epoch_length + 1 == self.iteration:
            Path(self.marker).write_text(f"{s.epoch} {s.iteration}")
            time.sleep(self.seconds)


def _env():
    # one thread: the same reduction order in every run, so the comparison below can be exact
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def _command(cohort: Path, run: Path, extra_config: Path | None = None):
    overrides = {"dataset_dir": cohort, "ckpt_dir": run / "models", "output_dir": run / "eval", "max_epochs": 3,
                 "seed": 3}  # fmt: skip
    cmd = bundle_command("image-mae", "tiny", overrides)
    if extra_config is not None:  # one more config layer, after the bundle's own
        i = cmd.index("--config_file") + 1
        cmd[i] = repr([*ast.literal_eval(cmd[i]), str(extra_config)])
    return cmd


def _metrics(run: Path) -> dict:
    return {k: float(v) for k, v in (r.split(",") for r in (run / "eval" / "metrics.csv").read_text().split())}


def test_sigkilled_run_resumes_and_matches_uninterrupted_run(tiny_cohort, tmp_path):
    """image-mae (tiny, 3 epochs of 2 iterations) is SIGKILLed in the middle of epoch 2 (after its first iteration;
    the epoch-1 resume checkpoint exists), restarted with the same command, and must finish with the same metrics and
    the same final weights as an uninterrupted run, exactly: the resume file restores model, optimizer, scheduler,
    best metric, trainer counters and every random state (torch, numpy, random, the transforms'), the interrupted
    epoch is replayed from its start, and on CPU with one thread every operation is deterministic."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    marker = tmp_path / "paused"
    pause = tmp_path / "pause.json"
    pause.write_text(json.dumps({
        "pause": {"_target_": "test_resume.PauseAt", "epoch": 2, "iteration": 1, "marker": str(marker)},
        "train#trainer#train_handlers": "$@train#handlers_every_rank + @train#handlers_main_rank + [@pause]"}))
    ref = subprocess.Popen(_command(tiny_cohort, reference), env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = open(tmp_path / "killed.log", "w")
    victim = subprocess.Popen(_command(tiny_cohort, killed, pause),
                              env=_env(), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 120
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    log.close()
    assert victim.returncode == -signal.SIGKILL
    assert marker.read_text() == "2 3"  # killed after epoch 2's first iteration (iteration 3 overall)
    saved = sorted(p.name for p in (killed / "models" / "resume").iterdir())
    assert saved == ["resume_checkpoint_2.pt"], saved  # only the end of epoch 1; no temporary file left visible

    resumed = subprocess.run(_command(tiny_cohort, killed), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "resume_checkpoint_2.pt at epoch 1, iteration 2" in resumed.stdout
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]

    assert _metrics(killed) == _metrics(reference)  # exact
    finals = [torch.load(r / "models" / "model_final.pt", map_location="cpu", weights_only=True) for r in (reference, killed)]
    assert finals[0]["model"].keys() == finals[1]["model"].keys()
    for key in finals[0]["model"]:
        assert torch.equal(finals[0]["model"][key], finals[1]["model"][key]), key
    best = [torch.load(r / "models" / "model.pt", map_location="cpu", weights_only=True)["metrics"] for r in (reference, killed)]
    assert best[0] == best[1]
    kept = sorted(p.name for p in (killed / "models" / "resume").iterdir())
    assert kept == ["resume_checkpoint_4.pt", "resume_checkpoint_6.pt"], kept  # the last 2; the old one removed
    state = torch.load(killed / "models" / "resume" / "resume_checkpoint_6.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "best_checkpoint", "trainer", "rng", "checkpointer"} <= set(state)
    assert state["trainer"]["iteration"] == 6 and state["optimizer"]["state"]


def _workflow(cohort: Path, out: Path, workflow: str = "train", preset: str = "tiny", **overrides):
    from monai.bundle import ConfigWorkflow

    bundle = BUNDLES / "image-mae"
    return ConfigWorkflow(
        config_file=config_files("image-mae", workflow, preset), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train", bundle_root=str(bundle),
        dataset_dir=str(cohort), ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), **overrides,
    )  # fmt: skip


def test_resume_auto_continues_and_false_starts_afresh(tiny_cohort, tmp_path):
    """In-process: a finished 1-epoch run extended to 2 epochs trains only epoch 2; ``resume: false`` starts at 0."""
    w = _workflow(tiny_cohort, tmp_path, max_epochs=1)
    w.initialize(), w.run(), w.finalize()
    w = _workflow(tiny_cohort, tmp_path, max_epochs=2)
    w.initialize()
    seen = []
    w.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    w.run(), w.finalize()
    assert seen == [2]
    assert sorted(p.name for p in (tmp_path / "models" / "resume").iterdir()) == ["resume_checkpoint_2.pt",
                                                                                  "resume_checkpoint_4.pt"]
    w = _workflow(tiny_cohort, tmp_path, max_epochs=1, resume=False)
    w.initialize()
    seen = []
    w.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    w.run(), w.finalize()
    assert seen == [1]


def test_evaluate_refuses_checkpoint_of_another_preset(tiny_cohort, tmp_path):
    """The evaluate config loads model.pt strictly: a 'small'-preset image-mae checkpoint in a 'tiny' run is refused
    with the bundle, the file, the entry and the mismatched keys and shapes."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("image-mae", "train", "small"))
    (tmp_path / "models").mkdir()
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, tmp_path / "models" / "model.pt")
    w = _workflow(tiny_cohort, tmp_path, workflow="evaluate")
    w.initialize()
    with pytest.raises(Exception) as err:  # MONAI wraps it in "Failed to evaluate ..."; ours is the cause
        w.run()
    msg = _value_error_message(err.value)
    assert "bundle 'image-mae'" in msg and str(tmp_path / "models" / "model.pt") in msg and "key='model'" in msg
    assert "shape mismatches" in msg and "checkpoint (" in msg and "vs model (" in msg
    assert "tokenizer.proj.weight: checkpoint (192, 1, 2, 8, 8) vs model (64, 1, 2, 8, 8)" in msg  # key and shapes


def _value_error_message(err: BaseException) -> str:
    """The message of the ValueError MONAI's "Failed to evaluate ..." wraps (followed through ``__cause__``)."""
    cause = err
    while cause is not None and not isinstance(cause, ValueError):
        cause = cause.__cause__
    assert cause is not None, repr(err)
    return str(cause)


def test_every_torch_load_in_the_package_is_weights_only():
    """Every ``torch.load(...)`` call in kmtr_monai passes ``weights_only=True`` (pickle code execution is refused)."""
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", ok))
    assert calls, "no torch.load found: the scan is broken"
    assert [c for c, ok in calls if not ok] == []


def test_iteration_interval_and_a_resume_file_that_does_not_fit(tiny_cohort, tmp_path):
    """``resume_unit: iteration`` saves after every ``resume_interval`` iterations, keeping ``resume_n_saved``; a
    resume file whose weights do not fit the network is refused naming the bundle, the file and the key."""
    w = _workflow(tiny_cohort, tmp_path, max_epochs=1, resume_unit="iteration", resume_interval=1, resume_n_saved=1)
    w.initialize(), w.run(), w.finalize()
    resume = tmp_path / "models" / "resume"
    assert sorted(p.name for p in resume.iterdir()) == ["resume_checkpoint_2.pt"]
    state = torch.load(resume / "resume_checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and len(state["rng"]["ranks"]) == 1
    state["model"]["mask_token"] = torch.zeros(1, 1, 3)
    torch.save(state, resume / "resume_checkpoint_9.pt")
    w = _workflow(tiny_cohort, tmp_path, max_epochs=2)
    w.initialize()
    with pytest.raises(Exception) as err:
        w.run()
    msg = _value_error_message(err.value)
    assert "bundle 'image-mae'" in msg and "resume_checkpoint_9.pt does not fit this run" in msg
    assert "set resume false" in msg and "mask_token" in msg


def test_rng_state_round_trip_covers_every_generator_and_the_transforms():
    """After ``load_state_dict`` torch, numpy, random and each random transform of the data chain (inside a Compose
    inside a dataset) draw the same numbers again; a chain with another number of random transforms is refused."""
    import random

    import numpy as np
    from monai.data import Dataset
    from monai.transforms import Compose, RandGaussianNoised, RandFlipd

    from kmtr_monai.engines import RngState

    chain = Compose([RandFlipd("x", prob=0.5), Compose([RandGaussianNoised("x", prob=1.0)])])
    data = Dataset([{"x": np.zeros((1, 4))}], transform=chain)
    rng = RngState(data)
    saved = rng.state_dict()

    def draw():
        flips = [chain.transforms[0].R.rand() for _ in range(3)]
        noise = chain.transforms[1].transforms[0].R.rand()
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(), flips, noise

    first = draw()
    rng.load_state_dict(saved)
    assert draw() == first
    assert len(saved["ranks"]) == 1 and len(saved["ranks"][0]["transforms"]) == 4  # 2 Composes + 2 transforms
    with pytest.raises(ValueError, match="random transform"):
        RngState(Dataset([], transform=Compose([RandFlipd("x")]))).load_state_dict(saved)
