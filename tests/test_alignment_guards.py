"""Issue 25: the SigLIP loss (NumPy reference, analytic values, 2 gloo ranks against one process), the embedding-spread
metrics against analytic cases, the collapse-guarded key metric, and the align bundle with ``contrastive=siglip``."""

import copy
import csv
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from kmtr_monai import distributed as kd
from kmtr_monai.losses import ClipLoss, SigLipLoss, build_contrastive_loss, chance_loss, contrastive_keys
from kmtr_monai.metrics import EmbeddingSpread, RetrievalTopK, embedding_spread, retrieval_topk
from kmtr_monai.networks.dual import LogitScale, Projector
from two_ranks import WORLD, run_on_two_ranks


def _numpy_siglip(zk: np.ndarray, zi: np.ndarray, t: float, b: float) -> float:
    """Independent reference: -(1/N) sum_ij log sigmoid(label_ij (t cos_ij + b)), label +1 on the diagonal."""
    zk = zk / np.linalg.norm(zk, axis=1, keepdims=True)
    zi = zi / np.linalg.norm(zi, axis=1, keepdims=True)
    logits = t * zk @ zi.T + b
    labels = 2.0 * np.eye(len(zk)) - 1.0
    return float(np.logaddexp(0.0, -labels * logits).sum() / len(zk))  # -log sigmoid(x) = log(1 + exp(-x))


# ------------------------------------------------------------------------------------------------------ SigLIP
@pytest.mark.parametrize("t, b", [(10.0, -10.0), (1.0, 0.0), (3.0, -2.5)])
def test_siglip_matches_numpy_reference(t, b):
    g = torch.Generator().manual_seed(0)
    zk, zi = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    ref = _numpy_siglip(zk.double().numpy(), zi.double().numpy(), t, b)
    passed = SigLipLoss()(zk, zi, torch.tensor(t), torch.tensor(b))  # t and b from the network
    fixed = SigLipLoss(temperature=1.0 / t, bias=b)(zk, zi)  # or fixed
    assert passed.item() == pytest.approx(ref, rel=1e-5) and fixed.item() == pytest.approx(ref, rel=1e-5)
    assert SigLipLoss()(zi, zk, torch.tensor(t), torch.tensor(b)).item() == pytest.approx(ref, rel=1e-5)  # symmetric


def test_siglip_analytic_value_and_paper_initialisation():
    # z_k = z_i = orthonormal rows, t = 10, b = -10: positives have logit 0 (log 2 each), the N-1 negatives of a row
    # logit -10: L = log 2 + (N-1) log(1 + e^-10)
    n = 6
    z = torch.eye(n, 9)
    expected = math.log(2.0) + (n - 1) * math.log1p(math.exp(-10.0))
    assert SigLipLoss()(z, 3.0 * z).item() == pytest.approx(expected, rel=1e-6)
    scale = LogitScale(temperature=0.1, learnable=True)  # the DualEncoder's t for SigLIP: 10
    assert scale().item() == pytest.approx(10.0, rel=1e-6)


def test_siglip_gradients_match_finite_differences_and_reach_t_and_b():
    g = torch.Generator().manual_seed(1)
    zk = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    zi = torch.randn(5, 4, generator=g, dtype=torch.float64)
    log_t = torch.tensor(math.log(2.0), requires_grad=True)
    bias = torch.tensor(-1.0, requires_grad=True)
    SigLipLoss()(zk, zi, log_t.exp(), bias).backward()
    base, eps = zk.detach().numpy(), 1e-6
    num = np.zeros_like(base)
    for idx in np.ndindex(*base.shape):
        p, m = base.copy(), base.copy()
        p[idx] += eps
        m[idx] -= eps
        num[idx] = (_numpy_siglip(p, zi.numpy(), 2.0, -1.0) - _numpy_siglip(m, zi.numpy(), 2.0, -1.0)) / (2 * eps)
    np.testing.assert_allclose(zk.grad.numpy(), num, atol=1e-4)  # the loss computes in float32
    db = (_numpy_siglip(base, zi.numpy(), 2.0, -1.0 + eps) - _numpy_siglip(base, zi.numpy(), 2.0, -1.0 - eps)) / (2 * eps)
    assert bias.grad.item() == pytest.approx(db, abs=1e-4) and log_t.grad.abs().item() > 0


