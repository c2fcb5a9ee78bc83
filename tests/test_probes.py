"""Linear probes of frozen encoders (kmtr_monai.probes)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kmtr_monai.probes import build_encoder, effective_rank, encoder_features, mean_pairwise_cosine, run_probe

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def _metrics(folder):
    with open(Path(folder) / "metrics.csv", newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}


def test_collapse_statistics():
    row = np.random.default_rng(0).standard_normal(7)
    assert mean_pairwise_cosine(np.tile(row, (5, 1))) == pytest.approx(1.0)
    assert mean_pairwise_cosine(np.array([[1.0, 0], [-1.0, 0]])) == pytest.approx(-1.0)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((20, 6)))
    assert effective_rank(q.T) == pytest.approx(6.0)  # 6 orthonormal rows
    assert effective_rank(np.outer([1.0, 2, 3, 4], row)) == pytest.approx(1.0)  # all multiples of one vector


def test_scratch_probe_end_to_end_and_features_are_cached(split_cohort, tmp_path, monkeypatch):
    import kmtr_monai.probes as probes
    from kmtr_monai.linear_eval import split_inputs

    state = torch.random.get_rng_state()
    rec = run_probe(split_cohort, BUNDLES, "tiny", "scratch", "mean", "regress", {}, 4, tmp_path / "p-mean",
                    tmp_path / "cache")  # fmt: skip
    assert torch.equal(state, torch.random.get_rng_state())  # the seeded draw leaves the global RNG alone
    assert rec["tests"] == {"4": "p-mean/test/R4"} and "val_mean_r2" in rec["validation"]
    folder = tmp_path / rec["tests"]["4"]
    m = _metrics(folder)
    test_eids = [str(i["eid"]) for i in json.loads((split_cohort / "datalist.json").read_text())["test"]]
    with open(folder / "phenotypes.csv", newline="") as f:
        assert [r["eid"] for r in csv.DictReader(f)] == test_eids

    # independent truth: a freshly built scratch encoder on the test inputs gives the stored collapse statistics
    net = build_encoder(BUNDLES, "tiny", "scratch", {})
    feats = encoder_features(net, split_inputs(split_cohort, BUNDLES, "tiny", "kspace", 4, "test", tmp_path / "cache"))
    z = feats["mean"] / np.linalg.norm(feats["mean"], axis=1, keepdims=True)
    n = len(z)
    assert m["mean_cosine"] == pytest.approx(((z @ z.T).sum() - n) / (n * (n - 1)), rel=1e-5)
    s, t, h, w = net.tokenizer.grid
    assert feats["mean"].shape == (n, net.dim) and feats["layout"].shape == (n, s * t * h * w * net.dim)
    layout = feats["layout"].reshape(n, s, t, h * w, net.dim)
    valid = np.abs(layout).sum(-1, keepdims=True) > 0  # hybrid cells without a sampled line are zeros
    cells = ((layout * valid).sum(3) / valid.sum(3)).reshape(n, -1)
    np.testing.assert_allclose(feats["view_time"], cells, rtol=1e-5, atol=1e-6)

    def forbidden(*a, **k):
        raise AssertionError("the cached features should have been reused")

    monkeypatch.setattr(probes, "build_encoder", forbidden)
    monkeypatch.setattr(probes, "split_inputs", forbidden)
    rec = run_probe(split_cohort, BUNDLES, "tiny", "scratch", "layout", "classify", {}, 4, tmp_path / "p-layout",
                    tmp_path / "cache")  # fmt: skip
    m = _metrics(tmp_path / rec["tests"]["4"])
    assert {"val_mean_auc", "mean_cosine", "effective_rank", "C_hypertension"} <= set(m)
    assert all(math.isfinite(v) for k, v in m.items() if k != "val_mean_auc")  # undefined per-target rows left out
    assert 1.0 <= m["effective_rank"] <= n + 1e-9 and not math.isnan(m["mean_cosine"])


def test_encoders_load_the_checkpoints_they_are_given(tmp_path):
    from kmtr_monai.linear_eval import bundle_parser

    parser = bundle_parser(BUNDLES / "regress", "tiny", {})
    torch.manual_seed(123)
    kmae, imae = parser.get_parsed_content("kspace_mae", lazy=False), parser.get_parsed_content("image_mae", lazy=False)
    torch.save({"model": kmae.state_dict()}, tmp_path / "stage1.pt")
    torch.save({"model": imae.state_dict()}, tmp_path / "image.pt")
    aligned = {k: v + 1.0 if v.is_floating_point() else v for k, v in kmae.drop_decoder().state_dict().items()}
    torch.save({"kspace_encoder": aligned}, tmp_path / "align.pt")
    ckpts = {"align": tmp_path / "align.pt", "stage1": tmp_path / "stage1.pt", "imagemae": tmp_path / "image.pt"}
    for name, want in (("stage1", kmae.state_dict()), ("kmtr", aligned), ("imagemae", imae.state_dict())):
        got = build_encoder(BUNDLES, "tiny", name, ckpts).state_dict()
        assert got and all(torch.equal(got[k], want[k]) for k in got), name
        assert not any(p.requires_grad for p in build_encoder(BUNDLES, "tiny", name, ckpts).parameters())
    a, b = (build_encoder(BUNDLES, "tiny", "scratch", {}).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["tokenizer.proj.weight"],
                                                                       kmae.state_dict()["tokenizer.proj.weight"])
    assert getattr(build_encoder(BUNDLES, "tiny", "imagemae", ckpts), "input_kind", None) == "image"
    with pytest.raises(FileNotFoundError, match="align"):
        build_encoder(BUNDLES, "tiny", "kmtr", {})
