"""Stage III evaluation: pure metrics against hand-computed values and sklearn/skimage, and the Ignite metrics."""

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import average_precision_score, f1_score, precision_score, r2_score, recall_score, roc_auc_score

from kmtr_monai.constants import DISEASES
from kmtr_monai.evaluation import (
    BestF1Thresholds, ConformalHalfwidths, MagnitudePSNR, MagnitudeSSIM, MultiLabelAUC, PhenotypeMAE, PhenotypeR2,
    SegmentationDice, best_f1_threshold, best_f1_thresholds, classification_metrics, conformal_halfwidth,
    dice_per_class, interval_coverage, mean_predictor_mae, prevalence_predictor_metrics, psnr_magnitude,
    regression_metrics, ssim_2d,
)  # fmt: skip


def _run(metric, batches):
    """Attach ``metric`` to an engine whose output is the batch itself, run one epoch, return the metric."""
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "m")
    engine.run(batches, max_epochs=1)
    return engine.state.metrics["m"]


# ------------------------------------------------------------------------------------------------ best-F1 threshold
def test_best_f1_threshold_hand_example():
    # scores sorted: .9(+) .8(+) .7(-) .4(-) .35(+) .1(-); F1 at t = .9, .8, .7, .4, .35, .1:
    # 1/2, 4/5, 2/3, 4/7, 3/4, 2/3 -> best t = .8 (TP 2, FP 0, FN 1)
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]
    assert best_f1_threshold(y, p) == pytest.approx(0.8)


def test_best_f1_threshold_ties_go_to_highest_threshold():
    # t = .9: P 1, R 1/2 -> F1 2/3; t = .2: P 1/2, R 1 -> F1 2/3 (tie); t = .8, .7 lower
    assert best_f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.2]) == pytest.approx(0.9)


def test_best_f1_threshold_matches_brute_force_sklearn():
    g = np.random.default_rng(3)
    y = (g.random(300) < 0.25).astype(int)
    p = np.clip(0.3 * y + 0.5 * g.random(300), 0, 1)
    t = best_f1_threshold(y, p)
    f1s = {c: f1_score(y, (p >= c).astype(int)) for c in np.unique(p)}
    best = max(f1s.values())
    assert f1s[t] == pytest.approx(best)
    assert t == max(c for c, v in f1s.items() if np.isclose(v, best))


def test_best_f1_threshold_degenerate_cases():
    with pytest.warns(UserWarning, match="no positive"):
        assert best_f1_threshold([0, 0, 0], [0.2, 0.6, 0.9]) == 0.5
    assert best_f1_threshold([1, 1, 1], [0.2, 0.6, 0.9]) == pytest.approx(0.2)  # call everyone positive
    assert best_f1_threshold([1, np.nan, 0], [0.7, 0.9, 0.1]) == pytest.approx(0.7)  # NaN label row dropped
    with pytest.raises(ValueError, match="0/1"):
        best_f1_threshold([0, 2], [0.1, 0.2])
    np.testing.assert_allclose(best_f1_thresholds([[0, 1], [1, 1]], [[0.2, 0.3], [0.8, 0.4]]), [0.8, 0.3])


# ------------------------------------------------------------------------------------------------- classification
def _disease_data(n=400, seed=0):
    g = np.random.default_rng(seed)
    y = (g.random((n, 3)) < [0.1, 0.3, 0.2]).astype(float)
    prob = np.clip(0.35 * y + 0.6 * g.random((n, 3)), 0, 1)
    return y, prob


