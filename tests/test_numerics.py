"""Numerical safety: a NaN/Inf loss stops the run naming bundle, epoch and iteration; no checkpoint is written from
non-finite weights; gradient clipping (``grad_clip_norm``) clips."""

import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from kmtr_monai.bundle import config_files
from kmtr_monai.engines import BestCheckpoint, GradientClipping
from kmtr_monai.engines.safety import nonfinite_entries

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def _workflow(cohort: Path, out: Path, **overrides) -> ConfigWorkflow:
    bundle = BUNDLES / "image-mae"
    w = ConfigWorkflow(
        config_file=config_files("image-mae", "train", "tiny"), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train", bundle_root=str(bundle),
        dataset_dir=str(cohort), ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), **overrides,
    )  # fmt: skip
    w.initialize()
    return w


def _cause(err: BaseException, kind: type) -> BaseException | None:
    while err is not None and not isinstance(err, kind):
        err = err.__cause__ or err.__context__
    return err


def test_exploding_run_stops_with_bundle_epoch_iteration_and_keeps_last_good_checkpoints(tiny_cohort, tmp_path):
    """Epoch 1 (2 iterations) trains normally (lr 1e-3); a LambdaLR stepped every iteration then multiplies the
    learning rate by 1e30, so the first step of epoch 2 makes the weights ~1e27 and the loss of its second iteration
    (iteration 4) overflows. The run must raise naming image-mae, epoch 2 and iteration 4, and model.pt,
    model_final.pt and the resume file must be the finite epoch-1 ones."""
    explode = {"_target_": "torch.optim.lr_scheduler.LambdaLR", "optimizer": "@optimizer",
               "lr_lambda": "$lambda step: 1.0 if step < 2 else 1e30"}  # fmt: skip
    w = _workflow(tiny_cohort, tmp_path, max_epochs=3, lr_scheduler=explode, resume=False)
    losses = []
    w.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach())))
    with pytest.raises(Exception) as err:
        w.run()
    cause = _cause(err.value, FloatingPointError)
    assert cause is not None, repr(err.value)
    msg = str(cause)
    assert "bundle 'image-mae'" in msg and "at epoch 2, iteration 4 (2/2 of the epoch)" in msg, msg
    assert all(math.isfinite(v) for v in losses[:3]) and len(losses) == 3  # stopped at the first bad loss
    assert nonfinite_entries(w.parser.get_parsed_content("network").state_dict())  # weights in memory broken...
    models = tmp_path / "models"
    for name in ("model.pt", "model_final.pt"):  # ...but nothing on disk is
        state = torch.load(models / name, map_location="cpu", weights_only=True)
        assert state["model"] and not nonfinite_entries(state["model"]), name
        assert math.isfinite(state["metrics"]["val_mse"])
    assert sorted(p.name for p in (models / "resume").iterdir()) == ["resume_checkpoint_2.pt"]  # end of epoch 1
    resume = torch.load(models / "resume" / "resume_checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert resume["trainer"]["iteration"] == 2 and not nonfinite_entries(resume["model"])
    assert not nonfinite_entries(resume["optimizer"])


def test_best_checkpoint_refuses_non_finite_weights_and_metrics(tmp_path):
    net = torch.nn.Linear(3, 2)
    saver = BestCheckpoint(str(tmp_path), {"model": net}, metric_name="val_mse", mode="min", final_filename="final.pt")
    evaluator = Engine(lambda e, b: None)
    evaluator.state.metrics = {"val_mse": 0.5}
    saver(evaluator)
    good = (tmp_path / "model.pt").read_bytes()
    evaluator.state.metrics = {"val_mse": float("nan")}  # finite weights, NaN metric: not a new best
    saver(evaluator)
    assert (tmp_path / "model.pt").read_bytes() == good and saver.best == 0.5
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    evaluator.state.metrics = {"val_mse": 0.1}
    with pytest.raises(FloatingPointError, match=r"model.pt: refusing to save non-finite values in \['model.weight'\]"):
        saver(evaluator)
    assert (tmp_path / "model.pt").read_bytes() == good and saver.best == 0.5
    final = torch.load(tmp_path / "final.pt", weights_only=True)["model"]
    assert not nonfinite_entries(final)


def test_gradient_clipping_clips_before_the_step():
    """Through the optimizer step pre-hook: the step uses the clipped gradient (SGD: w' = w - lr * g_clipped)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    clip = GradientClipping(opt, max_norm=0.01)
    clip.attach()
    clip.attach()  # idempotent: one hook
    (net(torch.randn(8, 4)) * 100).sum().backward()
    before = [p.detach().clone() for p in net.parameters()]
    raw = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in net.parameters()]))
    opt.step()
    assert clip.last_norm == pytest.approx(float(raw), rel=1e-6) and clip.last_norm > 1
    steps = [(b - p.detach()) / 0.1 for b, p in zip(before, net.parameters())]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in steps]))
    assert float(norm) == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="grad_clip_norm"):
        GradientClipping(opt, max_norm=0)
    off = GradientClipping(opt, max_norm=None)
    off.attach()
    assert off._hook is None


def test_grad_clip_norm_config_option_clips_bundle_training(tiny_cohort, tmp_path):
    """``grad_clip_norm`` reaches the trainer: after a tiny epoch the gradients left on the network (the last
    iteration's, as used by the step) have global norm at most the limit, while the raw norm was larger."""
    w = _workflow(tiny_cohort, tmp_path, max_epochs=1, grad_clip_norm=1e-3, resume=False)
    w.run()
    clip = [h for h in w.parser.get_parsed_content("train#handlers_every_rank") if isinstance(h, GradientClipping)]
    assert len(clip) == 1 and clip[0].max_norm == 1e-3 and clip[0].last_norm > 1e-3
    grads = [p.grad for p in w.parser.get_parsed_content("network").parameters() if p.grad is not None]
    assert grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(total) <= 1e-3 * (1 + 1e-4)
