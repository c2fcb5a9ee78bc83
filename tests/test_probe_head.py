"""The probe-initialised head (``head_kind: "probe"``): the closed-form fit put into the network equals the probe
protocol's predictions, the handler fits it once at the start of training, and the bundles train and reload it."""

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from test_bundles import run_bundle
from test_heads import S, T, make_batch, tiny_mae

from kmtr_monai.engines import PrepareKeys
from kmtr_monai.engines.probe_init import ProbeHeadInit
from kmtr_monai.linear_eval import fit_linear_readout, linear_eval
from kmtr_monai.networks import DiseaseClassifier, LinearProbeHead, PhenotypeRegressor, TaskModel, pool_tokens
from kmtr_monai.networks.heads import TemporalMLPHead, build_vector_head

torch.set_num_threads(1)


def _splits(seed=0, n=(60, 30, 30), d=200, k=3):
    """Features with a linear signal in the first 10 columns, one constant column, targets far from 0."""
    rng = np.random.default_rng(seed)
    x = {s: rng.normal(size=(m, d)) for s, m in zip(("training", "validation", "test"), n)}
    w = np.zeros((d, k))
    w[:10] = rng.normal(size=(10, k))
    for s in x:
        x[s][:, 7] = 2.5  # constant feature
    y = {s: x[s] @ w * 3 + rng.normal(size=(len(x[s]), k)) + 40.0 for s in x}
    return x, y


@pytest.mark.parametrize("task", ["regress", "classify"])
def test_readout_weights_reproduce_the_probe_predictions(task):
    x, y = _splits()
    if task == "classify":
        y = {s: (v > 40.0).astype(float) for s, v in y.items()}
    y["training"][3, 1] = np.nan  # a missing target is dropped for its column only
    probe = linear_eval(x, y, task, names=["a", "b", "c"])
    fit = fit_linear_readout(x["training"], x["validation"], y["training"], y["validation"], task)
    out = ((x["test"] - fit["mean"]) / fit["scale"]) @ fit["weight"].T + fit["bias"]
    if task == "classify":
        out = 1.0 / (1.0 + np.exp(-out))
    np.testing.assert_allclose(out, probe["pred"]["test"], rtol=1e-6, atol=1e-8)
    assert np.all(fit["weight"][:, 7] == 0.0) and fit["scale"][7] == 1.0  # the constant feature reads nothing
    np.testing.assert_allclose(fit["val_score"], [probe["val_score"][n] for n in "abc"])


def test_readout_refuses_mismatched_shapes():
    x, y = _splits()
    with pytest.raises(ValueError, match="features"):
        fit_linear_readout(x["training"], x["validation"][:, :5], y["training"], y["validation"], "regress")
    with pytest.raises(ValueError, match="targets of validation"):
        fit_linear_readout(x["training"], x["validation"], y["training"], y["validation"][:4], "regress")
    with pytest.raises(ValueError, match="task"):
        fit_linear_readout(x["training"], x["validation"], y["training"], y["validation"], "segment")


def test_probe_head_shapes_and_checks():
    head = LinearProbeHead(8, 2, 3, 4)
    tokens = torch.randn(5, 1 + 2 * 3 * 2, 8)  # two tokens per (view, time) cell
    assert head.features(tokens).shape == (5, 7 * 8)
    assert torch.equal(head(tokens), torch.zeros(5, 4))  # the mean predictor until fitted
    assert not bool(head.fitted)
    with pytest.raises(ValueError, match="weight must be finite with shape"):
        head.set_readout(torch.zeros(56), torch.ones(56), torch.zeros(3, 56), torch.zeros(4))
    with pytest.raises(ValueError, match="scale must be > 0"):
        head.set_readout(torch.zeros(56), torch.zeros(56), torch.zeros(4, 56), torch.zeros(4))
    assert isinstance(build_vector_head("temporal", 8, (2, 3), 4), TemporalMLPHead)
    with pytest.raises(ValueError, match="head_kind must be one of"):
        build_vector_head("mlp", 8, (2, 3), 4)


def _entries(batches):
    """Per-subject dicts, a list as a map-style dataset (the handler batches them itself, in order)."""
    return [{"kspace": k[i], "mask": m[i], "phenotypes": y[i]} for k, m, y in batches for i in range(len(k))]


