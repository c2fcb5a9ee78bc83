"""Stage III networks and losses: task model, init switch, heads, dense decoders, masked Dice/CE, Huber, pos_weight."""

import math
import warnings

import pytest
import torch

from kmtr_monai.transforms import PackKspaced
from monai.losses import DiceCELoss
from torch import nn

from kmtr_monai.losses_stage3 import (
    MagnitudeMSELoss,
    MaskedDiceCELoss,
    StandardisedHuberLoss,
    pos_weight_from_prevalence,
)
from kmtr_monai.networks import (
    DiseaseClassifier,
    ImageQueryDecoder,
    KspaceMAE,
    TaskModel,
    PhenotypeRegressor,
    TemporalMLPHead,
    TokenGridUNETRDecoder,
    build_kspace_encoder,
    evenly_spaced_layers,
    pool_tokens,
)

torch.set_num_threads(1)  # the CI box has 2 shared cores

S, N_LAX, T, HW, DIM = 5, 3, 4, 32, 64


def tiny_mae(reference="view_sharing", dim=DIM, seed=0):
    torch.manual_seed(seed)
    return KspaceMAE(S, N_LAX, T, HW, HW, dim=dim, depth=2, heads=4, dec_dim=64, dec_depth=1, dec_heads=4,
                     tokenizer="patch", patch=(2, 8, 8), reference=reference)  # fmt: skip


