"""Run by ``torchrun`` from ``test_bundles.py``: the align bundle's own configs (train + multi_gpu_train), 2 ranks.

1. One step on a fixed global batch split over the ranks, against a single-process step of an unwrapped copy on the
   whole batch: loss and every parameter gradient (the learnable temperature included). The network is in eval
   mode for this step so batch norm uses running statistics (on CPU/gloo its batch statistics are per rank).
2. The same with a queue of negatives (``queue_size``): two steps, the second scored against the first's queue.
3. Train, then save every rank's parameters for the test to compare.
Usage: python -m torch.distributed.run --nproc_per_node=2 tests/ddp_align_worker.py OUT COHORT IMAGE_CKPT KSPACE_CKPT
"""

import copy
import json
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow
from monai.data import list_data_collate

from kmtr_monai.bundle import config_files
from kmtr_monai.engines import OutputLoss
from kmtr_monai.losses import ClipLoss


def main(out: str, cohort: str, image_ckpt: str, kspace_ckpt: str) -> None:
    torch.set_num_threads(1)
    out = Path(out)
    workflow = ConfigWorkflow(
        config_file=config_files("align", "train", "tiny", multi_gpu=True), workflow_type="train",
        dataset_dir=cohort, ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), max_epochs=3,
        image_mae_ckpt=image_ckpt, kspace_mae_ckpt=kspace_ckpt,
    )  # fmt: skip
    workflow.initialize()
    parse = workflow.parser.get_parsed_content
    rank, net, loss_fn, prepare = parse("dist").rank, parse("network"), parse("loss"), parse("prepare_batch")
    items = [parse("validate#dataset")[i] for i in range(4)]

    def step(model, batch_items, loss):
        first, _, rest, _ = prepare(list_data_collate(batch_items), torch.device("cpu"))
        value = loss(model(first, *rest))
        value.backward()
        return value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = copy.deepcopy(net.module).eval()
    clip_keys = loss_fn.terms[0][1].keys  # WeightedSum: the CLIP term first (token-level alignment off: weight 0)
    ref_loss, ref_grads = step(reference, items, OutputLoss(ClipLoss(gather=False), clip_keys))
    net.eval()
    loss, grads = step(net, items[2 * rank: 2 * rank + 2], loss_fn)
    report = {"loss": loss, "ref_loss": ref_loss, "n_grads": len(grads), "n_ref_grads": len(ref_grads),
              "max_grad_diff": max((grads["module." + n] - g).abs().max().item() for n, g in ref_grads.items()),
              "temperature_grad": ref_grads["logit_scale.log_logit_scale"].item()}  # fmt: skip
    queued_ref, queued = (OutputLoss(ClipLoss(gather=g, queue_size=8), clip_keys) for g in (False, True))
    for _ in range(2):
        reference.zero_grad(set_to_none=True), net.zero_grad(set_to_none=True)
        q_ref_loss, q_ref_grads = step(reference, items, queued_ref)
        q_loss, q_grads = step(net, items[2 * rank: 2 * rank + 2], queued)
    q_diff = max((q_grads["module." + n] - g).abs().max().item() for n, g in q_ref_grads.items())
    report.update(queue_loss=q_loss, queue_ref_loss=q_ref_loss, queue_length=len(queued.fn.queue_image),
                  queue_max_grad_diff=q_diff)  # fmt: skip
    net.zero_grad(set_to_none=True)
    temperature_before = net.module.logit_scale.temperature.item()
    workflow.run()
    report["temperature_moved"] = abs(net.module.logit_scale.temperature.item() - temperature_before)
    torch.save(net.module.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    workflow.finalize()


if __name__ == "__main__":
    main(*sys.argv[1:])
