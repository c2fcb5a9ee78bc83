"""Retrieval/probe metrics, Ignite metric classes, DualEncoder and checkpoint helpers."""

import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine

from kmtr_monai.metrics import (
    LinearProbeR2, RetrievalTopK, linear_probe_r2, linear_probe_r2_cv, r2_gain_interval, retrieval_topk,
)  # fmt: skip
from kmtr_monai.engines.checkpoint import load_encoder_weights, save_checkpoint_atomic
from kmtr_monai.networks.dual import DualEncoder, Projector
from kmtr_monai.networks.mae import build_image_mae, build_kspace_mae
from kmtr_monai.networks.tokenizers import ImageTokenizer


# ---------------------------------------------------------------- retrieval
def test_retrieval_identical_embeddings_is_one():
    z = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    assert retrieval_topk(z, z.clone(), ks=(1, 5)) == {"top1": 1.0, "top5": 1.0}


def test_retrieval_known_permutation():
    # queries e_i, gallery row j = e_perm[j]: query i's own gallery item scores 1 iff perm[i] == i; otherwise it
    # scores 0 and exactly one other item (j = perm^-1(i)) scores 1 -> rank 1: a top-1 miss, a top-5 hit.
    n = 10
    perm = torch.tensor([0, 2, 1, 3, 5, 4, 6, 9, 7, 8])
    fixed = int((perm == torch.arange(n)).sum())  # 3 fixed points
    eye = torch.eye(n)
    res = retrieval_topk(eye, eye[perm], ks=(1, 2, 5))
    assert res == {"top1": fixed / n, "top2": 1.0, "top5": 1.0}


def test_retrieval_matches_numpy_argsort_reference():
    g = np.random.default_rng(1)
    zq = g.normal(size=(50, 6))
    zg = zq + 1.5 * g.normal(size=(50, 6))
    qn = zq / np.linalg.norm(zq, axis=1, keepdims=True)
    gn = zg / np.linalg.norm(zg, axis=1, keepdims=True)
    order = np.argsort(-(qn @ gn.T), axis=1)  # no ties with continuous data
    rank = np.argmax(order == np.arange(50)[:, None], axis=1)
    res = retrieval_topk(torch.tensor(zq), torch.tensor(zg), ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert res[f"top{k}"] == pytest.approx(float(np.mean(rank < k)))
    assert 0 < res["top1"] < res["top10"] < 1  # a non-trivial case


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="equal shape"):
        retrieval_topk(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="ks"):
        retrieval_topk(torch.ones(3, 2), torch.ones(3, 2), ks=(0,))


# ---------------------------------------------------------------- linear probe
def _linear_data(n, d=8, p=3, seed=0, noise=0.0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    w = g.normal(size=(d, p)) * np.array([1.0, 100.0, 0.01])  # targets of very different units
    return x, x @ w + 5.0 + noise * g.normal(size=(n, p))


def test_linear_probe_tunes_ridge_for_few_subjects():
    # 80 training subjects, 70 correlated feature dims driven by 4 latent factors (like embeddings): an untuned
    # (near-OLS) ridge fits the noise (seen: R^2 -0.48); alpha chosen by leave-one-out generalises (seen: 0.88)
    g = np.random.default_rng(1)
    z = g.normal(size=(300, 4))
    x = z @ g.normal(size=(4, 70)) + g.normal(size=(300, 70))
    y = z @ np.array([1.0, -1.0, 0.5, 0.8]) + 0.5 * g.normal(size=300)
    tuned = linear_probe_r2(x[:80], y[:80], x[80:], y[80:])["mean_r2"]
    untuned = linear_probe_r2(x[:80], y[:80], x[80:], y[80:], alpha=1e-6)["mean_r2"]
    assert tuned > 0.7 and untuned < 0.3, (tuned, untuned)
    with pytest.raises(ValueError, match="alpha"):
        linear_probe_r2(x[:80], y[:80], x[80:], y[80:], alpha=-1.0)


def test_linear_probe_exact_linear_data_r2_one():
    x, y = _linear_data(400)
    res = linear_probe_r2(x[:300], y[:300], x[300:], y[300:], alpha=1e-6)
    assert res["r2"].shape == (3,)
    np.testing.assert_allclose(res["r2"], 1.0, atol=1e-8)
    assert res["mean_r2"] == pytest.approx(1.0, abs=1e-8)


def test_linear_probe_noise_r2_zero():
    g = np.random.default_rng(3)
    x, y = g.normal(size=(3000, 8)), g.normal(size=(3000, 2))
    res = linear_probe_r2(x[:2000], y[:2000], x[2000:], y[2000:])
    np.testing.assert_allclose(res["r2"], 0.0, atol=0.02)


def test_linear_probe_cv_and_torch_input():
    x, y = _linear_data(100, seed=4, noise=0.0)
    res = linear_probe_r2_cv(torch.tensor(x), torch.tensor(y[:, 0]), alpha=1e-6, n_splits=5)
    assert res["r2"].shape == (1,) and res["mean_r2"] == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="row counts"):
        linear_probe_r2(x[:10], y[:9], x, y)
    with pytest.raises(ValueError, match="n_splits"):
        linear_probe_r2_cv(x[:6], y[:6], n_splits=5)