def make_batch(b, seed=0):
    """Smooth images in [0, 1], centred ortho k-space with a random phase per view, ky-t mask (~30% + centre),
    undersampled k-space (B, 2, S, T, H, W), labels 0..5 from intensity bands."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(HW)
    lowpass = torch.exp(-(f[:, None] ** 2 + f[None] ** 2) / (2 * 0.08**2))
    img = torch.fft.ifft2(torch.fft.fft2(torch.randn(b, S, T, HW, HW, generator=g)) * lowpass).real
    lo, hi = img.amin((1, 2, 3, 4), keepdim=True), img.amax((1, 2, 3, 4), keepdim=True)
    img = (img - lo) / (hi - lo)
    x = img * torch.exp(2j * math.pi * torch.rand(b, S, 1, 1, 1, generator=g))
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    mask = (torch.rand(b, S, T, HW, generator=g) < 0.3).float()
    mask[..., HW // 2 - 2 : HW // 2 + 2] = 1.0
    ks = torch.stack([k.real, k.imag], 1).float() * mask[:, None, ..., None]
    seg = torch.bucketize(img, torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7]))
    return ks, mask, img, seg


def heads_for(enc):
    grid, patch = enc.tokenizer.grid, enc.tokenizer.patch
    s, t = enc.view_time_cells
    return {
        "regress": PhenotypeRegressor(TemporalMLPHead(DIM, s, t, 12), torch.arange(12.0), torch.ones(12) * 2),
        "classify": DiseaseClassifier(TemporalMLPHead(DIM, s, t, 3)),
        "seg_unetr": TokenGridUNETRDecoder(DIM, grid, patch, 6, feature_size=8, encoder_depth=2),
        "seg_query": ImageQueryDecoder(DIM, grid, patch, 6, n_lax=N_LAX, feature_size=8),
        "recon_unetr": TokenGridUNETRDecoder(DIM, grid, patch, 1, feature_size=8),
        "recon_query": ImageQueryDecoder(DIM, grid, patch, 1, n_lax=N_LAX, feature_size=8),
    }


EXPECTED = {"regress": (2, 12), "classify": (2, 3), "seg_unetr": (2, 6, S, T, HW, HW),
            "seg_query": (2, 6, S, T, HW, HW), "recon_unetr": (2, 1, S, T, HW, HW),
            "recon_query": (2, 1, S, T, HW, HW)}  # fmt: skip


# ------------------------------------------------------------------------------------ shapes and no leakage
@pytest.mark.parametrize("reference", ["view_sharing", "none"])
def test_task_models_shapes_and_no_leakage(reference):
    enc = build_kspace_encoder(tiny_mae(reference), "scratch")
    ks, mask, _, _ = make_batch(2)
    g = torch.Generator().manual_seed(7)
    unsampled = (mask == 0)[:, None, ..., None].expand_as(ks)
    ks_other = torch.where(unsampled, 100 * torch.randn(ks.shape, generator=g), ks)  # only unsampled values change
    ks_sampled = ks + (~unsampled) * 0.1 * torch.randn(ks.shape, generator=g)  # sampled values change
    for name, head in heads_for(enc).items():
        model = TaskModel(enc, head).eval()
        with torch.no_grad():
            out, out_other, out_sampled = model(ks, mask), model(ks_other, mask), model(ks_sampled, mask)
        assert tuple(out.shape) == EXPECTED[name], name
        torch.testing.assert_close(out_other, out, rtol=0, atol=1e-6, msg=f"{name}: unsampled k-space leaked")
        assert (out_sampled - out).abs().max() > 1e-4, f"{name}: output ignores the sampled k-space"


def test_unetr_uses_requested_hidden_states():
    enc = build_kspace_encoder(tiny_mae(), "scratch")
    grid, patch = enc.tokenizer.grid, enc.tokenizer.patch
    assert evenly_spaced_layers(12, 3) == (2, 5, 8) and evenly_spaced_layers(4, 2) == (0, 2)
    dec = TokenGridUNETRDecoder(DIM, grid, patch, 6, feature_size=8, hidden_layers=[1, 0])
    assert dec.hidden_layers == (0, 1)
    ks, mask, _, _ = make_batch(1)
    tokens, _, valid, hidden = enc.encode(ks, mask, return_valid=True, return_hidden=True)
    assert len(hidden) == 2 and all(h.shape == tokens.shape for h in hidden)
    base = dec(tokens, valid, hidden)
    # only hidden[0] feeds the highest-resolution skip: perturbing it changes the output; an unused entry does not
    assert (dec(tokens, valid, (hidden[0] + 1.0, hidden[1])) - base).abs().max() > 1e-4
    torch.testing.assert_close(dec(tokens, valid, (*hidden, hidden[0] * 0)), base)
    with pytest.raises(ValueError, match="return_hidden"):
        dec(tokens, valid)
    with pytest.raises(ValueError, match="hidden_layers"):
        TokenGridUNETRDecoder(DIM, grid, patch, 6, hidden_layers=[0])
    with pytest.raises(ValueError, match="power of 2"):
        TokenGridUNETRDecoder(DIM, grid, (2, 6, 6), 6)
    with pytest.raises(ValueError, match=r"tokens: expected \(B, 1\+160, 64\)"):
        dec(tokens[:, :-1], valid, hidden)


def test_trace_matches_eager_on_new_input():
    """TorchScript tracing (ckpt_export --use_trace) of a task model generalises to another subject and mask."""
    enc = build_kspace_encoder(tiny_mae(), "scratch")
    head = heads_for(enc)["regress"]
    model = TaskModel(enc, head).eval()
    ks, mask, _, _ = make_batch(2, seed=0)
    ks2, mask2, _, _ = make_batch(2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (ks, mask))
    with torch.no_grad():
        torch.testing.assert_close(traced(ks2, mask2), model(ks2, mask2))


def test_packed_input_and_grid_check():
    enc = build_kspace_encoder(tiny_mae(), "scratch")
    model = TaskModel(enc, heads_for(enc)["seg_query"]).eval()
    ks, mask, _, _ = make_batch(2)
    packed = torch.cat([ks, mask[:, None, ..., None].expand_as(ks[:, :1])], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(packed), model(ks, mask))
        packed_by_transform = PackKspaced()({"kspace": ks[0], "mask": mask[0]})["image"]
        torch.testing.assert_close(model(packed_by_transform[None]), model(ks[:1], mask[:1]))
    with pytest.raises(ValueError, match=r"expected \(B, 3, S, T, H, W\)"):
        model(ks)
    with pytest.raises(ValueError, match=r"\(view, time\) cells \(S, T'\) \(5, 4\), but the encoder's is \(5, 2\)"):
        TaskModel(enc, PhenotypeRegressor(TemporalMLPHead(DIM, 5, 4, 2), [0.0, 0.0], [1.0, 1.0]))
    with pytest.raises(ValueError, match=r"grid \(S, T', H', W'\) \(5, 2, 2, 2\)"):
        TaskModel(enc, ImageQueryDecoder(DIM, (5, 2, 2, 2), (2, 16, 16), 6, n_lax=N_LAX))


# ------------------------------------------------------------------------------------------------ init switch
def test_init_switch_loads_the_right_weights(tmp_path):
    name = "encoder.blocks.0.attn.qkv.weight"
    stage1 = tiny_mae(seed=1)
    torch.save({"model": stage1.state_dict(), "optimizer": {}}, tmp_path / "kspace_mae.pt")
    aligned = tiny_mae(seed=2).drop_decoder()
    torch.save({"model": {"x": torch.zeros(1)}, "kspace_encoder": aligned.state_dict()}, tmp_path / "align.pt")

    enc = build_kspace_encoder(tiny_mae(seed=3), "aligned", align_ckpt=tmp_path / "align.pt")
    assert torch.equal(enc.state_dict()[name], aligned.state_dict()[name]) and enc.decoder_dropped
    enc = build_kspace_encoder(tiny_mae(seed=3), "stage1", stage1_ckpt=tmp_path / "kspace_mae.pt")
    assert torch.equal(enc.state_dict()[name], stage1.state_dict()[name]) and not hasattr(enc, "decoder")
    scratch = tiny_mae(seed=3)
    ref = scratch.state_dict()[name].clone()
    enc = build_kspace_encoder(scratch, "scratch", align_ckpt=tmp_path / "align.pt")
    assert torch.equal(enc.state_dict()[name], ref) and not torch.equal(ref, aligned.state_dict()[name])

    # wrong bundle: a kspace-mae checkpoint given as the align checkpoint, and vice versa
    with pytest.raises(ValueError, match=r"'kspace_encoder' not found; available: \['model', 'optimizer'\]"):
        build_kspace_encoder(tiny_mae(), "aligned", align_ckpt=tmp_path / "kspace_mae.pt")
    with pytest.raises(ValueError, match=r"missing keys \[.*encoder\.blocks.*unexpected keys \['x'\]"):
        build_kspace_encoder(tiny_mae(), "stage1", stage1_ckpt=tmp_path / "align.pt")
    # a checkpoint of another size
    torch.save({"kspace_encoder": tiny_mae(dim=32).drop_decoder().state_dict()}, tmp_path / "align32.pt")
    with pytest.raises(ValueError, match=r"shape mismatches \['cls_token|shape mismatches \[.*\(1, 1, 32\)"):
        build_kspace_encoder(tiny_mae(), "aligned", align_ckpt=tmp_path / "align32.pt")
    with pytest.raises(ValueError, match=r"init must be one of \('aligned', 'stage1', 'scratch'\)"):
        build_kspace_encoder(tiny_mae(), "imagenet")
    with pytest.raises(ValueError, match="needs align_ckpt"):
        build_kspace_encoder(tiny_mae(), "aligned")


def test_freeze_encoder_leaves_encoder_grads_none():
    enc = build_kspace_encoder(tiny_mae(), "scratch")
    model = TaskModel(enc, heads_for(enc)["classify"], freeze_encoder=True)
    model.train()
    assert not enc.training and model.head.training
    ks, mask, _, _ = make_batch(2)
    model(ks, mask).square().mean().backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    unfrozen = TaskModel(enc.requires_grad_(True), heads_for(enc)["classify"])
    unfrozen(ks, mask).square().mean().backward()
    assert enc.encoder.blocks[0].attn.qkv.weight.grad is not None


# ---------------------------------------------------------------------------------------- regression / classes
def test_phenotype_regressor_native_units_and_buffers():
    head = TemporalMLPHead(DIM, 5, 2, 3)
    reg = PhenotypeRegressor(head, [100.0, 50.0, 60.0], [20.0, 10.0, 5.0])
    tokens = torch.randn(4, 1 + 5 * 2 * 16, DIM)
    expected = torch.tensor([100.0, 50.0, 60.0]) + torch.tensor([20.0, 10.0, 5.0]) * head(tokens)
    torch.testing.assert_close(reg(tokens), expected)
    assert torch.isnan(reg.interval_halfwidth).all()
    reg.set_interval_halfwidth([3.0, 2.0, 1.0])
    other = PhenotypeRegressor(TemporalMLPHead(DIM, 5, 2, 3), [0.0] * 3, [1.0] * 3)
    other.load_state_dict(reg.state_dict())  # statistics and intervals travel with the weights
    assert other.target_mean.tolist() == [100.0, 50.0, 60.0] and other.interval_halfwidth.tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="head.out_dim=3 but 2 targets"):
        PhenotypeRegressor(head, [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="target_std finite and > 0"):
        PhenotypeRegressor(head, [0.0] * 3, [1.0, 0.0, 1.0])


def test_disease_classifier_threshold_buffer():
    clf = DiseaseClassifier(TemporalMLPHead(DIM, 5, 2, 3))
    assert clf.threshold.tolist() == [0.5] * 3 and "threshold" in clf.state_dict()
    clf.set_threshold([0.2, 0.5, 0.9])
    logits = torch.logit(torch.tensor([[0.3, 0.3, 0.95], [0.1, 0.6, 0.5]]))
    assert clf.predict_labels(logits).tolist() == [[1, 0, 1], [0, 1, 0]]
    with pytest.raises(ValueError, match="values in"):
        clf.set_threshold([0.2, 1.5, 0.1])


def _ratio_tokens(n, g, c=16):
    """Tokens on a (S=2, T'=2, 4 tokens) grid whose frame-t tokens are a_t·u + noise; target EF = (a0 - a1) / a0.
    a0 varies 3-fold, so the mean over all tokens ((a0 + a1)/2) tells little about EF (best R² about 0.16)."""
    a0 = 1 + 2 * torch.rand(n, generator=g)
    ef = 0.2 + 0.5 * torch.rand(n, generator=g)
    amp = torch.stack([a0, a0 * (1 - ef)], 1)
    cells = amp[:, None, :, None, None] * torch.linspace(-1, 1, c) + 0.05 * torch.randn(n, 2, 2, 4, c, generator=g)
    tokens = torch.cat([0.05 * torch.randn(n, 1, c, generator=g), cells.reshape(n, -1, c)], 1)
    return tokens, ((ef - 0.45) / 0.144)[:, None]


def test_temporal_head_learns_ef_ratio_that_mean_pooling_cannot():
    g = torch.Generator().manual_seed(0)
    x_tr, y_tr = _ratio_tokens(512, g)
    x_te, y_te = _ratio_tokens(256, g)

    class MeanPooledMLP(nn.Module):  # the plain head: 256-wide MLP on the mean token
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(16, 256), nn.GELU(), nn.Linear(256, 1))

        def forward(self, tokens, valid=None):
            return self.mlp(pool_tokens(tokens, "mean"))

    r2 = {}
    for name, head in (("temporal", TemporalMLPHead(16, 2, 2, 1, hidden=64, mix_dim=32)), ("mean", MeanPooledMLP())):
        torch.manual_seed(0)
        opt = torch.optim.AdamW(head.parameters(), 3e-3)
        for _ in range(300):
            idx = torch.randint(0, len(x_tr), (64,))
            loss = nn.functional.mse_loss(head(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            r2[name] = float(1 - (head(x_te) - y_te).square().sum() / (y_te - y_te.mean()).square().sum())
    assert r2["temporal"] > 0.9, r2
    assert r2["mean"] < 0.3, r2


def test_temporal_head_input_norm_ignores_a_common_feature_offset_and_scale():
    """With ``input_norm`` every cell feature is standardised over the batch, so adding one offset per feature and
    scaling each feature by a positive factor (the same for all subjects and cells: what pretrained features share)
    leaves a training-mode output unchanged; without it the output changes. At evaluation the running statistics
    are used, so a single subject gets the same output alone as inside its batch."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(8, 1 + 2 * 2 * 3, 16, generator=g)  # (B, 1 + S·T'·3 patches, C)
    offset, scale = 5 * torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.5
    shifted = tokens * scale + offset
    for norm in (True, False):
        torch.manual_seed(0)
        head = TemporalMLPHead(16, 2, 2, 3, hidden=32, mix_dim=16, input_norm=norm).train()
        same = torch.allclose(head(tokens), head(shifted), atol=1e-4)
        assert same == norm, norm
    torch.manual_seed(0)
    head = TemporalMLPHead(16, 2, 2, 3, hidden=32, mix_dim=16, input_norm=True).train()
    for _ in range(20):
        head(tokens)  # running statistics converge to the batch's
    head.eval()
    torch.testing.assert_close(head(tokens[:1]), head(tokens)[:1])


def test_single_cell_head_is_an_mlp_on_the_class_token_and_keeps_its_scale():
    """One (view, time) cell (a CNN that pools everything itself): no mixer and no LayerNorm, so the output is the
    MLP of the class token, and a pooled feature twice as large (a size) gives another output."""
    torch.manual_seed(0)
    head = TemporalMLPHead(16, 1, 1, 3, hidden=32)
    assert head.mixer is None
    tokens = torch.rand(4, 2, 16)
    torch.testing.assert_close(head(tokens), head.mlp(tokens[:, 0]))
    assert not torch.allclose(head(2 * tokens), head(tokens))
    layered = TemporalMLPHead(16, 2, 1, 3, hidden=32)  # two cells: the mixer and its LayerNorm
    assert layered.mixer is not None


# --------------------------------------------------------------------------------------------------- losses
def test_standardised_huber_by_hand_and_nan_targets():
    loss = StandardisedHuberLoss([10.0, 0.0], [2.0, 0.5], delta=1.0)
    pred = torch.tensor([[11.0, 1.0], [16.0, 0.0]], requires_grad=True)
    target = torch.tensor([[10.0, float("nan")], [10.0, 0.25]])
    # z-residuals of the observed entries: 0.5 → 0.5·0.25; 3.0 → 1·(3 - 0.5); -0.5 → 0.5·0.25
    expected = (0.125 + 2.5 + 0.125) / 3
    value = loss(pred, target)
    assert value.item() == pytest.approx(expected)
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 1] == 0
    with pytest.raises(ValueError, match=r"expected \(B, K=2\)"):
        loss(pred[:, :1], target[:, :1])


