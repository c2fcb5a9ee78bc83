"""ClipLoss against analytic values and a NumPy reference (single process)."""

import math

import numpy as np
import pytest
import torch

from kmtr_monai.losses import ClipLoss
from kmtr_monai.networks.dual import LogitScale


def _numpy_clip(zk: np.ndarray, zi: np.ndarray, tau: float, lam: float) -> float:
    """Independent reference: explicit log-softmax along rows and columns."""
    zk = zk / np.linalg.norm(zk, axis=1, keepdims=True)
    zi = zi / np.linalg.norm(zi, axis=1, keepdims=True)
    logits = zk @ zi.T / tau

    def ce_rows(m):
        m = m - m.max(1, keepdims=True)
        logp = m - np.log(np.exp(m).sum(1, keepdims=True))
        return -np.mean(np.diag(logp))

    return lam * ce_rows(logits) + (1 - lam) * ce_rows(logits.T)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_matches_numpy_reference(lam):
    g = torch.Generator().manual_seed(0)
    zk, zi = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    loss = ClipLoss(temperature=0.2, lambda_=lam)(zk, zi)
    ref = _numpy_clip(zk.double().numpy(), zi.double().numpy(), 0.2, lam)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_symmetric_when_lambda_half():
    g = torch.Generator().manual_seed(1)
    zk, zi = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    loss = ClipLoss(temperature=0.1, lambda_=0.5)
    assert loss(zk, zi).item() == pytest.approx(loss(zi, zk).item(), rel=1e-6)
    # not symmetric for lambda != 0.5 on generic data (the test above can fail)
    lopsided = ClipLoss(temperature=0.1, lambda_=0.9)
    assert abs(lopsided(zk, zi).item() - lopsided(zi, zk).item()) > 1e-4


def test_mutually_orthogonal_embeddings_give_log_b():
    # z_k rows e_0..e_{B-1}, z_i rows e_B..e_{2B-1}: every logit is 0 -> each CE = log(B) exactly
    b = 6
    eye = torch.eye(2 * b)
    for tau in (1.0, 0.07):
        loss = ClipLoss(temperature=tau)(eye[:b] * 3.0, eye[b:])
        assert loss.item() == pytest.approx(math.log(b), rel=1e-6)


def test_one_hot_aligned_exact_value():
    # z_k = z_i = one-hot rows: logits = I / tau, each row CE = log(1 + (B-1) exp(-1/tau))
    b, tau = 5, 1.0
    z = torch.eye(b, 7)
    expected = math.log(1 + (b - 1) * math.exp(-1 / tau))
    assert ClipLoss(temperature=tau)(z, z).item() == pytest.approx(expected, rel=1e-6)


def test_random_high_dim_is_near_log_b():
    # random directions in D=4096 have |cos| ~ 1/64, so with tau=1 the loss is log(B) to O(1e-2)
    g = torch.Generator().manual_seed(2)
    b = 32
    zk, zi = torch.randn(b, 4096, generator=g), torch.randn(b, 4096, generator=g)
    assert ClipLoss(temperature=1.0)(zk, zi).item() == pytest.approx(math.log(b), abs=0.03)


def test_perfect_alignment_small_tau_is_near_zero():
    g = torch.Generator().manual_seed(3)
    z = torch.linalg.qr(torch.randn(64, 16, generator=g))[0].T  # 16 orthonormal rows
    assert ClipLoss(temperature=0.01)(z, 2.0 * z).item() < 1e-6


