"""Synthetic tasks: seeded data, every core kind trains on both tasks through the shared update step,
an LSTM learns nth-element recall, and bad settings get one readable error."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import compose_app

from enas_rnn.errors import ConfigError, TrainingDiverged, WorseThanChance
from enas_rnn.genotype import load_genotype
from enas_rnn.model import GRUCore, LSTMCore
from enas_rnn.tasks import (
    SINE_STEP,
    TaskKind,
    build_task_model,
    chance_level,
    evaluate_task,
    fit_task,
    make_task,
    validate_task,
    worse_than_chance,
)


def _cfg(*overrides: str):
    return compose_app("sweep", ["sweep_experiment=smoke", *overrides])


def test_nth_data_is_seeded_and_answers_the_nth_element() -> None:
    cfg = _cfg("task.seq_len=7", "task.position=3", "task.features=5")
    a, b = make_task(cfg.task), make_task(cfg.task)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape == (200, 7) and a.valid_x.shape == (50, 7) and a.test_x.shape == (100, 7)
    assert torch.equal(a.train_y, a.train_x[:, 3]) and int(a.train_x.max()) == 4 and int(a.train_x.min()) == 0
    assert not torch.equal(a.train_x[:50], a.valid_x)  # splits are drawn separately
    other = make_task(_cfg("task.seq_len=7", "task.position=3", "task.features=5", "task.seed=1").task)
    assert not torch.equal(a.train_x, other.train_x)
    assert a.metric == "acc" and a.num_outputs == 5


def test_sine_windows_continue_the_series() -> None:
    d = make_task(_cfg("task=sine", "task.seq_len=4").task)
    assert d.kind == TaskKind.sine and d.metric == "mae" and d.num_outputs == 1
    series = torch.sin(2 * math.pi * SINE_STEP * torch.arange(400, dtype=torch.float64)).float()
    torch.testing.assert_close(d.train_x[3], series[3:7])
    torch.testing.assert_close(d.train_y[3], series[7])
    torch.testing.assert_close(d.valid_x[0], series[200:204])  # valid starts after the 200 training windows
    torch.testing.assert_close(d.test_y[-1], series[200 + 50 + 100 + 4 - 1])


@pytest.mark.parametrize("task", ["nth", "sine"])
@pytest.mark.parametrize("core", ["lstm", "gru", "lstm_cell", "enas_paper"])
def test_every_core_trains_on_both_tasks(task: str, core: str) -> None:
    cfg = _cfg(f"task={task}", f"core={core}", "train.max_steps=60", "train.eval_every=20")
    torch.manual_seed(0)
    data = make_task(cfg.task)
    genotype = load_genotype(cfg.cell) if cfg.model.core == "cell" else None
    model = build_task_model(data, None, cfg.model, genotype)
    expected = {"lstm": LSTMCore, "gru": GRUCore}.get(core)
    assert expected is None or isinstance(model.cores[0], expected)
    before = evaluate_task(model, data.train_x, data.train_y)[0]
    res = fit_task(model, data, cfg.train, seed=0)
    assert res.steps == 60 and res.skipped == 0 and len(res.history) == 3
    assert res.metrics["train_loss"] < before  # it learned something in 60 steps
    assert set(res.metrics) == {f"{s}_{m}" for s in ("train", "valid", "test") for m in ("loss", data.metric)}


@pytest.mark.slow
def test_lstm_learns_nth_element_recall() -> None:
    # Brownlee's default problem (5 integers in [0, 10), recall the third): an LSTM of 16 units solves it.
    cfg = _cfg("model.hidden_size=16", "task.train_size=1000", "task.test_size=500", "train.max_steps=400",
               "train.eval_every=100")
    torch.manual_seed(0)
    data = make_task(cfg.task)
    res = fit_task(build_task_model(data, None, cfg.model), data, cfg.train, seed=0)
    assert res.metrics["test_acc"] >= 0.95, res.metrics


def test_training_is_reproducible_and_patience_stops_early() -> None:
    cfg = _cfg("train.max_steps=200", "train.eval_every=10", "train.patience=2", "train.lr=1e-6")
    out = []
    for _ in range(2):
        torch.manual_seed(3)
        data = make_task(cfg.task)
        out.append(fit_task(build_task_model(data, None, cfg.model), data, cfg.train, seed=3))
    assert out[0].metrics == out[1].metrics
    assert out[0].stopped_early and out[0].steps < 200  # lr 1e-6 makes no progress: stopped after 2 validations


def test_nonfinite_steps_are_skipped_then_stop() -> None:
    cfg = _cfg("train.max_steps=50", "train.max_nonfinite=3")
    data = make_task(cfg.task)
    model = build_task_model(data, None, cfg.model)
    with torch.no_grad():
        model.head.weight.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="max_nonfinite=3"):
        fit_task(model, data, cfg.train)


@pytest.mark.parametrize("override, match", [
    ("task.position=5", "task.position"),
    ("task.features=1", "task.features"),
    ("train.optimizer=rmsprop", "adam, sgd"),
    ("train.patience=0", "train.patience"),
])
def test_bad_settings_name_the_key(override: str, match: str) -> None:
    cfg = _cfg(override)
    with pytest.raises(ConfigError, match=match):
        validate_task(cfg.task, cfg.train)


def test_schema_rejects_unknown_task() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as exc:
        _cfg("task.name=copy")
    assert "nth" in str(exc.value.__cause__) and "sine" in str(exc.value.__cause__)


def test_stop_at_ends_a_solved_run() -> None:
    cfg = _cfg("model.hidden_size=16", "task.train_size=1000", "train.max_steps=800", "train.eval_every=25",
               "train.stop_at=0.9")
    torch.manual_seed(0)
    data = make_task(cfg.task)
    res = fit_task(build_task_model(data, None, cfg.model), data, cfg.train, seed=0)
    assert res.stopped_early and res.steps < 800 and res.history[-1]["valid_acc"] >= 0.9
    assert all(h["valid_acc"] < 0.9 for h in res.history[:-1])


# ---------------------------------------------------------------------------------------- worse than chance
def test_chance_levels() -> None:
    nth = make_task(_cfg("task.features=8").task)
    assert chance_level(nth) == 1 / 8
    sine = make_task(_cfg("task=sine").task)
    mean_mse = float(((sine.valid_y - sine.train_y.mean()) ** 2).mean())
    assert chance_level(sine) == pytest.approx(mean_mse) and 0.4 < chance_level(sine) < 0.6  # var of a sine: 1/2


def test_at_chance_is_a_result_below_it_a_failure() -> None:
    data = make_task(_cfg("task.features=10", "task.valid_size=1000").task)  # sd of a uniform guess: 0.0095
    assert worse_than_chance(data, []) is None
    assert worse_than_chance(data, [{"valid_acc": 0.05}, {"valid_acc": 0.08}]) is None  # within 3 sd of 0.1
    why = worse_than_chance(data, [{"valid_acc": 0.0}, {"valid_acc": 0.06}])
    assert why is not None and "0.060" in why and "below chance" in why and "0.100" in why
    # On 50 examples a uniform guess ranges so widely that no accuracy is evidence of being below it.
    small = make_task(_cfg("task.features=10").task)
    assert worse_than_chance(small, [{"valid_acc": 0.0}]) is None
    sine = make_task(_cfg("task=sine").task)
    chance = chance_level(sine)
    assert worse_than_chance(sine, [{"valid_loss": 2.0}, {"valid_loss": chance * 0.99}]) is None
    assert "predicting the mean" in worse_than_chance(sine, [{"valid_loss": 2.0}, {"valid_loss": chance * 1.01}])


def test_a_model_that_learns_the_wrong_answer_fails() -> None:
    # Validation answers shifted by one symbol: the better the model recalls, the further below chance it ends.
    cfg = _cfg("task.seq_len=3", "task.position=2", "task.valid_size=500", "train.max_steps=150",
               "train.eval_every=50")
    torch.manual_seed(0)
    data = make_task(cfg.task)
    data = dataclasses.replace(data, valid_y=(data.valid_y + 1) % data.num_outputs)
    with pytest.raises(WorseThanChance, match=r"after 150 steps: the best validation accuracy, .* below chance"):
        fit_task(build_task_model(data, None, cfg.model), data, cfg.train, seed=0)


def test_a_sine_model_worse_than_the_mean_fails() -> None:
    # Adam at lr 1000 saturates the tanh head: every prediction is +-1, worse than predicting 0.
    cfg = _cfg("task=sine", "train.lr=1000", "train.max_steps=40", "train.eval_every=20")
    torch.manual_seed(0)
    data = make_task(cfg.task)
    with pytest.raises(WorseThanChance, match=r"worse than always predicting the mean .*train.lr \(now 1000\)"):
        fit_task(build_task_model(data, None, cfg.model), data, cfg.train, seed=0)