def test_pos_weight_from_prevalence():
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(pos_weight_from_prevalence(labels), torch.tensor([3.0, 3.0, 1 / 3]))
    labels[0, 0] = float("nan")  # missing: prevalence from the 3 observed rows of column 0 is 0
    with pytest.raises(ValueError, match=r"columns \[0\]"):
        pos_weight_from_prevalence(labels)


def test_masked_dice_ce_ignores_invalid_views():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (2, S, 2, 8, 8), generator=g)
    valid = torch.ones(2, S, dtype=torch.bool)
    valid[:, 1] = False  # the 3ch view
    loss = MaskedDiceCELoss()
    # perfect logits on valid views, garbage on the invalid view: the loss is (near) zero
    perfect = 50.0 * nn.functional.one_hot(target, 6).permute(0, 5, 1, 2, 3, 4).float()
    perfect[:, :, 1] = torch.randn(2, 6, 2, 8, 8, generator=g)
    assert loss(perfect, target, valid).item() < 1e-3
    logits = torch.randn(2, 6, S, 2, 8, 8, generator=g)
    changed = logits.clone()
    changed[:, :, 1] = 10 * torch.randn(2, 6, 2, 8, 8, generator=g)
    assert loss(changed, target, valid).item() == pytest.approx(loss(logits, target, valid).item(), abs=1e-6)
    changed[:, :, 0] += 5 * torch.randn(2, 6, 2, 8, 8, generator=g)
    assert abs(loss(changed, target, valid).item() - loss(logits, target, valid).item()) > 1e-3
    # with all views valid it is MONAI's DiceCELoss over the (subject, view) samples
    all_valid = torch.ones(2, S, dtype=torch.bool)
    ref = DiceCELoss(softmax=True, to_onehot_y=True)(
        logits.transpose(1, 2).reshape(2 * S, 6, 2, 8, 8), target.reshape(2 * S, 1, 2, 8, 8).float()
    )
    assert loss(logits, target, all_valid).item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"valid \(seg_valid\): expected \(B, S\)"):
        loss(logits, target, valid[:, :3])