def test_learnable_temperature_gets_gradient_and_clamps():
    scale = LogitScale(temperature=0.5, learnable=True)
    assert isinstance(scale.log_logit_scale, torch.nn.Parameter)
    assert scale.temperature.item() == pytest.approx(0.5)
    g = torch.Generator().manual_seed(4)
    zk = torch.randn(8, 4, generator=g)
    zi = zk + 0.1 * torch.randn(8, 4, generator=g)
    ClipLoss()(zk, zi, scale()).backward()
    grad = scale.log_logit_scale.grad
    assert grad is not None and grad.abs().item() > 0
    # well-aligned pairs: sharpening (larger 1/tau) lowers the loss, so the gradient on log(1/tau) is negative
    assert grad.item() < 0
    with torch.no_grad():
        scale.log_logit_scale.fill_(50.0)
    assert scale.temperature.item() == pytest.approx(0.01, rel=1e-5)
    assert not list(LogitScale(temperature=0.5).parameters())
    assert not list(ClipLoss(temperature=0.5).parameters())  # the loss itself has nothing to train
    # a passed scale equals the fixed temperature it encodes
    assert ClipLoss()(zk, zi, LogitScale(0.5)()).item() == pytest.approx(ClipLoss(temperature=0.5)(zk, zi).item())


def test_input_gradients_match_finite_differences():
    zk = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    zi = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    # ClipLoss computes in float32; check gradient direction against a float64 reference implementation
    loss = ClipLoss(temperature=0.3, lambda_=0.7)(zk, zi)
    loss.backward()
    eps = 1e-6
    num = np.zeros((4, 3))
    base = zk.detach().numpy().copy()
    for idx in np.ndindex(4, 3):
        p, m = base.copy(), base.copy()
        p[idx] += eps
        m[idx] -= eps
        num[idx] = (_numpy_clip(p, zi.detach().numpy(), 0.3, 0.7) - _numpy_clip(m, zi.detach().numpy(), 0.3, 0.7)) / (
            2 * eps
        )
    np.testing.assert_allclose(zk.grad.numpy(), num, atol=1e-4)


def test_float32_under_autocast():
    g = torch.Generator().manual_seed(5)
    zk, zi = torch.randn(8, 16, generator=g).bfloat16(), torch.randn(8, 16, generator=g).bfloat16()
    ref = ClipLoss(temperature=0.01)(zk.float(), zi.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ClipLoss(temperature=0.01)(zk, zi)
    assert out.dtype == torch.float32
    # same value as float32 on the same inputs; a bf16 matmul inside autocast would be off by ~1e-2
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def _numpy_clip_with_negatives(zk, zi, qk, qi, tau, lam):
    """Reference with extra negative columns: row b of k->i against [zi; qi], row b of i->k against [zk; qk]."""
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    zk, zi = unit(zk), unit(zi)

    def ce(queries, columns):
        m = queries @ columns.T / tau
        m = m - m.max(1, keepdims=True)
        logp = m - np.log(np.exp(m).sum(1, keepdims=True))
        return -np.mean(np.diag(logp[:, : len(queries)]))

    return lam * ce(zk, np.concatenate([zi, unit(qi)])) + (1 - lam) * ce(zi, np.concatenate([zk, unit(qk)]))


def test_queue_adds_the_previous_batches_as_negatives():
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)) for _ in range(4)]
    loss = ClipLoss(temperature=0.3, lambda_=0.7, queue_size=6)
    as_np = lambda t: t.double().numpy()  # noqa: E731
    # step 0: empty queue, the plain loss
    assert loss(*batches[0]).item() == pytest.approx(_numpy_clip(*map(as_np, batches[0]), 0.3, 0.7), rel=1e-5)
    # step 1: negatives = batch 0; step 2: batch 1 then the first 2 rows of batch 0 (6 kept, newest first)
    for step, queued in ((1, [0]), (2, [1, 0])):
        qk = np.concatenate([as_np(batches[i][0]) for i in queued])[:6]
        qi = np.concatenate([as_np(batches[i][1]) for i in queued])[:6]
        ref = _numpy_clip_with_negatives(*map(as_np, batches[step]), qk, qi, 0.3, 0.7)
        assert loss(*batches[step]).item() == pytest.approx(ref, rel=1e-5)
    assert loss.queue_image.shape == (6, 8)
    # evaluation (no_grad) reads the queue but does not push to it
    before = loss.queue_image.clone()
    with torch.no_grad():
        loss(*batches[3])
    assert torch.equal(loss.queue_image, before)
    # the queue carries no gradient: only the current batch's embeddings get one. MetaTensors (what the networks
    # return for MetaTensor inputs), with batched metadata, are accepted
    from monai.data import MetaTensor

    zk, zi = (MetaTensor(t.clone(), meta={"eid": list(range(4))}).requires_grad_() for t in batches[3])
    zk.is_batch = zi.is_batch = True
    loss(zk, zi).backward()
    assert zk.grad.abs().sum() > 0 and not loss.queue_kspace.requires_grad


