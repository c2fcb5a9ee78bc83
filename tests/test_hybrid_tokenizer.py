"""Issue 25: hybrid x-ky tokens, the grouped line decoder, the mask/phase-draw invariance term and the image-profile
target of the k-space MAE."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kmtr_monai.networks import build_kspace_mae
from kmtr_monai.networks.mae import image_profiles, invariance_term, profile_term
from kmtr_monai.networks.tokenizers import KspaceHybridTokenizer, from_hybrid, to_hybrid
from kmtr_monai.transforms import fft1c, ifft1c, ifft2c

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
S, T, H = 5, 4, 32  # the tiny preset: 3 LAX + 2 SAX views, 4 frames, 32 × 32


def make_batch(b, counts=None, seed=0):
    """Smooth complex images → centred ortho k-space (B, 2, S, T, H, H); mask (B, S, T, H) with exactly ``counts[i]``
    lines per frame for subject i (default 8, R=4); undersampled = full × mask."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(H)
    lowpass = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.08**2))
    img = torch.fft.ifft2(torch.fft.fft2(torch.randn(b, S, T, H, H, generator=g)) * lowpass)
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    full = torch.stack([k.real, k.imag], 1).float()
    counts = [8] * b if counts is None else counts
    rank = torch.argsort(torch.rand(b, S, T, H, generator=g), dim=-1).argsort(-1)
    mask = (rank < torch.tensor(counts).view(b, 1, 1, 1)).float()
    return full * mask[:, None, ..., None], full, mask


def np_ifft_readout(k: np.ndarray) -> np.ndarray:
    """Independent reference: centred orthonormal inverse FFT along the last axis (the readout), numpy rolls."""
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=-1), axis=-1, norm="ortho"), axes=-1)


# --------------------------------------------------------------------------------------------- the transform
@pytest.mark.parametrize("w", [32, 15])
def test_ifft1c_matches_numpy_and_inverts(w):
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 4, 6, w)) + 1j * rng.normal(size=(3, 4, 6, w))
    np.testing.assert_allclose(ifft1c(torch.from_numpy(k), dim=-1).numpy(), np_ifft_readout(k), atol=1e-12)
    np.testing.assert_allclose(ifft1c(k, dim=-1), np_ifft_readout(k), atol=1e-12)  # numpy in, numpy out
    np.testing.assert_allclose(fft1c(ifft1c(k, dim=-1), dim=-1), k, atol=1e-12)