@pytest.mark.parametrize("task", ["regress", "classify"])
def test_handler_fits_the_head_to_the_probe_of_its_features(task):
    """A frozen k-space encoder: the fitted network's validation outputs equal the probe protocol's predictions on
    features computed independently (encode + pool_tokens), in the wrapper's output units."""
    enc = tiny_mae().drop_decoder()
    head = LinearProbeHead(enc.dim, S, T // 2, 3)
    wrapper = (PhenotypeRegressor(head, [50.0, 60.0, 70.0], [5.0, 6.0, 7.0]) if task == "regress"
               else DiseaseClassifier(head))  # fmt: skip
    model = TaskModel(enc, wrapper, freeze_encoder=True)
    batches = {}
    for split, seed in (("training", 0), ("validation", 1)):
        out = []
        for i in range(4):
            ks, mask, img, _ = make_batch(6, seed=10 * seed + i)
            signal = img.mean((1, 2, 3, 4))[:, None] * torch.tensor([30.0, 20.0, 10.0]) + 50.0
            y = signal if task == "regress" else (signal > signal.median(0).values).float()
            out.append((ks, mask, y))
        batches[split] = out
    handler = ProbeHeadInit(model, {s: _entries(b) for s, b in batches.items()},
                            PrepareKeys(["kspace", "mask"], "phenotypes"), batch_size=5)  # fmt: skip
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert bool(head.fitted)

    def feats(split):
        rows, ys = [], []
        with torch.no_grad():
            for ks, mask, y in batches[split]:
                tokens, _, valid = enc.encode(ks, mask, return_valid=True)
                rows.append(torch.cat([tokens[:, 0], pool_tokens(tokens, "view_time", valid, (S, T // 2))], 1))
                ys.append(y)
        return torch.cat(rows).double().numpy(), torch.cat(ys).double().numpy()

    (x, y), (xv, yv) = feats("training"), feats("validation")
    probe = linear_eval({"training": x, "validation": xv, "test": xv}, {"training": y, "validation": yv, "test": yv},
                        task, names=["a", "b", "c"])  # fmt: skip
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(ks, mask) for ks, mask, _ in batches["validation"]]).double().numpy()
    if task == "classify":
        pred = 1.0 / (1.0 + np.exp(-pred))
    np.testing.assert_allclose(pred, probe["pred"]["test"], rtol=1e-3, atol=1e-3)

    weight = head.linear.weight.detach().clone()
    engine.run([0], max_epochs=2)  # a second start (a resumed run) leaves the fitted head alone
    assert torch.equal(head.linear.weight, weight)


def test_handler_ignores_networks_without_a_probe_head():
    enc = tiny_mae().drop_decoder()
    model = TaskModel(enc, DiseaseClassifier(TemporalMLPHead(enc.dim, S, T // 2, 3)))
    handler = ProbeHeadInit(model, None, None)  # would fail if it touched the data
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert engine.has_event_handler(handler, Events.STARTED)


@pytest.mark.parametrize("name", ["regress", "classify"])
def test_bundle_trains_and_reloads_a_probe_head(tiny_cohort, tmp_path, name):
    """Through the bundle's own configs: a frozen image encoder with ``head_kind: probe`` trains, the checkpoint holds
    the fitted read-out, and the evaluate config reproduces the best checkpoint's key metric."""
    over = {"encoder": "@baselines#vit", "input": "image", "freeze_encoder": True, "head_kind": "probe",
            "learning_rate": 1e-5}  # fmt: skip
    run_bundle(name, tiny_cohort, tmp_path, **over)
    state = torch.load(tmp_path / name / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert bool(state["model"]["head.head.fitted"])
    assert float(state["model"]["head.head.linear.weight"].abs().sum()) > 0
    key = "val_mean_mae" if name == "regress" else "val_mean_auc"
    run_bundle(name, tiny_cohort, tmp_path, workflow="evaluate", **over)
    metrics = dict(r.split(",") for r in (tmp_path / name / "eval" / "metrics.csv").read_text().split())
    assert float(metrics[key]) == pytest.approx(state["metrics"][key], rel=1e-5)