def test_queue_size_zero_is_the_plain_loss():
    g = torch.Generator().manual_seed(4)
    zk, zi = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    plain, unqueued = ClipLoss(), ClipLoss(queue_size=0)
    for _ in range(2):
        assert unqueued(zk, zi).item() == pytest.approx(plain(zk, zi).item(), rel=1e-7)
    assert unqueued.queue_image is None


@pytest.mark.parametrize(
    "kwargs", [dict(lambda_=1.5), dict(temperature=0.0), dict(temperature=2.0)]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ClipLoss(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(temperature=2.0), dict(min_temperature=-1.0), dict(temperature=0.001)])
def test_bad_logit_scale_arguments(kwargs):
    with pytest.raises(ValueError):
        LogitScale(**kwargs)


def test_bad_inputs():
    loss = ClipLoss()
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.randn(4, 8, 1), torch.randn(4, 8, 1))
    with pytest.raises(TypeError):
        loss(np.zeros((4, 8)), torch.randn(4, 8))


def test_cell_alignment_loss_values_and_gradient_only_to_prediction():
    from kmtr_monai.losses import CellAlignmentLoss, WeightedSum

    target = torch.randn(2, 6, 5, requires_grad=True)
    loss = CellAlignmentLoss()
    assert loss(target.detach().clone() * 3.0, target).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert loss(-target.detach().clone(), target).item() == pytest.approx(2.0, abs=1e-6)  # opposite
    pred = torch.randn(2, 6, 5, requires_grad=True)
    expected = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
    out = loss(pred, target)
    torch.testing.assert_close(out, expected)
    out.backward()
    assert pred.grad is not None and target.grad is None
    with pytest.raises(ValueError, match="equal"):
        loss(pred, target[:, :3])
    calls = []
    total = WeightedSum([lambda p, t: torch.tensor(2.0), lambda p, t: calls.append(1)], [0.5, 0.0])
    assert total({}, None).item() == 1.0 and calls == []  # a zero-weight term is not called


def test_dual_encoder_cell_alignment_on_tiny_maes():
    from kmtr_monai.losses import CellAlignmentLoss
    from kmtr_monai.networks.dual import DualEncoder
    from kmtr_monai.networks.mae import build_image_mae, build_kspace_mae

    torch.manual_seed(0)
    image_mae, kspace_mae = build_image_mae("tiny"), build_kspace_mae("tiny", tokenizer="patch")
    model = DualEncoder(image_mae.drop_decoder(), kspace_mae.drop_decoder(), embed_dim=8, pooling="view_time",
                        cell_align=True)  # fmt: skip
    _, s, t, h, w = kspace_mae.shape
    image = torch.rand(2, s, t, h, w)
    kspace, mask = torch.randn(2, 2, s, t, h, w), torch.rand(2, s, t, h) > 0.5
    out = model(image, kspace, mask)
    cells = kspace_mae.view_time_cells[0] * kspace_mae.view_time_cells[1]
    assert out["cells_kspace"].shape == out["cells_image"].shape == (2, cells, image_mae.dim)
    CellAlignmentLoss()(out["cells_kspace"], out["cells_image"]).backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())  # the image side is the target
    assert model.cell_predictor.weight.grad is not None
    assert any(p.grad is not None for p in model.kspace_encoder.parameters())
    with pytest.raises(ValueError, match="cell_align"):
        DualEncoder(build_image_mae("tiny").drop_decoder(), build_kspace_mae("tiny", tokenizer="patch").drop_decoder(),
                    pooling="mean", cell_align=True)  # fmt: skip
