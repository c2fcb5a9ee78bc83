"""Training budgets in steps, early stopping on validation and the per-epoch history (kmtr_monai.engines.budget)."""

import csv

import pytest
import torch
from ignite.engine import Engine, Events

from kmtr_monai.engines.budget import EarlyStopOnValidation, MetricHistory, epochs_for_steps, steps_per_epoch


def test_epochs_for_steps_gives_at_least_the_steps():
    loader = list(range(7))  # 7 steps per epoch
    assert epochs_for_steps(None, 5, loader) == 5
    assert epochs_for_steps(7, 5, loader) == 1 and epochs_for_steps(8, 5, loader) == 2
    assert epochs_for_steps(700, 5, loader) == 100
    with pytest.raises(ValueError, match="positive int"):
        epochs_for_steps(0, 5, loader)
    with pytest.raises(ValueError, match="dataloader is empty"):
        epochs_for_steps(10, 5, [])


def test_a_budget_shorter_than_one_epoch_is_exact():
    loader = list(range(7))
    assert steps_per_epoch(None, loader) == 7 and steps_per_epoch(20, loader) == 7
    assert steps_per_epoch(3, loader) == 3 and epochs_for_steps(3, 5, loader) == 1
    trainer = Engine(lambda e, b: None)
    trainer.run(loader, max_epochs=epochs_for_steps(3, 5, loader), epoch_length=steps_per_epoch(3, loader))
    assert trainer.state.iteration == 3 and trainer.state.epoch == 1


def _trainer_with_validation(scores, patience, history=None):
    """A trainer whose 'validation' after epoch e gives scores[e-1] (lower is better), as MONAI's evaluator tracks
    it in best_metric / best_metric_epoch."""
    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = float("inf"), -1
    trainer = Engine(lambda e, b: {"loss": torch.tensor(float(e.state.iteration))})

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        score = scores[engine.state.epoch - 1]
        evaluator.state.metrics = {"val_mae": score}
        if score < evaluator.state.best_metric:
            evaluator.state.best_metric, evaluator.state.best_metric_epoch = score, engine.state.epoch

    EarlyStopOnValidation(evaluator, patience).attach(trainer)
    if history is not None:
        MetricHistory(str(history), evaluator).attach(trainer)
    return trainer


def test_early_stop_ends_patience_validations_after_the_best(tmp_path):
    scores = [5.0, 4.0, 3.0, 3.5, 3.2, 3.9, 2.0, 1.0]  # best at epoch 3 until epoch 7
    trainer = _trainer_with_validation(scores, patience=3, history=tmp_path / "history.csv")
    trainer.run(range(4), max_epochs=len(scores))
    assert trainer.state.epoch == 6  # epochs 4, 5, 6 without improvement
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["val_mae"]) for r in rows] == scores[:6]
    # epoch 1 saw iterations 1..4: its mean loss
    assert float(rows[0]["train_loss"]) == pytest.approx(2.5) and int(rows[-1]["iteration"]) == 24


def test_no_patience_never_stops_and_history_drops_rows_of_a_resumed_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,iteration,train_loss\n1,4,9\n2,8,9\n3,12,9\n")  # epoch 3 was interrupted and replays
    trainer = _trainer_with_validation([5.0, 6.0, 7.0, 8.0], patience=None, history=path)
    trainer.load_state_dict({"epoch": 2, "max_epochs": 4, "epoch_length": 4})  # resumed after epoch 2
    trainer.run(range(4))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and rows[0]["train_loss"] == "9"
    assert float(rows[2]["train_loss"]) != 9


def test_history_records_the_epoch_mean_of_every_scalar_term_of_the_output(tmp_path):
    """A dict-returning network's scalar outputs (the k-space MAE's auxiliary terms) become train_<name> columns;
    tensors that are not scalars are ignored."""
    trainer = Engine(lambda e, b: {"loss": torch.tensor(1.0, requires_grad=True),
                                   "pred": {"profile": torch.tensor(float(e.state.iteration)),
                                            "recon": torch.zeros(2, 3)}})  # fmt: skip
    MetricHistory(str(tmp_path / "history.csv")).attach(trainer)
    trainer.run(range(4), max_epochs=2)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_profile"]) for r in rows] == [2.5, 6.5] and "train_recon" not in rows[0]


def test_bad_patience():
    with pytest.raises(ValueError, match="early_stop_patience"):
        EarlyStopOnValidation(Engine(lambda e, b: None), 0)
