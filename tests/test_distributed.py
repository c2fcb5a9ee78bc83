"""Distributed CLIP loss and metric gathering on 2 CPU processes (gloo) against single-process truth."""

import copy

import pytest
import torch
import torch.nn as nn

from kmtr_monai import distributed as kd
from kmtr_monai.losses import ClipLoss
from kmtr_monai.metrics import LinearProbeR2, RetrievalTopK, linear_probe_r2_cv, retrieval_topk
from kmtr_monai.networks.dual import LogitScale, Projector
from two_ranks import WORLD, run_on_two_ranks


class _Pair(nn.Module):
    """Two tiny projectors + a learnable temperature, wrapped by DDP as one module (the loss outside, as in align)."""

    def __init__(self) -> None:
        super().__init__()
        self.pk = Projector(6, 8, 4)
        self.pi = Projector(5, 8, 4)
        self.scale = LogitScale(temperature=0.2, learnable=True)

    def forward(self, xk, xi):
        return self.pk(xk), self.pi(xi), self.scale()


def _global_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)


def _worker(rank: int) -> None:
    r, w, lr, dev = kd.init_distributed()  # already initialised by run_on_two_ranks: the same values
    assert (r, w, lr, dev.type) == (rank, WORLD, rank, "cpu")
    assert kd.init_distributed() == (r, w, lr, dev)  # idempotent
    assert kd.get_rank() == rank and kd.get_world_size() == WORLD and kd.is_main_process() == (rank == 0)
    from torch.nn.parallel import DistributedDataParallel as DDP

    for sizes in ((4, 4), (5, 3)):
        n = sum(sizes)
        xk, xi = _global_batch(n, seed=10 + n + sizes[0])
        torch.manual_seed(123)
        model = _Pair()
        ref = copy.deepcopy(model)
        ref_loss = ClipLoss(lambda_=0.3, gather=False)(*ref(xk, xi))  # plain single-process loss, global batch
        ref_loss.backward()

        start = sum(sizes[:rank])
        sl = slice(start, start + sizes[rank])
        ddp = DDP(model)
        loss = ClipLoss(lambda_=0.3)(*ddp(xk[sl], xi[sl]))
        loss.backward()  # DDP averages gradients over ranks
        assert abs(loss.item() - ref_loss.item()) < 1e-5, (sizes, rank, loss.item(), ref_loss.item())
        for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=0, msg=f"{sizes} rank {rank} {name}")

        # without gathering, each rank only sees its local negatives: a different (wrong) loss
        local_only = ClipLoss(lambda_=0.3, gather=False)(*ref(xk[sl], xi[sl]))
        assert abs(local_only.item() - ref_loss.item()) > 1e-3

    # metric accumulation with uneven per-rank counts (5 on rank 0, 3 on rank 1, fed in two updates)
    g = torch.Generator().manual_seed(7)
    zq, zg = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    zg = zq + 0.9 * zg
    y = zq[:, :2] @ torch.tensor([[1.0, 0.5], [-2.0, 1.0]]) + 0.1 * torch.randn(8, 2, generator=g)
    idx = torch.arange(0, 5) if rank == 0 else torch.arange(5, 8)
    assert torch.equal(kd.all_gather_uneven(zq[idx]), zq)
    gathered, offset = kd.all_gather_with_grad(zq[idx])
    assert torch.equal(gathered, zq) and offset == (0 if rank == 0 else 5)
    ret = RetrievalTopK(k=(1, 3))
    probe = LinearProbeR2(n_splits=2)
    for part in (idx[:2], idx[2:]):
        ret.update((zq[part], zg[part]))
        probe.update((zq[part], y[part]))
    assert ret.compute() == retrieval_topk(zq, zg, ks=(1, 3))
    assert probe.compute() == pytest.approx(linear_probe_r2_cv(zq, y, n_splits=2)["mean_r2"], abs=1e-9)


def test_two_process_clip_loss_and_metrics_match_single_process():
    run_on_two_ranks(_worker)


def test_rank_helpers_read_environment(monkeypatch):
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (kd.get_rank(), kd.get_world_size(), kd.get_local_rank(), kd.is_main_process()) == (3, 4, 1, False)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK"):
        kd.get_rank()


def test_rank_helpers_defaults_and_single_process_init(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (kd.get_rank(), kd.get_world_size(), kd.is_main_process()) == (0, 1, True)
    rank, world, local, dev = kd.init_distributed()
    assert (rank, world, local) == (0, 1, 0) and not torch.distributed.is_initialized()
    x = torch.randn(3, 2)
    assert kd.all_gather_with_grad(x) == (x, 0) and kd.all_gather_uneven(x) is x


def test_init_distributed_reports_missing_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        kd.init_distributed()
