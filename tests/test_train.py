"""The one LM loop, the model, the train app: loss falls, resume is exact, faults are contained."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_app

import enas_rnn.train as train_mod
from enas_rnn.corpus import DataConfig, batchify, load_corpus
from enas_rnn.errors import CheckpointError, ConfigError, TrainingDiverged, WorseThanChance
from enas_rnn.runfolder import RunFolder
from enas_rnn.trainrun import train_lm
from enas_rnn.model import ModelConfig, build_model, count_parameters
from enas_rnn.runs import resolve_device
from enas_rnn.train import LoopState, TrainConfig, evaluate, fit, train_steps, worse_than_uniform

TINY = ["experiment=smoke", "train.max_steps=30", "train.eval_every=10", "train.checkpoint_every=5"]


def tiny_cfg(root: Path, *extra: str):
    return compose_app("train", TINY + [f"data.root={root}", *extra])


def test_loss_falls_on_tiny_corpus(tiny_corpus: Path, tmp_path: Path) -> None:
    metrics = train_lm(tiny_cfg(tiny_corpus), tmp_path / "run")
    losses = [h["valid_loss"] for h in metrics["history"]]
    assert len(losses) == 3
    assert losses[-1] < losses[0] < math.log(18)  # 18 = vocabulary of the tiny grammar (+<eos>)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("valid_ppl", "test_ppl", "num_params", "tokens_per_s", "wall_s", "steps", "skipped_steps"):
        assert key in saved
    assert saved["steps"] == 30 and saved["skipped_steps"] == 0
    assert list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))


class _Interrupt(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("core", ["lstm", "cell", "gru"])
def test_resume_matches_uninterrupted_run(tiny_corpus: Path, tmp_path: Path, core: str) -> None:
    # Dropouts and random BPTT lengths make every RNG matter for exactness.
    extra = [f"model={core}", "model.dropout_in=0.2", "model.dropout_out=0.2", "model.dropout_emb=0.1",
             "data.variable_bptt=true", "model.emb_size=32", "model.hidden_size=32", "model.num_layers=1"]
    if core == "cell":
        pytest.importorskip("enas_rnn.cells")
    full = train_lm(tiny_cfg(tiny_corpus, *extra), tmp_path / "full")

    def boom(state: LoopState, _res) -> None:
        if state.step == 17:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_lm(tiny_cfg(tiny_corpus, *extra), tmp_path / "cut", on_step=boom)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = train_lm(tiny_cfg(tiny_corpus, *extra, f"resume={tmp_path / 'cut'}"), tmp_path / "ignored")
    for key in ("valid_ppl", "test_ppl", "steps", "num_params", "tokens"):
        assert resumed[key] == full[key], key
    assert [h["valid_loss"] for h in resumed["history"]] == [h["valid_loss"] for h in full["history"]]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(emb_size=8, hidden_size=8, num_layers=1), vocab_size=20)


def test_nonfinite_steps_are_skipped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    source = torch.randint(0, 20, (60, 4))
    real_loss = model.loss
    calls = {"n": 0}

    def sometimes_nan(tokens, target, hidden, **kw):
        calls["n"] += 1
        loss, new_hidden = real_loss(tokens, target, hidden, **kw)
        return (loss * float("nan") if calls["n"] in (2, 3) else loss), new_hidden

    monkeypatch.setattr(model, "loss", sometimes_nan)
    state = LoopState(lr=1.0)
    seen, snapshots = [], []

    def record(st: LoopState, r) -> None:
        seen.append(r.ok)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    train_steps(model, opt, source, state, TrainConfig(max_nonfinite=5), DataConfig(bptt=5), num_steps=3,
                on_step=record)
    assert seen == [True, False, False] and state.skipped == 2
    # The skipped steps left the weights exactly as the finite first step made them.
    for k in snapshots[0]:
        assert torch.equal(snapshots[0][k], snapshots[2][k])
    for p in model.parameters():
        assert torch.isfinite(p).all()
    state2 = LoopState(lr=1.0)
    calls["n"] = 0

    def always_inf(tokens, target, hidden, **kw):
        loss, new_hidden = real_loss(tokens, target, hidden, **kw)
        return loss * float("inf"), new_hidden

    monkeypatch.setattr(model, "loss", always_inf)
    with pytest.raises(TrainingDiverged, match="max_nonfinite"):
        train_steps(model, opt, source, state2, TrainConfig(max_nonfinite=2), DataConfig(bptt=5))
    assert state2.skipped == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lstm_parameter_count_is_exact() -> None:
    V, E, H = 100, 16, 24
    cfg = ModelConfig(emb_size=E, hidden_size=H, num_layers=2, tie_weights=False)
    model = build_model(cfg, V)
    lstm = lambda i: 4 * H * (i + H) + 8 * H  # noqa: E731 - W_ih, W_hh, b_ih, b_hh
    assert count_parameters(model) == V * E + lstm(E) + lstm(H) + H * V + V
    tied = build_model(ModelConfig(emb_size=H, hidden_size=H, num_layers=1, tie_weights=True), V)
    assert count_parameters(tied) == V * H + lstm(H) + V


def test_evaluate_is_deterministic_and_bounded() -> None:
    model = _tiny_model()
    source = torch.randint(0, 20, (50, 3))
    a, b = evaluate(model, source, 7), evaluate(model, source, 7)
    assert a == b and 0 < a < 2 * math.log(20)


def test_invalid_values_name_key_and_options(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"device='gpu'.*auto, cpu, cuda"):
        train_lm(tiny_cfg(tiny_corpus, "device=gpu"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model.dropout_in.*\[0, 1\)"):
        train_lm(tiny_cfg(tiny_corpus, "model.dropout_in=1.5"), tmp_path / "b")
    with pytest.raises(ConfigError, match="tie_weights"):
        train_lm(tiny_cfg(tiny_corpus, "model.tie_weights=true", "model.emb_size=16"), tmp_path / "c")


def test_typo_and_bad_choice_fail_at_composition() -> None:
    from hydra.errors import ConfigCompositionException, MissingConfigException

    with pytest.raises(ConfigCompositionException) as exc:
        compose_app("train", ["train.lrr=1"])
    assert "lrr" in str(exc.value) + str(exc.value.__cause__)
    with pytest.raises(ConfigCompositionException) as exc:
        compose_app("train", ["model.core=rnn"])  # gru is a core now
    assert "lstm" in str(exc.value.__cause__) and "cell" in str(exc.value.__cause__)
    with pytest.raises(MissingConfigException, match="lstm"):
        compose_app("train", ["model=rnn"])


def test_corrupt_checkpoint_gives_clear_error(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_lm(tiny_cfg(tiny_corpus), run)
    RunFolder(run, "enas-train").update(status="interrupted")  # as if killed after its last checkpoint
    for name in ("last.pt", "last.prev.pt"):
        (run / "checkpoints" / name).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be resumed.*corrupt"):
        train_lm(tiny_cfg(tiny_corpus, f"resume={run}"), tmp_path / "x")
    with pytest.raises(ConfigError, match="no such folder"):  # a mistyped resume= creates nothing
        train_lm(tiny_cfg(tiny_corpus, f"resume={tmp_path / 'nothing'}"), tmp_path / "y")
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no enas-train run there"):
        train_lm(tiny_cfg(tiny_corpus, f"resume={tmp_path / 'empty'}"), tmp_path / "z")


def _cli(args: list[str], tmp_path: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "enas_rnn.cli.train", *args, f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=REPO, capture_output=True, text=True, env=env, )


@pytest.mark.slow
def test_cli_missing_data_message(tmp_path: Path) -> None:
    res = _cli(["experiment=smoke", f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(tmp_path / "nowhere") in res.stderr and "train.txt" in res.stderr and "download" in res.stderr


@pytest.mark.slow
def test_cli_typo_names_key(tmp_path: Path) -> None:
    res = _cli(["experiment=smoke", "train.lrr=3"], tmp_path)
    assert res.returncode != 0 and "lrr" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_smoke_on_real_ptb(ptb_root: Path, tmp_path: Path) -> None:
    res = _cli(["experiment=smoke", f"data.root={ptb_root}"], tmp_path)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["valid_ppl"] < 10000  # below the uniform model's 10k
    assert (tmp_path / "cli" / "checkpoints" / "last.pt").is_file()
    payload = torch.load(tmp_path / "cli" / "checkpoints" / "last.pt", weights_only=True)
    assert {"config", "state_dicts", "step", "rng"} <= set(payload)


def test_every_app_flushes_denormals_on_the_cpu() -> None:
    # Saturating children push gradients into the denormal range, ~100x slower on x86 (runs.py).
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0  # a denormal, computed as one
    resolve_device("cpu")
    assert (tiny * 1.0).item() == 0.0


# ---------------------------------------------------------------------------------------- worse than uniform
def _fit_tiny(root: Path, lr: float, max_steps: int = 30, **cfg_kw) -> tuple[LoopState, int]:
    """fit() on the tiny corpus (17 words): a one-layer 16-unit nn.LSTM, validations every 10 steps."""
    corpus = load_corpus(root)
    torch.manual_seed(0)
    model = build_model(ModelConfig(emb_size=16, hidden_size=16, num_layers=1), len(corpus.vocab))
    cfg = TrainConfig(lr=lr, max_steps=max_steps, eval_every=10, checkpoint_every=None, **cfg_kw)
    state = LoopState(lr=lr)
    fit(model, torch.optim.SGD(model.parameters(), lr=lr), batchify(corpus.train, 20), batchify(corpus.valid, 10),
        state, cfg, DataConfig(bptt=7))
    return state, len(corpus.vocab)


def test_worse_than_uniform_is_above_the_vocabulary_size() -> None:
    assert worse_than_uniform(10_000.5, 10_000) and worse_than_uniform(2.8e73, 10_000)
    assert worse_than_uniform(math.inf, 10_000) and worse_than_uniform(math.nan, 10_000)
    assert not worse_than_uniform(10_000.0, 10_000) and not worse_than_uniform(140.0, 10_000)


def test_a_run_that_ends_worse_than_uniform_fails(tiny_corpus: Path) -> None:
    # lr=1000 keeps the loss finite (clipping) but ends far above a uniform guess: not "done".
    with pytest.raises(WorseThanChance) as exc:
        _fit_tiny(tiny_corpus, lr=1000.0)
    msg = str(exc.value)
    assert isinstance(exc.value, TrainingDiverged)
    assert "worse than a uniform guess over the 17-word vocabulary (perplexity 17)" in msg
    assert "after 30 steps" in msg and "train.lr (now 1000)" in msg and "train.clip" in msg
    assert "model.state_clip" in msg


def test_only_the_end_of_the_budget_counts(tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run may start worse than uniform and improve: the first validation above 17 is no failure.
    state, vocab = _fit_tiny(tiny_corpus, lr=20.0)
    assert state.history[0]["valid_ppl"] > vocab > state.history[-1]["valid_ppl"]
    # One that never gets below it fails once, after its last validation (every one of them ran).
    losses = iter([math.log(vocab) + 2, math.log(vocab) + 1, math.log(vocab) + 0.5, math.log(vocab) + 0.1])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: next(losses))
    with pytest.raises(WorseThanChance, match=r"best validation perplexity, 18\.79"):
        _fit_tiny(tiny_corpus, lr=20.0)
    with pytest.raises(StopIteration):  # all four validations were used up before the error
        next(losses)
