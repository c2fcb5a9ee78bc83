"""Baseline networks (DESIGN §8): ResNet per frame, ViT / image-MAE encoder, DynUNet per frame, k-GIN-style recon."""

import pytest
import torch

from kmtr_monai.networks.baselines import (
    FrameDynUNet,
    FrameResNetEncoder,
    ImageEncoder,
    KspaceInterpolationRecon,
    StackedFrameResNet,
)
from kmtr_monai.networks.heads import TemporalMLPHead
from kmtr_monai.networks.mae import ImageMAE, KspaceMAE

torch.set_num_threads(1)  # the CI box has 2 shared cores

B, S, T, H = 2, 2, 2, 16


def kspace_batch(seed=0, b=B, s=S, t=T, h=H):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, 2, s, t, h, h, generator=g)
    mask = torch.rand(b, s, t, h, generator=g) < 0.4
    mask[..., h // 2] = True  # at least one sampled line per frame
    return k * mask[:, None, ..., None], mask


def noisy_unsampled(k, mask):
    unsampled = (~mask)[:, None, ..., None].expand_as(k)
    noisy = torch.where(unsampled, torch.randn_like(k) * 100, k)
    assert not torch.equal(noisy, k)
    return noisy


def image_mae(dim=32, **kw):
    return ImageMAE(n_views=S, n_lax=1, n_frames=T, size=H, patch=(1, 8, 8), dim=dim, depth=2, heads=4,
                    dec_dim=16, dec_depth=1, dec_heads=2, **kw)  # fmt: skip


def line_mae(**kw):
    return KspaceMAE(n_views=S, n_lax=1, n_frames=T, n_pe=H, n_readout=H, dim=32, depth=1, heads=4, dec_dim=32,
                     dec_depth=1, dec_heads=4, tokenizer=kw.pop("tokenizer", "line"), **kw)  # fmt: skip


def all_grads_finite(module):
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


# --------------------------------------------------------------------------------------------------- ResNet
@pytest.mark.parametrize("depth, dim", [(18, 512), (50, 2048)])
def test_resnet_image_shapes_and_head(depth, dim):
    enc = FrameResNetEncoder(S, T, "image", depth=depth)
    assert enc.dim == dim and enc.view_time_cells == (S, T) and enc.input_kind == "image"
    image = torch.rand(B, S, T, H, H)
    tokens, pooled, valid = enc.encode(image, return_valid=True)
    assert tokens.shape == (B, 1 + S * T, dim) and pooled.shape == (B, dim) and valid.shape == (B, S * T)
    assert bool(valid.all()) and torch.equal(tokens[:, 0], pooled)
    torch.testing.assert_close(pooled, tokens[:, 1:].mean(1))
    if depth == 18:
        head = TemporalMLPHead(dim=enc.dim, n_views=S, n_time=T, out_dim=3)
        out = head(tokens, valid)
        assert out.shape == (B, 3)
        out.square().sum().backward()
        all_grads_finite(enc)
        assert enc(image).shape == (B, dim)  # forward = pooled features


def test_resnet_frames_in_view_time_order():
    enc = FrameResNetEncoder(S, T, "image", depth=18).eval()
    image = torch.rand(B, S, T, H, H)
    with torch.no_grad():
        tokens, _ = enc.encode(image)
        one = enc.net(image[:, 1, 0, None])  # view 1, frame 0 → token 1 + 1·T + 0
    torch.testing.assert_close(tokens[:, 1 + T], one)


def test_resnet_kspace_no_leakage_and_grads():
    enc = FrameResNetEncoder(S, T, "kspace", depth=18)
    k, mask = kspace_batch()
    tokens, pooled, valid = enc.encode(k, mask, return_valid=True)
    assert tokens.shape == (B, 1 + S * T, 512) and valid.shape == (B, S * T)
    pooled.square().mean().backward()
    all_grads_finite(enc)
    enc.eval()
    noisy = noisy_unsampled(k, mask)
    noisy[0, 0, 0, 0, int(torch.nonzero(~mask[0, 0, 0])[0])] = float("nan")  # even NaN on an unsampled line
    with torch.no_grad():
        t0, p0 = enc.encode(k, mask)
        t1, p1 = enc.encode(noisy, mask.float())
    assert torch.equal(t0, t1) and torch.equal(p0, p1)


def test_resnet_errors():
    img = FrameResNetEncoder(S, T, "image", depth=18)
    ksp = FrameResNetEncoder(S, T, "kspace", depth=18)
    k, mask = kspace_batch()
    with pytest.raises(ValueError, match=r"image: expected shape \(B, S, T, H, W\)"):
        img.encode(torch.rand(B, S, H, H))
    with pytest.raises(ValueError, match=r"\(S, T\) = \(2, 2\)"):
        img.encode(torch.rand(B, S + 1, T, H, H))
    with pytest.raises(TypeError, match="image: got complex"):
        img.encode(torch.rand(B, S, T, H, H, dtype=torch.complex64))
    with pytest.raises(ValueError, match="return_hidden"):
        img.encode(torch.rand(B, S, T, H, H), return_hidden=True)
    with pytest.raises(ValueError, match="takes no mask"):
        img.encode(torch.rand(B, S, T, H, H), mask)
    with pytest.raises(ValueError, match="needs the ky-t mask"):
        ksp.encode(k)
    with pytest.raises(TypeError, match="kspace: got complex"):
        ksp.encode(torch.complex(k[:, 0], k[:, 1]), mask)
    with pytest.raises(ValueError, match=r"kspace: expected shape \(B, 2, S, T, H, W\)"):
        ksp.encode(k[:, :1], mask)
    with pytest.raises(ValueError, match=r"mask: expected shape \(B, S, T, H\)"):
        ksp.encode(k, mask[..., :-1])
    with pytest.raises(TypeError, match="mask"):
        ksp.encode(k, mask.to(torch.complex64))
    with pytest.raises(ValueError, match="depth"):
        FrameResNetEncoder(S, T, depth=101)
    with pytest.raises(ValueError, match="input_kind"):
        FrameResNetEncoder(S, T, input_kind="sinogram")


# ------------------------------------------------------------------------------------------- stacked CNN
def test_stacked_cnn_reads_every_view_and_frame_as_channels():
    enc = StackedFrameResNet(S, T, "image", widths=(4, 8, 8, 16)).eval()
    assert enc.dim == 16 and enc.view_time_cells == (1, 1)
    image = torch.rand(B, S, T, H, H)
    with torch.no_grad():
        tokens, pooled, valid = enc.encode(image, return_valid=True)
        same = enc.net(image.reshape(B, S * T, H, H))  # channel c = view c // T, frame c % T
        moved = image.clone()
        moved[:, 1, 1] = torch.rand(H, H)  # the last view's last frame reaches the features
        changed = enc.encode(moved)[1]
    assert tokens.shape == (B, 2, 16) and valid.shape == (B, 1) and bool(valid.all())
    torch.testing.assert_close(pooled, same)
    assert torch.equal(tokens[:, 0], pooled) and not torch.allclose(changed, pooled)
    head = TemporalMLPHead(dim=enc.dim, n_views=1, n_time=1, out_dim=3)
    enc.train()
    head(*enc.encode(image, return_valid=True)[::2]).square().sum().backward()
    all_grads_finite(enc)


def test_stacked_cnn_kspace_no_leakage_and_errors():
    enc = StackedFrameResNet(S, T, "kspace", widths=(4, 8, 8, 16)).eval()
    k, mask = kspace_batch()
    with torch.no_grad():
        assert torch.equal(enc.encode(k, mask)[1], enc.encode(noisy_unsampled(k, mask), mask.float())[1])
    with pytest.raises(ValueError, match="needs the ky-t mask"):
        enc.encode(k)
    with pytest.raises(ValueError, match=r"\(S, T\) = \(2, 2\)"):
        StackedFrameResNet(S, T, "image").encode(torch.rand(B, S, T + 1, H, H))
    with pytest.raises(ValueError, match="widths and layers"):
        StackedFrameResNet(S, T, widths=(4, 8))


# ----------------------------------------------------------------------------------------- ViT / image MAE
def test_image_encoder_scratch_shapes_hidden_and_grads():
    enc = ImageEncoder(image_mae(pool="mean"))
    assert enc.input_kind == "image" and enc.dim == 32 and enc.view_time_cells == (S, T)
    assert enc.tokenizer.grid == (S, T, 2, 2) and not hasattr(enc, "decoder")
    image = torch.rand(B, S, T, H, H)
    tokens, pooled, valid, hidden = enc.encode(image, return_valid=True, return_hidden=True)
    n = S * T * 4
    assert tokens.shape == (B, 1 + n, 32) and pooled.shape == (B, 32) and valid.shape == (B, n) and bool(valid.all())
    assert len(hidden) == 2 and all(h.shape == (B, 1 + n, 32) for h in hidden)
    torch.testing.assert_close(pooled, tokens[:, 1:].mean(1))
    head = TemporalMLPHead(dim=enc.dim, n_views=S, n_time=T, out_dim=3)
    head(tokens, valid).square().sum().backward()
    all_grads_finite(enc)
    with pytest.raises(TypeError, match="image: got complex"):
        enc.encode(torch.rand(B, S, T, H, H, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"image: expected shape \(B, S, T, H, W\)"):
        enc.encode(torch.rand(B, S, T, H, H + 8))
    with pytest.raises(TypeError, match="ImageMAE"):
        ImageEncoder(line_mae())


def test_image_encoder_loads_the_checkpoint(tmp_path):
    torch.manual_seed(1)
    other = image_mae()
    path = tmp_path / "model.pt"
    torch.save({"model": other.state_dict()}, path)
    torch.manual_seed(2)
    enc = ImageEncoder(image_mae(), ckpt=path)
    ref = other.state_dict()
    own = enc.state_dict()
    assert set(own) == {k for k in ref if k.startswith(("tokenizer.", "encoder."))}
    assert all(torch.equal(v, ref[k]) for k, v in own.items())
    image = torch.rand(B, S, T, H, H)
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(image)[0], other.eval().encode(image)[0])
    with pytest.raises(ValueError, match="shape mismatches"):
        ImageEncoder(image_mae(dim=64), ckpt=path)


# -------------------------------------------------------------------------------------------------- DynUNet
def test_frame_dynunet_shapes_and_grads():
    net = FrameDynUNet(out_channels=3, filters=(8, 16, 32))
    image = torch.rand(B, S, T, H, H)
    out = net(image)
    assert out.shape == (B, 3, S, T, H, H) and net.input_kind == "image"
    torch.testing.assert_close(net(image[:, None]), out)
    out.square().mean().backward()
    all_grads_finite(net)
    net.eval()
    with torch.no_grad():  # frames are independent: frame (1, 0) alone gives the same logits
        torch.testing.assert_close(net(image)[:, :, 1, 0], net.net(image[:, 1, 0, None]))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(B, S, T, H + 2, H + 2))
    with pytest.raises(ValueError, match=r"image: expected shape"):
        net(torch.rand(B, 2, S, T, H, H))
    with pytest.raises(TypeError, match="image: got complex"):
        net(torch.rand(B, S, T, H, H, dtype=torch.complex64))