def test_magnitude_mse_shapes():
    pred = torch.zeros(1, 1, S, 2, 4, 4)
    assert MagnitudeMSELoss()(pred, torch.full((1, S, 2, 4, 4), 2.0)).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match=r"target: expected \(B, S, T, H, W\)"):
        MagnitudeMSELoss()(pred, torch.zeros(1, S, 2, 4, 5))


# ------------------------------------------------------------------------------------- dense decoders learn
@pytest.mark.parametrize("decoder,feature_size,lr", [("unetr", 8, 1e-2), ("query", 16, 5e-3)])
def test_dense_decoders_overfit_a_tiny_batch(decoder, feature_size, lr):
    """Segmentation (Dice+CE, 3ch view excluded) and reconstruction (MSE) losses fall >= 3x on one subject."""
    grid, patch = tiny_mae().tokenizer.grid, tiny_mae().tokenizer.patch
    if decoder == "unetr":
        heads = [TokenGridUNETRDecoder(DIM, grid, patch, c, feature_size, encoder_depth=2) for c in (6, 1)]
    else:
        heads = [ImageQueryDecoder(DIM, grid, patch, c, n_lax=N_LAX, feature_size=feature_size) for c in (6, 1)]
    ks, mask, img, seg = make_batch(1)
    valid = torch.ones(1, S, dtype=torch.bool)
    valid[:, 1] = False
    seg_loss, recon_loss = MaskedDiceCELoss(), MagnitudeMSELoss()
    for head, steps, loss_fn in ((heads[0], 60, lambda out: seg_loss(out, seg, valid)),
                                 (heads[1], 30, lambda out: recon_loss(out, img))):  # fmt: skip
        torch.manual_seed(0)
        model = TaskModel(build_kspace_encoder(tiny_mae(), "scratch"), head)
        opt = torch.optim.Adam(model.parameters(), lr)
        losses = []
        for _ in range(steps):
            loss = loss_fn(model(ks, mask))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert min(losses[-5:]) < losses[0] / 3, (decoder, head.out_channels, losses[0], losses[-5:])