def test_classification_metrics_match_sklearn_with_missing_labels():
    y, prob = _disease_data()
    y[::7, 1] = np.nan  # missing labels of one disease: those rows are left out for it only
    thr = np.array([0.5, 0.4, 0.6])
    res = classification_metrics(y, prob, thr)
    for j, name in enumerate(DISEASES):
        ok = ~np.isnan(y[:, j])
        yj, pj = y[ok, j].astype(int), prob[ok, j]
        pred = (pj >= thr[j]).astype(int)
        assert res[name]["auc"] == pytest.approx(roc_auc_score(yj, pj))
        assert res[name]["ap"] == pytest.approx(average_precision_score(yj, pj))
        assert res[name]["f1"] == pytest.approx(f1_score(yj, pred))
        assert res[name]["recall"] == pytest.approx(recall_score(yj, pred))
        assert res[name]["precision"] == pytest.approx(precision_score(yj, pred))
        assert res[name]["n"] == ok.sum()
    assert res["mean"]["auc"] == pytest.approx(np.mean([res[n]["auc"] for n in DISEASES]))
    with pytest.raises(ValueError, match=r"thresholds must have shape \(3,\)"):
        classification_metrics(y, prob, [0.5, 0.5])


def test_prevalence_predictor_reference():
    y, _ = _disease_data(seed=1)
    res = prevalence_predictor_metrics(y[:200], y[200:])
    for j, name in enumerate(DISEASES):
        q = y[200:, j].mean()
        assert res[name]["auc"] == pytest.approx(0.5)
        assert res[name]["ap"] == pytest.approx(q)
        assert res[name]["recall"] == 1.0
        assert res[name]["f1"] == pytest.approx(2 * q / (1 + q))