# -------------------------------------------------------------------------------------- k-GIN-style recon
def test_recon_shapes_grads_packed_and_no_leakage():
    model = KspaceInterpolationRecon(line_mae())
    assert model.input_kind == "kspace"
    torch.nn.init.normal_(model.mae.head.weight, std=0.02)  # a non-zero head: the prediction depends on the encoder
    k, mask = kspace_batch(seed=3)
    out = model(k, mask)
    assert out.shape == (B, 1, S, T, H, H) and bool(torch.isfinite(out).all())
    out.mean().backward()
    assert model.mae.head.weight.grad is not None and bool(torch.isfinite(model.mae.head.weight.grad).all())
    assert float(model.mae.head.weight.grad.abs().sum()) > 0
    model.eval()
    packed = torch.cat([k, mask[:, None, ..., None].float().expand_as(k[:, :1])], dim=1)
    noisy = noisy_unsampled(k, mask)
    with torch.no_grad():
        ref = model(k, mask)
        assert torch.equal(model(packed), ref)
        assert torch.equal(model(noisy, mask), ref)
        # the measured lines are kept exactly
        kk = model.interpolate(k, mask)
        m = mask[:, None, ..., None].expand_as(k)
        assert torch.equal(kk[m], k[m]) and not torch.equal(kk[~m], k[~m])