def test_linear_probe_returns_its_test_predictions():
    x, y = _linear_data(200, seed=6)
    res = linear_probe_r2(x[:150], y[:150], x[150:], y[150:])
    assert res["pred"].shape == (50, 3)
    from sklearn.metrics import r2_score

    np.testing.assert_allclose(res["r2"], r2_score(y[150:], res["pred"], multioutput="raw_values"))


def test_r2_gain_interval_against_sklearn_and_its_coverage():
    from sklearn.metrics import r2_score

    g = np.random.default_rng(7)
    y = g.normal(size=(450, 4))
    weak, strong = 0.2 * y + g.normal(size=y.shape), 0.6 * y + 0.7 * g.normal(size=y.shape)
    res = r2_gain_interval(y, weak, strong)
    exact = r2_score(y, strong, multioutput="raw_values").mean() - r2_score(y, weak, multioutput="raw_values").mean()
    assert res["gain"] == pytest.approx(exact, abs=1e-12)
    assert 0.0 < res["low"] < res["gain"] < res["high"]  # a large gain: the interval excludes 0
    twin = 0.2 * y + g.normal(size=y.shape)  # as good as `weak`, independent errors: the interval includes 0
    same = r2_gain_interval(y, weak, twin)
    assert same["low"] < 0.0 < same["high"]
    y_nan = y.copy()
    y_nan[:50, 0] = np.nan  # a target's NaN rows are left out of its R^2 only
    ok = np.isfinite(y_nan[:, 0])
    per = [r2_score(y_nan[ok, 0], p[ok, 0]) for p in (weak, strong)]
    rest = [r2_score(y[:, 1:], p[:, 1:], multioutput="raw_values") for p in (weak, strong)]
    want = (per[1] + rest[1].sum() - per[0] - rest[0].sum()) / 4
    assert r2_gain_interval(y_nan, weak, strong)["gain"] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        r2_gain_interval(y, weak[:, :3], strong)


# ---------------------------------------------------------------- ignite metrics
def test_ignite_metrics_accumulate_over_epoch():
    g = torch.Generator().manual_seed(5)
    zq = torch.randn(24, 6, generator=g)
    zg = zq + 0.8 * torch.randn(24, 6, generator=g)
    y = zq @ torch.randn(6, 2, generator=g)
    batches = [slice(i, i + 8) for i in range(0, 24, 8)]

    def step(engine, sl):  # decollated MONAI-style output: a list of per-sample dicts
        return [{"z_kspace": zq[i], "z_image": zg[i], "y": y[i]} for i in range(sl.start, sl.stop)]

    def pick(*keys):
        return lambda out: tuple([o[k] for o in out] for k in keys)

    engine = Engine(step)
    RetrievalTopK(k=1, output_transform=pick("z_kspace", "z_image")).attach(engine, "top1")
    RetrievalTopK(k=(1, 5), output_transform=pick("z_kspace", "z_image")).attach(engine, "topk")
    probe = LinearProbeR2(alpha=1e-6, n_splits=4, output_transform=pick("z_kspace", "y"))
    probe.attach(engine, "probe_r2")
    engine.run(batches, max_epochs=1)
    m = engine.state.metrics
    assert m["top1"] == retrieval_topk(zq, zg, ks=(1,))["top1"]
    assert m["topk"] == retrieval_topk(zq, zg, ks=(1, 5))
    assert m["probe_r2"] == pytest.approx(1.0, abs=1e-6) and probe.per_target.shape == (2,)