def test_chance_levels_are_the_losses_of_subject_blind_embeddings():
    n = 8
    same = torch.ones(n, 5)  # every subject maps to one direction: all logits equal
    assert ClipLoss(temperature=0.1)(same, same).item() == pytest.approx(chance_loss("clip", n), rel=1e-6)
    assert chance_loss("clip", n) == pytest.approx(math.log(n))
    # SigLIP: constant logit c = t + b; the best c has sigmoid(c) = 1/N, and the loss there is N * H(1/N)
    t = torch.tensor(1.0)
    best_b = -1.0 - math.log(n - 1)
    at_best = SigLipLoss()(same, same, t, torch.tensor(best_b)).item()
    assert at_best == pytest.approx(chance_loss("siglip", n), rel=1e-6)
    assert chance_loss("siglip", n) == pytest.approx(-math.log(1 / n) - (n - 1) * math.log(1 - 1 / n))
    for off in (-0.3, 0.3):
        assert SigLipLoss()(same, same, t, torch.tensor(best_b + off)).item() > at_best
    with pytest.raises(ValueError):
        chance_loss("softmax", n)


def test_build_contrastive_loss_options():
    clip = build_contrastive_loss("clip", lambda_=0.3, queue_size=4)
    assert isinstance(clip, ClipLoss) and clip.lambda_ == 0.3 and clip.queue_size == 4
    assert contrastive_keys("clip") == ["z_kspace", "z_image", "logit_scale"]
    assert isinstance(build_contrastive_loss("siglip"), SigLipLoss)
    assert contrastive_keys("siglip")[-1] == "logit_bias"
    with pytest.raises(ValueError, match="queue"):
        build_contrastive_loss("siglip", queue_size=8)
    with pytest.raises(ValueError, match="direction weight"):
        build_contrastive_loss("siglip", lambda_=0.7)
    with pytest.raises(ValueError, match="one of"):
        build_contrastive_loss("infonce")
    with pytest.raises(ValueError, match="equal shape"):
        SigLipLoss()(torch.randn(4, 8), torch.randn(5, 8))


# -------------------------------------------------------------------------------------------- 2 gloo processes
class _Pair(nn.Module):
    """Two tiny projectors, SigLIP's t (a LogitScale) and bias b, wrapped by DDP as one module (the loss outside)."""

    def __init__(self) -> None:
        super().__init__()
        self.pk = Projector(6, 8, 4)
        self.pi = Projector(5, 8, 4)
        self.scale = LogitScale(temperature=0.1, learnable=True)
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, xk, xi):
        return self.pk(xk), self.pi(xi), self.scale(), self.bias.reshape(())


def _worker(rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    for sizes in ((4, 4), (5, 3)):
        n = sum(sizes)
        g = torch.Generator().manual_seed(20 + n + sizes[0])
        xk, xi = torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)
        torch.manual_seed(321)
        model = _Pair()
        with torch.no_grad():
            model.bias.fill_(-1.5)  # off the paper's init so that every pair's term matters to the gradients
        ref = copy.deepcopy(model)
        ref_loss = SigLipLoss(gather=False)(*ref(xk, xi))  # single process, the whole global batch
        ref_loss.backward()
        sl = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        ddp = DDP(model)  # kept alive until backward: its reducer's hooks average the gradients
        loss = SigLipLoss()(*ddp(xk[sl], xi[sl]))
        loss.backward()  # DDP averages the gradients over the ranks
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5), (sizes, rank)  # L ~ 30: float32 sums
        for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, atol=5e-5, rtol=1e-4, msg=f"{sizes} rank {rank} {name}")
        assert model.bias.grad.abs().item() > 1e-4 and model.scale.log_logit_scale.grad.abs().item() > 1e-6
        local_only = SigLipLoss(gather=False)(*ref(xk[sl], xi[sl]))  # local negatives only: another loss
        assert abs(local_only.item() - ref_loss.item()) > 1e-3

    # the spread metrics and the guarded key metric gather uneven rank shares (5 + 3) like RetrievalTopK
    g = torch.Generator().manual_seed(9)
    zq, zg = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    idx = torch.arange(0, 5) if rank == 0 else torch.arange(5, 8)
    spread = {s: EmbeddingSpread(s) for s in ("mean_cosine", "effective_rank")}
    guarded = {b: RetrievalTopK(k=1, collapse_cosine_max=b) for b in (0.9, -0.5)}
    for part in (idx[:2], idx[2:]):
        for m in spread.values():
            m.update(zq[part])
        for m in guarded.values():
            m.update((zq[part], zq[part] + 0.5 * zg[part]))
    truth = embedding_spread(zq)
    for s, m in spread.items():
        assert m.compute() == pytest.approx(truth[s], abs=1e-9)
    assert guarded[0.9].compute() == retrieval_topk(zq, zq + 0.5 * zg, ks=(1,))["top1"]
    assert guarded[-0.5].compute() == -math.inf  # every rank refuses, from the whole set's cosine