def test_hybrid_is_exact_and_the_first_stage_of_the_2d_fft():
    under, full, mask = make_batch(2)
    hyb = to_hybrid(full.double())
    kc = full[:, 0].double().numpy() + 1j * full[:, 1].double().numpy()
    ref = np_ifft_readout(kc)
    np.testing.assert_allclose(hyb[:, 0].numpy() + 1j * hyb[:, 1].numpy(), ref, atol=1e-12)
    torch.testing.assert_close(from_hybrid(hyb), full.double(), atol=1e-12, rtol=0)  # inverse then forward
    image = ifft1c(torch.complex(hyb[:, 0], hyb[:, 1]), dim=-2)  # then along ky: the 2-D inverse FFT
    torch.testing.assert_close(image, ifft2c(torch.complex(full[:, 0].double(), full[:, 1].double())), atol=1e-12,
                               rtol=0)
    # line by line: unsampled (zero) lines stay exactly zero, sampled lines are untouched by other lines
    h_under = to_hybrid(under)
    assert torch.equal(h_under * (mask == 0)[:, None, ..., None], torch.zeros_like(h_under))
    torch.testing.assert_close(h_under, to_hybrid(full) * mask[:, None, ..., None], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ tokens
def test_token_counts_for_a_known_mask():
    _, full, mask = make_batch(3, counts=[8, 4, 1])
    lines = mask.flatten(1).sum(1)
    assert lines.tolist() == [S * T * 8, S * T * 4, S * T * 1]
    hyb = torch.cat([to_hybrid(full), torch.ones_like(full[:, :1])], 1)
    tok = KspaceHybridTokenizer(S, 3, T, H, H, (1, 1, 8), dim=32)  # one token per sampled line × x segment
    out = tok(hyb, mask.bool())
    assert out.valid.sum(1).tolist() == (lines * (H // 8)).tolist()
    assert out.tokens.shape == (3, int(lines.max()) * 4, 32) and out.cells.shape == (3, S * T * H * 4)
    assert torch.equal(out.tokens[~out.valid], torch.zeros_like(out.tokens[~out.valid]))
    # grouped cells (2 frames × 8 ky × 8 x): a cell counts when any of its lines was sampled (numpy reference)
    tok = KspaceHybridTokenizer(S, 3, T, H, H, (2, 8, 8), dim=32)
    out = tok(hyb, mask.bool())
    m = mask.numpy().reshape(3, S, T // 2, 2, H // 8, 8).any(axis=(3, 5))
    assert out.valid.sum(1).tolist() == (m.reshape(3, -1).sum(1) * (H // 8)).tolist()
    assert tok.grid == (S, T // 2, H // 8, H // 8)


def test_whole_line_tokens_keep_the_x_profile_through_mean_pooling():
    """Whole-line hybrid tokens (1, 1, W) with dim >= 4·W: the embedding is injective, so the mean of a view's valid
    tokens (minus their position codes) determines that view's mean |hybrid| profile along x exactly (the
    ``hybrid-line`` lever, BENCHMARKS); grouped cells (2, 8, 8) into the same width do not (rank < inputs)."""
    under, _, mask = make_batch(2, counts=[8, 3], seed=2)
    m = build_kspace_mae("tiny", tokenizer="hybrid", patch=(1, 1, H), norm="scale", dim=4 * H, heads=4)
    with torch.no_grad():
        y, _ = m._normalise_input(under, mask.bool())
        mag = m.magnitude(y)  # (B, 1, S, T, H, W) normalised |hybrid|
        ht = m.tokenizer(torch.cat([y, mag], dim=1), mask.bool())
    emb = torch.where(ht.valid[..., None], ht.tokens - m.tokenizer.pos[ht.index], torch.zeros(()))
    view = ht.index // (T * H)  # grid (S, T, H, 1): the view of each token
    w = m.tokenizer.proj.weight.double()  # (dim, 4·H): [real, imag, magnitude, flag] × x
    assert torch.linalg.matrix_rank(w) == 4 * H
    for b in range(2):
        for v in range(S):
            sel = ht.valid[b] & (view[b] == v)
            inputs = torch.linalg.lstsq(w, emb[b, sel].double().mean(0)[:, None]).solution.view(4, H)
            lines = mask[b, v].bool()  # (T, H): this view's sampled (frame, ky) lines
            profile = mag[b, 0, v][lines].mean(0)  # (W,) independent: the mean magnitude of the sampled lines
            torch.testing.assert_close(inputs[2].float(), profile, atol=1e-4, rtol=1e-4)
            assert torch.allclose(inputs[3].float(), torch.ones(H), atol=1e-4)  # the line-sampled flag
    grouped = build_kspace_mae("tiny", tokenizer="hybrid", patch=(2, 8, 8), dim=4 * H, heads=4).tokenizer.proj.weight
    assert torch.linalg.matrix_rank(grouped.double()) < grouped.shape[1]


@pytest.mark.parametrize("pool", ["cls", "mean", "view_time"])
@pytest.mark.parametrize("reference", ["none", "view_sharing"])
@pytest.mark.parametrize("patch", [(2, 8, 8), (1, 1, 16)])
def test_hybrid_no_leakage_bit_identical(pool, reference, patch):
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer="hybrid", pool=pool, reference=reference, patch=patch).eval()
    torch.nn.init.normal_(m.head.weight, std=0.02)  # a non-zero head: the prediction depends on the encoder
    under, full, mask = make_batch(2, counts=[8, 3], seed=1)
    unsampled = (mask == 0)[:, None, ..., None].expand_as(under)
    noisy = torch.where(unsampled, torch.randn_like(under) * 100, under)
    with torch.no_grad():
        t0, p0, v0, h0 = m.encode(under, mask, return_valid=True, return_hidden=True)
        for other in (noisy, full):
            t1, p1, v1, h1 = m.encode(other, mask, return_valid=True, return_hidden=True)
            assert torch.equal(t0, t1) and torch.equal(p0, p1) and torch.equal(v0, v1)
            assert all(torch.equal(a, b) for a, b in zip(h0, h1))
            assert torch.equal(m(under, mask)["pred"], m(other, mask)["pred"])
    assert t0.shape[1] == 1 + m.tokenizer.num_tokens  # back on the full (view, t, ky, x) grid
    assert torch.equal(t0[:, 1:][~v0], torch.zeros_like(t0[:, 1:][~v0]))


def test_hybrid_mae_forward_backward_tiny():
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer="hybrid")
    under, full, mask = make_batch(2)
    out = m(under, mask, full)
    assert out["pred"].shape == out["target"].shape == full.shape
    # targets are hybrid space (normalised with the sampled RMS); mapped back they give the k-space exactly
    torch.testing.assert_close(from_hybrid(m.invert_norm(out["target_norm"], out["scale"])), full, atol=1e-5, rtol=1e-4)
    ref = torch.tensor([math.sqrt(float((under[i] ** 2).sum()) / float(mask[i].sum() * 2 * H)) for i in range(2)])
    torch.testing.assert_close(out["scale"], ref, rtol=1e-5, atol=0)
    # the view-sharing head starts at zero, so the prediction is the view-shared k-space (back in k-space units)
    from kmtr_monai.view_sharing import view_share

    torch.testing.assert_close(out["pred"], view_share(under, mask.bool()), atol=1e-4, rtol=1e-4)
    loss = m.loss(out)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(m.head.weight.grad.abs().sum()) > 0  # (the zero head passes no gradient further on step 1)
    torch.nn.init.normal_(m.head.weight, std=0.02)
    m.zero_grad()
    m.loss(m(under, mask, full)).backward()
    assert float(m.tokenizer.proj.weight.grad.abs().sum()) > 0 and torch.isfinite(m.tokenizer.proj.weight.grad).all()


def test_hybrid_loss_equals_kspace_loss_with_linear_norm():
    """With norm='scale' the per-line hybrid MSE equals the k-space MSE (Parseval along the readout)."""
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer="hybrid", norm="scale", reference="none")
    torch.nn.init.normal_(m.head.weight, std=0.05)
    under, full, mask = make_batch(2)
    with torch.no_grad():
        out = m(under, mask, full)
        k_space = {"pred_norm": out["pred"] / out["scale"].view(-1, 1, 1, 1, 1, 1),
                   "target_norm": full / out["scale"].view(-1, 1, 1, 1, 1, 1), "weight": out["weight"]}
        torch.testing.assert_close(m.loss(out), m.loss(k_space), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------------------- grouped line decoder
def test_line_dec_group_defaults_unchanged_and_grouped_runs():
    torch.manual_seed(0)
    plain = build_kspace_mae("tiny", tokenizer="line")
    assert not hasattr(plain, "dec_merge") and plain.dec_pos.shape[0] == S * T * H
    torch.manual_seed(0)
    grouped = build_kspace_mae("tiny", tokenizer="line", dec_group=(2, 4))
    assert grouped.dec_pos.shape[0] == S * (T // 2) * (H // 4)
    under, full, mask = make_batch(2)
    out = grouped(under, mask, full)
    assert out["pred"].shape == full.shape and torch.equal(out["weight"], torch.where(mask > 0, 0.0, 1.0))
    # the loss has the same form: per-line MSE over (real/imag, readout), weighted by line
    manual = ((out["pred_norm"] - out["target_norm"]).square().mean((1, 5)) * out["weight"]).sum() / out["weight"].sum()
    torch.testing.assert_close(grouped.loss(out), manual)
    grouped.loss(out).backward()
    assert all(torch.isfinite(p.grad).all() for p in grouped.parameters() if p.grad is not None)
    # the head starts at zero (view-sharing reference): both decoders start from the same prediction
    torch.testing.assert_close(out["pred"], plain(under, mask, full)["pred"])
    with pytest.raises(ValueError, match="dec_group"):
        build_kspace_mae("tiny", tokenizer="patch", dec_group=(2, 4))
    assert "dec_merge" not in dict(grouped.drop_decoder().named_children())


# ----------------------------------------------------------------------------------------- invariance term
def test_invariance_term_zero_for_identical_positive_for_different():
    g = torch.Generator().manual_seed(0)
    za = torch.randn(8, 16, generator=g)
    assert float(invariance_term(za, za.clone())) < 1e-6
    assert float(invariance_term(za, 3 * za + 1)) < 1e-6  # per-feature affine changes do not count
    zb = za + torch.randn(8, 16, generator=g)
    assert 0.05 < float(invariance_term(za, zb)) < 2.0
    # a collapsed (constant) feature scores as badly as unrelated features: collapse cannot lower the term
    const = torch.ones(8, 16)
    assert float(invariance_term(const, const)) == pytest.approx(1.0, abs=1e-3)
    assert float(invariance_term(za[:1], zb[:1])) == 0.0


@pytest.mark.parametrize("tokenizer", ["hybrid", "line"])
def test_invariance_in_the_model(tokenizer):
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer=tokenizer, invariance_weight=0.5, pool="mean")
    under, full, mask = make_batch(4, seed=2)
    under_b, _, mask_b = make_batch(4, seed=3)  # other masks (and other images, which is fine for the test)
    under_b = full * mask_b[:, None, ..., None]  # same subjects, a second mask
    same = m(under, mask, full, kspace_b=under, mask_b=mask)
    assert float(same["invariance"]) < 1e-4  # 0 up to eps / (feature variance)
    plain = m.loss({k: v for k, v in same.items() if "invariance" not in k})
    torch.testing.assert_close(m.loss(same), plain + 0.5 * same["invariance"])
    other = m(under, mask, full, kspace_b=under_b, mask_b=mask_b)
    assert float(other["invariance"]) > 1e-3 and float(other["invariance"]) > 20 * float(same["invariance"])
    torch.testing.assert_close(other["invariance_loss"], 0.5 * other["invariance"])
    m.loss(other).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="second mask/phase draw"):
        m(under, mask, full)
    m.eval()
    assert "invariance" not in m(under, mask, full)  # validation needs no second draw
    off = build_kspace_mae("tiny", tokenizer=tokenizer)  # default: off
    assert off.invariance_weight == 0 and "invariance" not in off(under, mask, full, kspace_b=under_b, mask_b=mask_b)


# ----------------------------------------------------------------------------------------- image-profile target
def test_image_profiles_of_a_rectangle():
    """A centred 8 × 4 box of ones: its x profile (sum over y) is 8 on 4 columns, its y profile 4 on 8 rows."""
    img = torch.zeros(2, 2, 4, 16, 16)
    img[0, :, :, 4:12, 2:6] = 1.0
    img[1, :, 2:] = 0.5  # frames 2-3 of subject 1: uniform
    k = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img.to(torch.complex64), dim=(-2, -1)), norm="ortho"),
                           dim=(-2, -1))  # fmt: skip
    p = image_profiles(torch.stack([k.real, k.imag], 1), cells=(2, 2), bins=4)  # (B, S, T'=2, 8)
    assert p.shape == (2, 2, 2, 8)
    expect = torch.tensor([4.0, 4.0, 0, 0, 0, 4.0, 4.0, 0])  # bins of 4 columns / rows
    torch.testing.assert_close(p[0, 1, 1], expect, atol=1e-4, rtol=0)
    torch.testing.assert_close(p[1, 0, 0], torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(p[1, 0, 1], torch.full((8,), 8.0), atol=1e-4, rtol=0)  # 16 × 0.5 per column / row


def test_profile_term_reads_the_first_channels_and_skips_missing_views():
    g = torch.Generator().manual_seed(0)
    prof = torch.rand(6, 2, 3, 4, generator=g) * 10 + 5
    z = (prof - prof.mean(0)) / prof.std(0, unbiased=False)
    feats = torch.cat([z, torch.randn(6, 2, 3, 12, generator=g)], -1)  # the first 4 channels hold the profiles
    assert float(profile_term(feats, prof)) < 1e-8
    assert float(profile_term(feats, prof * 3 + 1)) < 1e-8  # scale-free: standardised over the batch
    wrong = feats.clone()
    wrong[:, 1, :, :4] = 7.0  # view 1 does not hold them ...
    assert float(profile_term(wrong, prof)) > 1.0
    assert float(profile_term(wrong, prof, view_valid=torch.tensor([[1.0, 0.0]] * 6))) < 1e-8  # ... but is missing
    assert float(profile_term(feats[:1], prof[:1])) == 0.0


@pytest.mark.parametrize("tokenizer", ["patch", "hybrid"])
def test_profile_target_in_the_model(tokenizer):
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer=tokenizer, profile_weight=0.5)
    under, full, mask = make_batch(4, seed=2)
    out = m(under, mask, full)
    assert float(out["profile"]) > 0
    plain = m.loss({k: v for k, v in out.items() if not k.startswith("profile")})
    torch.testing.assert_close(m.loss(out), plain + 0.5 * out["profile"])
    m.loss(out).backward()
    assert m.tokenizer.proj.weight.grad.abs().sum() > 0  # it reaches the encoder
    m.eval()
    assert "profile" not in m(under, mask, full)
    off = build_kspace_mae("tiny", tokenizer=tokenizer)
    assert set(off.state_dict()) == set(m.state_dict())  # no parameters: checkpoints load either way
    with pytest.raises(ValueError, match="profile"):
        build_kspace_mae("tiny", tokenizer="line", profile_weight=1.0)
    with pytest.raises(ValueError, match="profile"):
        build_kspace_mae("tiny", profile_weight=1.0, profile_bins=10_000)


def test_profile_head_reads_the_cell_features():
    """With ``profile_head`` the term is the MSE between Linear(cell means) and the standardised profiles (computed
    here independently), the head learns, and it goes with the decoder."""
    torch.manual_seed(0)
    m = build_kspace_mae("tiny", tokenizer="hybrid", profile_weight=1.0, profile_head=True)
    under, full, mask = make_batch(4, seed=3)
    out = m(under, mask, full)
    with torch.no_grad():
        tokens, _, valid = m.encode(under, mask, return_valid=True)
        cells = m.pool_tokens(tokens, "view_time", valid).reshape(4, *m.view_time_cells, -1)
        prof = image_profiles(full, m.view_time_cells, m.profile_bins)
        z = (prof - prof.mean(0)) / (prof.std(0, unbiased=False) + 1e-6)
        expected = (m.profile_head(cells) - z).square().mean()
    torch.testing.assert_close(out["profile"], expected, rtol=1e-4, atol=1e-6)
    out["profile_loss"].backward()
    assert m.profile_head.weight.grad.abs().sum() > 0 and m.tokenizer.proj.weight.grad.abs().sum() > 0
    assert "profile_head.weight" in m.state_dict()
    assert not hasattr(m.drop_decoder(), "profile_head")


def test_second_draw_transform():
    from kmtr_monai.transforms import (ComplexToChanneld, FFT2cd, RandGlobalPhased, RandKspaceMaskd,
                                       RandSmoothPhased, SecondDrawd)  # fmt: skip

    chain = [RandSmoothPhased(keys="image", output_key="kspace_full"), FFT2cd(keys="kspace_full"),
             RandGlobalPhased(keys="kspace_full"),
             RandKspaceMaskd(keys="kspace_full", output_key="kspace", mask_key="mask", accelerations=[4])]  # fmt: skip
    for t in chain:
        if hasattr(t, "set_random_state"):
            t.set_random_state(0)
    d = {"image": np.random.default_rng(0).random((S, T, H, H)).astype(np.float32)}
    for t in chain:
        d = t(d)
    first = {k: np.array(v) for k, v in d.items()}
    d = SecondDrawd(chain, keys=["kspace", "mask"])(d)
    for k in ("kspace", "mask", "kspace_full"):
        np.testing.assert_array_equal(np.array(d[k]), first[k])  # the first draw is untouched
    assert not np.array_equal(np.array(d["mask_b"]), first["mask"])
    assert not np.allclose(np.array(d["kspace_b"]), first["kspace"])
    assert np.array(d["mask_b"]).sum() == first["mask"].sum()  # same R
    d = ComplexToChanneld(keys=["kspace", "kspace_b"])(d)
    assert np.array(d["kspace_b"]).shape == (2, S, T, H, H)


# ----------------------------------------------------------------------------------------- bundle
def _workflow(cohort, out, **overrides):
    from monai.bundle import ConfigWorkflow

    from kmtr_monai.bundle import config_files

    bundle = BUNDLES / "kspace-mae"
    args = {"bundle_root": str(bundle), "dataset_dir": str(cohort), "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "eval"), "max_epochs": 1, **overrides}  # fmt: skip
    return ConfigWorkflow(config_file=config_files("kspace-mae", "train", "tiny"),
                          meta_file=str(bundle / "configs" / "metadata.json"),
                          logging_file=str(BUNDLES / "common" / "logging.conf"), workflow_type="train", **args)  # fmt: skip


def test_bundle_defaults_follow_the_preset(tiny_cohort, tmp_path):
    """The tiny and small presets train whole-line hybrid tokens in linear units with the image-profile target
    (issue 25's measured defaults); the paper preset keeps patch tokens; the previous defaults stay one override
    away."""
    from kmtr_monai.linear_eval import bundle_parser

    wf = _workflow(tiny_cohort, tmp_path)
    p = wf.parser
    net = p.get_parsed_content("network_def")
    assert (net.kind, net.norm, net.tokenizer.patch, net.profile_weight) == ("hybrid", "scale", (1, 1, 32), 1.0)
    assert net.invariance_weight == 0 and net.dec_group == (1, 1) and not hasattr(net, "profile_head")
    expected = {"small": ("hybrid", [1, 1, 48], "scale", 1.0), "paper": ("patch", [5, 8, 8], "asinh", 0.0)}
    for preset, tokens in expected.items():
        parser = bundle_parser(BUNDLES / "kspace-mae", preset, {"dataset_dir": str(tiny_cohort)})
        assert tuple(parser.get_parsed_content(k) for k in ("tokenizer", "kspace_patch", "kspace_norm",
                                                             "profile_weight")) == tokens, preset  # fmt: skip
    previous = _workflow(tiny_cohort, tmp_path, tokenizer="patch", kspace_patch=[2, 8, 8], kspace_norm="asinh",
                         profile_weight=0.0)  # fmt: skip
    net = previous.parser.get_parsed_content("network_def")
    assert (net.kind, net.norm, net.tokenizer.patch, net.profile_weight) == ("patch", "asinh", (2, 8, 8), 0.0)
    assert len(p.get_parsed_content("train#transforms")) == len(p.get_parsed_content("kspace_sim#train"))
    assert p.get_parsed_content("train#trainer#prepare_batch").input_keys == ("kspace", "mask", "kspace_full",
                                                                              "view_valid")  # fmt: skip


def test_bundle_hybrid_with_invariance_trains_one_epoch(tiny_cohort, tmp_path):
    wf = _workflow(tiny_cohort, tmp_path, tokenizer="hybrid", invariance_weight=0.1)
    wf.initialize()
    seen = {}
    trainer = wf.parser.get_parsed_content("train#trainer")
    from ignite.engine import Events

    @trainer.on(Events.ITERATION_COMPLETED)
    def _keep(engine):
        seen.setdefault("out", engine.state.output)

    wf.run()
    wf.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    pred = seen["out"]["pred"]
    assert "invariance" in pred and torch.isfinite(pred["invariance"]) and float(pred["invariance"]) > 0


def test_dense_tasks_build_only_the_chosen_decoder(tiny_cohort):
    """Whole-line hybrid tokens (no square in-plane patch, so no UNETR over the token grid) still segment through the
    default image-query decoder: the unused UNETR decoder is not built. The UNETR choice still builds on patches."""
    from kmtr_monai.linear_eval import bundle_parser
    from kmtr_monai.networks.dense_decoders import ImageQueryDecoder, TokenGridUNETRDecoder

    seg, data = BUNDLES / "segment-unetr", {"dataset_dir": str(tiny_cohort)}
    p = bundle_parser(seg, "tiny", {**data, "tokenizer": "hybrid", "kspace_patch": [1, 1, H], "kspace_norm": "scale"})
    head, enc = p.get_parsed_content("task_head"), p.get_parsed_content("kspace_mae")
    assert isinstance(head, ImageQueryDecoder) and head.grid == (S, T, H, 1)
    under, _, mask = make_batch(2)
    with torch.no_grad():
        tokens, _ = enc.encode(under, mask)
        assert head(tokens).shape == (2, 6, S, T, H, H)
    patches = {"tokenizer": "patch", "kspace_patch": [2, 8, 8], "decoder": "unetr"}
    unetr = bundle_parser(seg, "tiny", {**data, **patches}).get_parsed_content("task_head")
    assert isinstance(unetr, TokenGridUNETRDecoder)


@pytest.mark.parametrize("tokenizer", ["hybrid", "line"])
def test_traced_encoder_stays_right_for_another_mask(tokenizer):
    """``torch.jit.trace`` (MONAI's ``ckpt_export``) keeps the trace input's Python values as constants. Traced with
    every line sampled, the encoder must still pool an R=4 input exactly as eager does: the token count and the
    attention mask over padding must not be baked in from the trace input."""
    torch.manual_seed(0)
    net = build_kspace_mae("tiny", tokenizer=tokenizer, patch=[1, 1, H], norm="scale").drop_decoder().eval()

    class Pooled(torch.nn.Module):
        def __init__(self, mae):
            super().__init__()
            self.mae = mae

        def forward(self, kspace, mask):
            return self.mae.encode(kspace, mask)[1]

    under, full, mask = make_batch(2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(Pooled(net), (full, torch.ones_like(mask)))
        torch.testing.assert_close(traced(under, mask), Pooled(net)(under, mask), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(traced(full, torch.ones_like(mask)), Pooled(net)(under, mask), atol=1e-3)