# ----------------------------------------------------------------------------------------------------- regression
def test_regression_metrics_ignore_nan_targets():
    y = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0], [np.nan, 40.0]])
    p = np.array([[1.5, 12.0], [2.0, 99.0], [2.0, 27.0], [100.0, 40.0]])
    res = regression_metrics(y, p, names=["a", "b"])
    assert res["a"]["mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert res["b"]["mae"] == pytest.approx((2 + 3 + 0) / 3)
    assert res["a"]["r2"] == pytest.approx(r2_score([1, 2, 3], [1.5, 2, 2]))
    assert res["b"]["r2"] == pytest.approx(r2_score([10, 30, 40], [12, 27, 40]))
    assert res["mean"]["mae"] == pytest.approx((0.5 + 5 / 3) / 2)
    assert (res["a"]["n"], res["b"]["n"]) == (3, 3)
    with pytest.raises(ValueError, match="same shape"):
        regression_metrics(y, p[:, :1], names=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(y, np.where(np.isnan(y), 0, np.nan), names=["a", "b"])


def test_mean_predictor_mae():
    train = np.array([[1.0, 0.0], [3.0, np.nan], [2.0, 4.0]])  # means 2, 2
    test = np.array([[0.0, 5.0], [4.0, np.nan]])
    np.testing.assert_allclose(mean_predictor_mae(train, test), [2.0, 3.0])


# ------------------------------------------------------------------------------------------------------ conformal
def test_conformal_finite_sample_rank_and_nan():
    r = np.stack([np.arange(1.0, 10.0), np.r_[np.arange(1.0, 9.0), np.nan]], axis=1)  # n = 9 and n = 8
    q = conformal_halfwidth(r, coverage=0.9)
    assert q[0] == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert q[1] == np.inf  # ceil(9 * 0.9) = 9 > 8 finite residuals
    assert conformal_halfwidth(np.arange(1.0, 20.0), coverage=0.5)[0] == 10.0  # ceil(20 * .5) = 10th


def test_conformal_coverage_on_gaussian_noise():
    g = np.random.default_rng(0)
    cal = g.normal(0, 1, (2000, 2)) * [1.0, 3.0]  # residuals of a perfect mean predictor, sigma 1 and 3
    q = conformal_halfwidth(np.abs(cal), coverage=0.9)
    np.testing.assert_allclose(q, [1.645, 3 * 1.645], rtol=0.06)
    y = g.normal(0, 1, (20000, 2)) * [1.0, 3.0]
    cov = interval_coverage(y, -np.broadcast_to(q, y.shape), np.broadcast_to(q, y.shape))
    assert np.all(np.abs(cov - 0.9) < 0.02)


def test_interval_coverage_nan_targets():
    y = np.array([[0.0], [2.0], [np.nan], [5.0]])
    cov = interval_coverage(y, np.full((4, 1), -1.0), np.full((4, 1), 3.0))
    assert cov[0] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------- segmentation
def _seg_example():
    """2 subjects, 2 views (view 1 invalid), 1 frame, 4x4; hand-computed Dice in the test."""
    tgt = torch.zeros(2, 2, 1, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(tgt)
    # subject 0, view 0: LV target 4 px, pred 3 of them + 1 extra -> 2*3/(4+4) = 0.75
    tgt[0, 0, 0, 0, :4] = 1
    pred[0, 0, 0, 0, :3] = 1
    pred[0, 0, 0, 1, 0] = 1
    # MYO target 2 px, pred 2 px overlapping 1 -> 2*1/(2+2) = 0.5
    tgt[0, 0, 0, 2, :2] = 2
    pred[0, 0, 0, 2, 1:3] = 2
    # RV predicted but absent from the target -> NaN (ignore_empty), skipped
    pred[0, 0, 0, 3, 3] = 3
    # invalid view 1: garbage, must not count
    tgt[:, 1] = 1
    pred[:, 1] = 4
    # subject 1: LV perfect -> 1.0; no MYO anywhere -> NaN
    tgt[1, 0, 0, 1:3, 1:3] = 1
    pred[1, 0, 0, 1:3, 1:3] = 1
    valid = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    return pred, tgt, valid


def test_dice_per_class_hand_computed():
    pred, tgt, valid = _seg_example()
    res = dice_per_class(pred, tgt, valid)
    assert res["LV"] == pytest.approx((0.75 + 1.0) / 2)
    assert res["MYO"] == pytest.approx(0.5)
    assert all(math.isnan(res[c]) for c in ("RV", "LA", "RA"))
    assert res["mean_foreground"] == pytest.approx((0.875 + 0.5) / 2)
    # class scores (N, C, S, T, H, W) give the same result through argmax
    scores = torch.nn.functional.one_hot(pred, 6).permute(0, 5, 1, 2, 3, 4).float()
    assert dice_per_class(scores, tgt, valid) == pytest.approx(res, nan_ok=True)
    # the invalid view matters when it is declared valid
    assert dice_per_class(pred, tgt, torch.ones(2, 2))["LV"] != pytest.approx(res["LV"])
    with pytest.raises(ValueError, match="valid_views"):
        dice_per_class(pred, tgt, torch.ones(2, 3))
    with pytest.raises(ValueError, match="labels must lie"):
        dice_per_class(pred + 6, tgt, valid)


def test_segmentation_dice_ignite_matches_function():
    pred, tgt, valid = _seg_example()
    batches = [{"pred": pred[i : i + 1], "label": tgt[i : i + 1], "seg_valid": valid[i : i + 1]} for i in range(2)]
    metric = SegmentationDice()
    assert _run(metric, batches) == pytest.approx((0.875 + 0.5) / 2)
    assert metric.per_class["LV"] == pytest.approx(0.875)


# -------------------------------------------------------------------------------------------------- reconstruction
def test_psnr_magnitude_hand_computed():
    t0 = torch.tensor([[[[0.0, 2.0], [2.0, 4.0]]]])  # (1, 1, 2, 2), peak 4
    p0 = t0 + torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]])  # mse 0.5 -> 10 log10(16 / 0.5)
    t1 = torch.full((1, 1, 2, 2), 1.0)  # peak 1, error 0.1 -> 10 log10(1 / 0.01) = 20
    target, pred = torch.cat([t0, t1]), torch.cat([p0, t1 + 0.1])
    per = psnr_magnitude(pred, target, reduction="none")
    np.testing.assert_allclose(per, [10 * math.log10(32), 20.0], rtol=1e-6)  # float32 inputs
    assert psnr_magnitude(pred, target) == pytest.approx((10 * math.log10(32) + 20) / 2)
    # complex input: only the magnitude counts (a phase change is free)
    phase = torch.exp(1j * torch.rand(target.shape, generator=torch.Generator().manual_seed(0)))
    assert psnr_magnitude(pred * phase, target.to(torch.complex64)) == pytest.approx(psnr_magnitude(pred, target))
    assert _run(MagnitudePSNR(), [(pred[:1], target[:1]), (pred[1:], target[1:])]) == pytest.approx(per.mean())
    assert psnr_magnitude(target, target) == math.inf