def test_two_process_siglip_matches_single_process():
    run_on_two_ranks(_worker)


# ------------------------------------------------------------------------------------------ spread and guard
def _simplex(n: int) -> torch.Tensor:
    """n unit vectors summing to zero (the centred standard basis, normalised): pairwise cosine -1/(n-1), rank n-1."""
    e = torch.eye(n, dtype=torch.float64)
    return torch.nn.functional.normalize(e - e.mean(0), dim=1)


def test_embedding_spread_analytic_cases():
    n = 7
    v = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    same = v * torch.arange(1.0, n + 1)[:, None]  # one direction, different lengths
    res = embedding_spread(same)
    assert res["mean_cosine"] == pytest.approx(1.0, abs=1e-12) and res["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    q = torch.linalg.qr(torch.randn(16, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0].T
    res = embedding_spread(q * 5.0)  # orthonormal rows, scaled
    assert res["mean_cosine"] == pytest.approx(0.0, abs=1e-12) and res["effective_rank"] == pytest.approx(n, rel=1e-9)
    res = embedding_spread(_simplex(n))
    assert res["mean_cosine"] == pytest.approx(-1.0 / (n - 1), rel=1e-9)
    assert res["effective_rank"] == pytest.approx(n - 1, rel=1e-9)
    assert math.isnan(embedding_spread(v)["mean_cosine"])  # one row: no pairs
    # the Ignite metric over two updates (a list of per-sample tensors, as decollated output, then a tensor)
    metric = EmbeddingSpread("effective_rank")
    metric.update(list(q[:3]))
    metric.update(q[3:])
    assert metric.compute() == pytest.approx(n, rel=1e-6)
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.compute()
    with pytest.raises(ValueError, match="statistic"):
        EmbeddingSpread("variance")


def _collapsed_but_retrievable(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """z_kspace = one shared direction plus a 1e-3 subject part: cosine ~ 1, yet retrieval is perfect."""
    z_image = torch.eye(n, n + 1)
    z_kspace = torch.zeros(n, n + 1)
    z_kspace[:, n] = 1.0  # orthogonal to every image embedding
    return z_kspace + 1e-3 * z_image, z_image


def test_guarded_top1_refuses_a_collapsed_epoch():
    zk, zi = _collapsed_but_retrievable()
    assert embedding_spread(zk)["mean_cosine"] > 0.999
    plain, guarded = RetrievalTopK(k=1), RetrievalTopK(k=1, collapse_cosine_max=0.9)
    for m in (plain, guarded):
        m.update((zk, zi))
    assert plain.compute() == 1.0 and guarded.compute() == -math.inf and guarded.last_cosine > 0.999
    spread = RetrievalTopK(k=(1, 5), collapse_cosine_max=0.9)  # spread embeddings pass unchanged
    spread.update((zi, zi))
    assert spread.compute() == {"top1": 1.0, "top5": 1.0}
    with pytest.raises(ValueError, match="collapse_cosine_max"):
        RetrievalTopK(collapse_cosine_max=1.5)


def test_best_checkpoint_never_picks_a_collapsed_epoch(tmp_path):
    """Epoch 1: spread embeddings, top-1 0.5; epoch 2: collapsed, top-1 1.0. Unguarded, epoch 2 becomes the best
    checkpoint; guarded, the best stays epoch 1."""
    from ignite.engine import Engine, Events

    from kmtr_monai.engines import BestCheckpoint

    zk2, zi2 = _collapsed_but_retrievable()
    zi1 = torch.eye(6, 7)
    zk1 = zi1[[0, 1, 2, 4, 5, 3]]  # orthonormal, half of them retrieve their own image
    epochs = {1: (zk1, zi1), 2: (zk2, zi2)}

    def best_epoch(bound):
        engine = Engine(lambda e, batch: epochs[e.state.epoch])
        RetrievalTopK(k=1, collapse_cosine_max=bound).attach(engine, "val_top1")
        net = nn.Linear(2, 2)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: net.weight.data.fill_(float(e.state.epoch)))
        folder = tmp_path / str(bound)
        BestCheckpoint(str(folder), {"model": net}, metric_name="val_top1", mode="max").attach(engine)
        engine.run([0], max_epochs=2)
        saved = torch.load(folder / "model.pt", weights_only=True)
        return int(saved["model"]["weight"][0, 0]), saved["metrics"]["val_top1"]

    assert best_epoch(None) == (2, 1.0)
    assert best_epoch(0.9) == (1, 0.5)


# --------------------------------------------------------------------------------------------- align bundle
def _align_workflow(tiny_cohort, out, **overrides):
    from monai.bundle import ConfigWorkflow

    from kmtr_monai.bundle import config_files

    bundles = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")
    args = {"bundle_root": os.path.join(bundles, "align"), "dataset_dir": str(tiny_cohort),
            "ckpt_dir": str(out / "models"), "output_dir": str(out / "eval"), "max_epochs": 1,
            # no Stage I checkpoints needed: randomly initialised encoders (as evaluate.json builds them)
            "network_def#image_encoder": "$@image_mae.drop_decoder()",
            "network_def#kspace_encoder": "$@kspace_mae.drop_decoder()", **overrides}  # fmt: skip
    return ConfigWorkflow(config_file=config_files("align", "train", "tiny"), workflow_type="train",
                          logging_file=os.path.join(bundles, "common", "logging.conf"), **args)  # fmt: skip


def test_align_default_config_is_unchanged(tiny_cohort, tmp_path):
    from kmtr_monai.networks.dual import DualEncoder

    workflow = _align_workflow(tiny_cohort, tmp_path)
    parse = workflow.parser.get_parsed_content
    net, loss = parse("network_def"), parse("loss")
    assert net.logit_bias is None and "logit_bias" not in dict(net.named_parameters())
    assert net.logit_scale.temperature.item() == pytest.approx(0.2)  # CLIP's start since align 0.9.0 (was 0.07)
    assert net.freeze_image and not net.freeze_kspace  # the image encoder is locked (LiT) since align 0.9.0
    reference = DualEncoder(parse("image_mae").drop_decoder(), parse("kspace_mae").drop_decoder(), pooling="view_time")
    assert net.state_dict().keys() == reference.state_dict().keys()  # 0.4.0 checkpoints load
    term = loss.terms[0][1]
    assert isinstance(term.fn, ClipLoss) and term.keys == ("z_kspace", "z_image", "logit_scale")
    assert term.fn.lambda_ == 0.5 and term.fn.queue_size == 0
    assert parse("validate#key_metric")["val_top1"].collapse_cosine_max is None


def test_align_bundle_trains_with_siglip_and_logs_the_spread(tiny_cohort, tmp_path):
    """One tiny epoch (2 steps) with contrastive=siglip; the guard at a bound no embedding meets (-1) refuses every
    epoch, so model_best.pt is never written while model.pt (the last epoch) is."""
    workflow = _align_workflow(tiny_cohort, tmp_path, contrastive="siglip", collapse_cosine_max=-1.0)
    workflow.initialize()
    net = workflow.parser.get_parsed_content("network")
    term = workflow.parser.get_parsed_content("loss").terms[0][1]
    assert isinstance(term.fn, SigLipLoss) and term.keys[-1] == "logit_bias"
    assert net.logit_bias.item() == -10.0 and net.logit_scale().item() == pytest.approx(10.0, rel=1e-6)
    workflow.run()
    assert net.logit_bias.item() != -10.0  # trained
    workflow.finalize()
    with open(tmp_path / "eval" / "history.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    assert math.isfinite(float(row["train_loss"]))
    for key in ("val_kspace_cosine", "val_image_cosine"):
        assert -1.0 <= float(row[key]) <= 1.0
    for key in ("val_kspace_erank", "val_image_erank"):
        assert 1.0 <= float(row[key]) <= 8.0  # 8 validation subjects
    assert float(row["val_top1"]) == -math.inf and 0.0 <= float(row["val_top5"]) <= 1.0
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "models" / "model_best.pt").exists()
    saved = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "logit_bias" in saved["model"]
