"""The learning-rate schedule every bundle shares (``bundles/common/train.json``): a linear warm-up over
``warmup_steps`` iterations, then a cosine decay to 0 at the last iteration, stepped per iteration."""

import math
from pathlib import Path

import pytest
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from kmtr_monai.bundle import config_files

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


@pytest.mark.parametrize("warmup", [0, 3])
def test_warmup_then_cosine_per_iteration(tiny_cohort, tmp_path, warmup):
    """8 training subjects at batch 4 = 2 iterations per epoch, 3 epochs = 6 iterations; the learning rate each
    iteration uses is compared with the closed form of a linear ramp from 0 followed by a half cosine."""
    bundle = BUNDLES / "image-mae"
    w = ConfigWorkflow(
        config_file=config_files("image-mae", "train", "tiny"), meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train", bundle_root=str(bundle),
        dataset_dir=str(tiny_cohort), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
        max_epochs=3, warmup_steps=warmup, resume=False, val_interval=3,
    )  # fmt: skip
    w.initialize()
    trainer, base = w.trainer, w.parser.get_parsed_content("learning_rate")
    used = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: used.append(e.optimizer.param_groups[0]["lr"]))
    w.run()
    total = 6
    assert trainer.state.iteration == total
    expected = [base * (k / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))))
                for k in range(total)]  # fmt: skip
    assert used == pytest.approx(expected, rel=1e-9, abs=1e-12)