def test_recon_full_mask_is_the_inverse_fft():
    model = KspaceInterpolationRecon(line_mae()).eval()
    torch.nn.init.normal_(model.mae.head.weight, std=0.02)
    k = torch.randn(B, 2, S, T, H, H)
    mask = torch.ones(B, S, T, H, dtype=torch.bool)
    with torch.no_grad():
        out = model(k, mask)
    kc = torch.complex(k[:, 0], k[:, 1])
    truth = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(kc, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    torch.testing.assert_close(out[:, 0], truth.abs(), atol=1e-6, rtol=1e-5)
    from kmtr_monai.transforms.fft import ifft2c

    assert torch.equal(out[:, 0], ifft2c(kc).abs())


def test_recon_errors():
    with pytest.raises(ValueError, match="tokenizer='line'"):
        KspaceInterpolationRecon(line_mae(tokenizer="patch", patch=(1, 8, 8)))
    with pytest.raises(ValueError, match="decoder"):
        KspaceInterpolationRecon(line_mae().drop_decoder())
    with pytest.raises(TypeError, match="KspaceMAE"):
        KspaceInterpolationRecon(image_mae())
    model = KspaceInterpolationRecon(line_mae())
    k, mask = kspace_batch()
    with pytest.raises(ValueError, match=r"packed input: expected \(B, 3, S, T, H, W\)"):
        model(k)
    with pytest.raises(TypeError, match="kspace: got complex"):
        model(torch.complex(k[:, 0], k[:, 1])[:, None].expand(-1, 2, -1, -1, -1, -1), mask)
    with pytest.raises(ValueError, match=r"kspace: expected shape"):
        model(k[..., :-1], mask)
    with pytest.raises(ValueError, match=r"mask: expected shape"):
        model(k, mask[..., :-1])