def test_ignite_metric_dict_output_and_errors():
    z = torch.randn(6, 4)
    m = RetrievalTopK(k=1)
    with pytest.raises(RuntimeError, match="at least one update"):
        m.compute()
    m.update((z, z))
    assert m.compute() == 1.0
    m.reset()
    with pytest.raises(ValueError, match="rows"):
        m.update((z, z[:3]))
    engine = Engine(lambda e, b: {"z_kspace": z, "z_image": z})  # mapping output read by required keys
    RetrievalTopK(k=1).attach(engine, "top1")
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["top1"] == 1.0


# ---------------------------------------------------------------- dual encoder
class _StandIn(nn.Module):
    """Stand-in encoder: linear token embedding over a flattened input, class token prepended."""

    def __init__(self, in_features, width=12):
        super().__init__()
        self.hidden_size = width
        self.embed = nn.Linear(in_features, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.drop = nn.Dropout(0.5)

    def encode(self, x, mask=None):
        tok = self.drop(self.embed(x))  # (B, L, in) -> (B, L, C)
        if mask is not None:
            tok = tok * mask[..., None]
        tok = torch.cat([self.cls.expand(x.shape[0], -1, -1), tok], 1)
        return tok, tok[:, 0]


class _PaddedStandIn(_StandIn):
    """Returns ``valid`` (B, n) when asked, like KspaceMAE.encode(..., return_valid=True)."""

    def encode(self, x, mask=None, return_valid=False):
        tok, pooled = super().encode(x)
        valid = torch.ones(tok.shape[0], tok.shape[1] - 1, dtype=torch.bool)
        valid[0, -2:] = False  # last two tokens of sample 0 are padding
        return (tok, pooled, valid) if return_valid else (tok, pooled)


def test_dual_encoder_shapes_pooling_and_freezing():
    img_enc, k_enc = _StandIn(5), _StandIn(4, width=10)
    model = DualEncoder(img_enc, k_enc, embed_dim=16, pooling="mean", freeze_image=True)
    image, kspace, mask = torch.randn(3, 7, 5), torch.randn(3, 6, 4), torch.ones(3, 6)
    model.train()
    assert not img_enc.training and k_enc.training  # frozen encoder kept in eval
    out = model(image, kspace, mask)
    assert out["z_image"].shape == (3, 16) and out["z_kspace"].shape == (3, 16)
    (out["z_image"].sum() + out["z_kspace"].sum()).backward()
    assert all(p.grad is None and not p.requires_grad for p in img_enc.parameters())
    assert all(p.grad is not None for p in k_enc.parameters())
    assert all(p.grad is not None for p in model.image_proj.parameters())
    # mean pooling = projector(mean of non-class tokens) with the frozen encoder in eval (no dropout)
    tokens = img_enc.encode(image)[0]
    torch.testing.assert_close(out["z_image"], model.image_proj(tokens[:, 1:].mean(1)))


class _NoWidth(nn.Module):
    def encode(self, x, mask):
        return x, x[:, 0]


def test_dual_encoder_mean_pooling_skips_padding_and_cls():
    enc = _PaddedStandIn(4).eval()
    x = torch.randn(2, 5, 4)
    tok = enc.encode(x)[0]
    mean = DualEncoder(enc, _StandIn(4), pooling="mean", embed_dim=8).eval()
    z = mean.embed_image(x)
    torch.testing.assert_close(z[0], mean.image_proj(tok[0, 1:4].mean(0, keepdim=True))[0])  # tokens 4, 5: padding
    torch.testing.assert_close(z[1], mean.image_proj(tok[1, 1:].mean(0, keepdim=True))[0])
    cls = DualEncoder(enc, _StandIn(4), pooling="cls", embed_dim=8).eval()
    torch.testing.assert_close(cls.embed_image(x), cls.image_proj(tok[:, 0]))
    with pytest.raises(ValueError, match="pooling"):
        DualEncoder(_StandIn(4), _StandIn(4), pooling="max")
    with pytest.raises(TypeError, match="encode"):
        DualEncoder(nn.Linear(2, 2), _StandIn(4))
    with pytest.raises(ValueError, match="kspace_dim"):
        DualEncoder(_StandIn(4), _NoWidth())
    assert DualEncoder(_StandIn(4), _NoWidth(), kspace_dim=3).kspace_proj.net[0].in_features == 3


def test_dual_encoder_on_tiny_maes_is_batch_independent():
    # real Stage I encoders; line tokens -> subjects with different numbers of sampled lines are padded in a batch,
    # so batch independence of mean pooling shows that the padding is excluded
    torch.manual_seed(0)
    image_mae, kspace_mae = build_image_mae("tiny"), build_kspace_mae("tiny")
    model = DualEncoder(image_mae, kspace_mae, embed_dim=16, pooling="mean", freeze_image=True).eval()
    _, s, t, h, w = kspace_mae.shape
    image = torch.rand(2, s, t, h, w)
    mask = torch.zeros(2, s, t, h, dtype=torch.bool)
    mask[..., h // 2 - 2 : h // 2 + 2] = True
    mask[0, ..., ::4] = True
    mask[1, ..., ::2] = True  # subject 1 has more lines
    kspace = torch.randn(2, 2, s, t, h, w) * mask[:, None, ..., None]
    with torch.no_grad():
        out = model(image, kspace, mask)
        alone = model.embed_kspace(kspace[:1], mask[:1])
    assert out["z_image"].shape == (2, 16) and out["z_kspace"].shape == (2, 16)
    torch.testing.assert_close(out["z_kspace"][:1], alone, atol=1e-5, rtol=1e-4)


def test_view_time_pooling_keeps_views_and_phases_apart():
    from kmtr_monai.networks.mae import pool_tokens

    b, s, t, per, c = 2, 3, 2, 4, 5
    tokens = torch.randn(b, 1 + s * t * per, c)
    valid = torch.rand(b, s * t * per) > 0.3
    valid[:, :per] = False  # a whole cell without valid tokens pools to 0, not NaN
    out = pool_tokens(tokens, "view_time", valid, cells=(s, t))
    assert out.shape == (b, s * t * c)
    cells = tokens[:, 1:].reshape(b, s, t, per, c)
    for i in range(s):
        for j in range(t):
            keep = valid.reshape(b, s, t, per)[:, i, j]
            want = torch.stack([cells[k, i, j][keep[k]].mean(0) if keep[k].any() else torch.zeros(c) for k in range(b)])
            got = out.reshape(b, s, t, c)[:, i, j]
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(pool_tokens(tokens, "view_time", cells=(s, t)), cells.mean(3).flatten(1))
    with pytest.raises(ValueError, match="grid"):
        pool_tokens(tokens, "view_time")
    with pytest.raises(ValueError, match="do not split"):
        pool_tokens(tokens, "view_time", cells=(5, 5))


def test_dual_encoder_view_time_pooling_on_tiny_maes():
    torch.manual_seed(0)
    image_mae, kspace_mae = build_image_mae("tiny"), build_kspace_mae("tiny", tokenizer="patch")
    model = DualEncoder(image_mae, kspace_mae, embed_dim=16, pooling="view_time").eval()
    cells = image_mae.view_time_cells
    assert cells == kspace_mae.view_time_cells == image_mae.tokenizer.grid[:2]
    assert model.image_proj.net[0].in_features == cells[0] * cells[1] * 64  # tiny: token width 64
    _, s, t, h, w = kspace_mae.shape
    mask = torch.zeros(2, s, t, h, dtype=torch.bool)
    mask[..., ::2] = True
    with torch.no_grad():
        out = model(torch.rand(2, s, t, h, w), torch.randn(2, 2, s, t, h, w), mask)
    assert out["h_kspace"].shape == (2, cells[0] * cells[1] * 64) and out["z_kspace"].shape == (2, 16)
    with pytest.raises(ValueError, match="view_time.*line"):
        DualEncoder(image_mae, build_kspace_mae("tiny", tokenizer="line"), pooling="view_time")
    with pytest.raises(ValueError, match="view_time.*line"):
        build_kspace_mae("tiny", tokenizer="line", pool="view_time")


def test_projector():
    p = Projector(10, 20, 7)
    assert p(torch.randn(4, 10)).shape == (4, 7)
    assert [m.weight.shape for m in p.net if isinstance(m, nn.Linear)] == [(20, 10), (7, 20)]
    with pytest.raises(ValueError, match="in_dim"):
        Projector(0)


# ---------------------------------------------------------------- checkpoints
def test_load_encoder_weights_roundtrip_with_key_and_prefix(tmp_path):
    src = DualEncoder(_StandIn(5), _StandIn(4), embed_dim=8)
    path = save_checkpoint_atomic({"network": src.state_dict(), "epoch": 3}, tmp_path / "align.pt")
    dst = _StandIn(4)
    assert load_encoder_weights(dst, path, key="network", prefix="kspace_encoder.") is dst
    for k, v in src.kspace_encoder.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_load_encoder_weights_mismatch_names_file_and_keys(tmp_path):
    enc = _StandIn(4, width=12)
    state = enc.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["cls"]
    state["embed.weight"] = torch.zeros(3, 4)  # wrong shape
    path = tmp_path / "stage1.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_encoder_weights(_StandIn(4, width=12), path)
    msg = str(err.value)
    assert str(path) in msg and "cls" in msg and "extra.weight" in msg and "embed.weight" in msg
    assert "(3, 4)" in msg and "(12, 4)" in msg
    with pytest.raises(ValueError, match="key 'nope' not found"):
        load_encoder_weights(enc, path, key="nope")
    with pytest.raises(ValueError, match="prefix"):
        load_encoder_weights(enc, path, prefix="image_encoder.")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder_weights(enc, tmp_path / "missing.pt")


def test_load_encoder_weights_checks_the_recorded_input_grid(tmp_path, caplog):
    """48 x 48 and 64 x 48 tokenizers have the same weights' shapes; only the recorded grid tells them apart."""
    crop = ImageTokenizer(n_views=2, n_lax=1, n_frames=4, size=48, patch=(2, 8, 8), dim=16)
    full_pe = ImageTokenizer(n_views=2, n_lax=1, n_frames=4, size=(64, 48), patch=(2, 8, 8), dim=16)
    assert all(crop.state_dict()[k].shape == v.shape for k, v in full_pe.state_dict().items() if k != "input_shape")
    path = save_checkpoint_atomic(crop.state_dict(), tmp_path / "crop.pt")
    with pytest.raises(ValueError, match=r"crop.pt.*input_shape = \(S, T, H, W\) \(2, 4, 48, 48\).*\(2, 4, 64, 48\)"):
        load_encoder_weights(full_pe, path)
    assert torch.equal(load_encoder_weights(ImageTokenizer(2, 1, 4, 48, (2, 8, 8), 16), path).proj.weight,
                       crop.proj.weight)  # fmt: skip
    legacy = {k: v for k, v in crop.state_dict().items() if k != "input_shape"}  # saved before the grid was recorded
    path = save_checkpoint_atomic(legacy, tmp_path / "legacy.pt")
    with caplog.at_level("WARNING"):
        assert torch.equal(load_encoder_weights(full_pe, path).proj.weight, crop.proj.weight)
    assert "legacy.pt: no recorded input grid" in caplog.text
    assert full_pe.input_shape.tolist() == [2, 4, 64, 48]  # its own record is kept


def test_save_checkpoint_atomic_leaves_no_tmp_files(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    save_checkpoint_atomic({"a": torch.arange(3)}, target)
    save_checkpoint_atomic({"a": torch.arange(4)}, target)  # overwrite
    assert os.listdir(target.parent) == ["model.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(4))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint_atomic(Unpicklable(), target)
    assert os.listdir(target.parent) == ["model.pt"]  # failed write cleaned up, old file intact
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(4))