def test_ssim_identical_is_one_and_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 2, 32, 40, generator=g, dtype=torch.float64) * 3  # one subject, 2 frames
    pred = target + 0.2 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    assert ssim_2d(target, target) == pytest.approx(1.0)
    rng = float(target.max())
    ref = np.mean([
        structural_similarity(target[0, 0, i].numpy(), pred[0, 0, i].abs().numpy(), data_range=rng,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for i in range(2)
    ])  # fmt: skip
    assert ssim_2d(pred, target) == pytest.approx(ref, abs=1e-4)
    assert _run(MagnitudeSSIM(), [(pred, target)]) == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------------------------------------- Ignite (regress etc.)
def test_phenotype_mae_and_r2_ignite_destandardise():
    g = np.random.default_rng(5)
    y = g.normal(100, 20, (30, 3))
    y[4, 1] = np.nan
    pred_native = y + g.normal(0, 5, y.shape)
    pred_native[4, 1] = 0.0
    mean, std = np.array([100.0, 90.0, 80.0]), np.array([20.0, 10.0, 5.0])
    z = torch.tensor((pred_native - mean) / std, dtype=torch.float64)
    batches = [(z[i : i + 7], torch.tensor(y[i : i + 7])) for i in range(0, 30, 7)]  # uneven last batch
    ref = regression_metrics(y, pred_native, names=None)
    assert _run(PhenotypeMAE(pred_mean=mean, pred_std=std), batches) == pytest.approx(ref["mean"]["mae"], rel=1e-5)
    assert _run(PhenotypeR2(pred_mean=mean, pred_std=std), batches) == pytest.approx(ref["mean"]["r2"], rel=1e-5)


def test_calibration_metrics_write_model_buffers():
    y, prob = _disease_data(n=200, seed=2)
    logits = torch.logit(torch.tensor(prob).clamp(1e-6, 1 - 1e-6))
    batches = [{"pred": logits[i : i + 50], "label": torch.tensor(y[i : i + 50])} for i in range(0, 200, 50)]
    model = torch.nn.Module()
    model.register_buffer("threshold", torch.full((3,), 0.5))
    model.register_buffer("interval_halfwidth", torch.zeros(3))
    expected = best_f1_thresholds(y, prob)
    mean_thr = _run(BestF1Thresholds(store=model.threshold, sigmoid=True), batches)
    np.testing.assert_allclose(model.threshold.numpy(), expected, atol=1e-5)
    assert mean_thr == pytest.approx(expected.mean(), abs=1e-5)
    assert _run(MultiLabelAUC(sigmoid=True), batches) == pytest.approx(
        np.mean([roc_auc_score(y[:, j], prob[:, j]) for j in range(3)]), abs=1e-6
    )
    # conformal: pred vs label in native units
    g = np.random.default_rng(0)
    lab = g.normal(0, 1, (400, 3))
    pred = lab + g.normal(0, 1, (400, 3))
    pb = [(torch.tensor(pred[i : i + 100]), torch.tensor(lab[i : i + 100])) for i in range(0, 400, 100)]
    _run(ConformalHalfwidths(store=model.interval_halfwidth, coverage=0.9), pb)
    np.testing.assert_allclose(model.interval_halfwidth.numpy(), conformal_halfwidth(np.abs(lab - pred)), rtol=1e-6)
    assert "interval_halfwidth" in model.state_dict()


# ------------------------------------------------------------------------------------- MONAI evaluator and DDP
def test_metrics_in_monai_supervised_evaluator_with_decollated_outputs():
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    g = np.random.default_rng(4)
    x = g.normal(size=(10, 3)).astype(np.float32)
    y = (x @ np.diag([2.0, -1.0, 0.5]) + 0.3 * g.normal(size=(10, 3))).astype(np.float32)
    data = [{"image": torch.tensor(a), "label": torch.tensor(b)} for a, b in zip(x, y)]
    net = torch.nn.Linear(3, 3)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=4), network=net,
        key_val_metric={"mae": PhenotypeMAE(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={"r2": PhenotypeR2(output_transform=from_engine(["pred", "label"]))},
    )  # fmt: skip
    evaluator.run()
    with torch.no_grad():
        pred = net(torch.tensor(x)).numpy()
    ref = regression_metrics(y, pred, names=None)["mean"]
    assert evaluator.state.metrics["mae"] == pytest.approx(ref["mae"], rel=1e-5)
    assert evaluator.state.metrics["r2"] == pytest.approx(ref["r2"], rel=1e-5)


WORLD = 2


def _ddp_worker(rank: int, port: int) -> None:
    import os

    from kmtr_monai import distributed as kd

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    kd.init_distributed(timeout_s=60)
    y, prob = _disease_data(n=50, seed=9)
    part = slice(0, 31) if rank == 0 else slice(31, 50)  # uneven per-rank counts
    store = torch.zeros(3)
    thr_metric, auc_metric = BestF1Thresholds(store=store), MultiLabelAUC()
    for m in (thr_metric, auc_metric):
        m.update((torch.tensor(prob[part]), torch.tensor(y[part])))
    thr_metric.compute()
    np.testing.assert_allclose(store.numpy(), best_f1_thresholds(y, prob), atol=1e-6)  # same on every rank
    ref_auc = np.mean([roc_auc_score(y[:, j], prob[:, j]) for j in range(3)])
    assert auc_metric.compute() == pytest.approx(ref_auc, abs=1e-6)

    pred, tgt, valid = _seg_example()
    dice = SegmentationDice()
    dice.update((pred[rank : rank + 1], tgt[rank : rank + 1], valid[rank : rank + 1]))
    assert dice.compute() == pytest.approx((0.875 + 0.5) / 2)
    psnr = MagnitudePSNR()
    t = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    p = t + 0.05 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    psnr.update((p[:2], t[:2]) if rank == 0 else (p[2:], t[2:]))
    assert psnr.compute() == pytest.approx(psnr_magnitude(p, t), rel=1e-6)
    torch.distributed.destroy_process_group()


def test_ignite_metrics_gather_over_two_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port,), nprocs=WORLD, join=True)


def test_segmentation_dice_in_evaluator_reads_view_flags_from_the_batch():
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    pred, tgt, valid = _seg_example()
    scores = torch.nn.functional.one_hot(pred, 6).permute(0, 5, 1, 2, 3, 4).float()  # (N, C, S, T, H, W)
    data = [{"image": scores[i], "label": tgt[i], "seg_valid": valid[i]} for i in range(2)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=2), network=torch.nn.Identity(),
        key_val_metric={"dice": SegmentationDice(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={"psnr": MagnitudePSNR(output_transform=from_engine(["pred", "pred"]))},
    )  # fmt: skip
    evaluator.run()
    assert evaluator.state.metrics["dice"] == pytest.approx((0.875 + 0.5) / 2)
    assert evaluator.state.metrics["psnr"] == math.inf
    # without the flags every view counts (the invalid view's garbage lowers LV)
    metric = SegmentationDice(valid_key=None)
    assert _run(metric, [(pred, tgt)]) == pytest.approx(dice_per_class(pred, tgt, torch.ones(2, 2))["mean_foreground"])
    with pytest.raises(KeyError, match="seg_valid"):
        _run(SegmentationDice(), [(pred, tgt)])
