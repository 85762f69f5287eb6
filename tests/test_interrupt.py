"""Interrupts: SIGTERM/SIGINT only ask; the loop stops at the next window boundary with a checkpoint of
that step, and resuming from it gives the numbers of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from conftest import REPO

from enas_rnn import interrupt
from enas_rnn.checkpoint import LAST, checkpoint_dir, load_resumable, rng_state, save_checkpoint, set_rng_state
from enas_rnn.corpus import DataConfig, batchify, load_corpus
from enas_rnn.errors import UserError
from enas_rnn.interrupt import Interrupted
from enas_rnn.model import ModelConfig, build_model
from enas_rnn.train import LoopState, TrainConfig, fit, train_steps


@pytest.fixture
def handlers() -> Iterator[None]:
    """The app's handlers for the test; Python's own ones (and no pending request) afterwards."""
    assert interrupt.install()
    try:
        yield
    finally:
        interrupt.uninstall()
        interrupt.reset()


# ---------------------------------------------------------------------------------------- the flag
@pytest.mark.slow
def test_nothing_is_installed_at_import() -> None:
    # Compared with the handlers the interpreter started with, not with the defaults: a process started in
    # the background by a non-interactive shell inherits SIGINT ignored (and CI may run so).
    code = ("import signal; before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)); "
            "import enas_rnn.train, enas_rnn.interrupt, enas_rnn.trainrun, enas_rnn.launch; "
            "after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)); "
            "print(before[0] is after[0], before[1] is after[1])")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.stdout.split() == ["True", "True"], res.stderr[-2000:]


def test_a_signal_only_sets_the_flag_and_a_second_ctrl_c_raises(handlers: None) -> None:
    assert not interrupt.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert interrupt.requested() and interrupt.requested_by() == "SIGTERM"
    interrupt.reset()
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks, like SIGTERM
    assert interrupt.requested_by() == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # the second one does not wait for the boundary


def test_uninstall_restores_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    interrupt.install()
    interrupt.install()  # twice: uninstall still restores what was there first
    interrupt.uninstall()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_message_names_the_step_and_the_folder_the_caller_gives() -> None:
    exc = Interrupted(13, "SIGTERM")
    assert isinstance(exc, UserError) and exc.step == 13
    assert str(exc) == ("interrupted at step 13 (SIGTERM); the checkpoint of step 13 is kept; "
                        "continue with resume=<folder>")
    named = exc.with_folder(Path("outputs/run"))
    assert named.step == 13 and str(named).endswith("continue with resume=outputs/run")
    assert "no checkpoint" in str(Interrupted(4, saved=False))


def test_train_steps_stops_between_windows_when_asked() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(emb_size=8, hidden_size=8, num_layers=1), vocab_size=20)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    source = torch.randint(0, 20, (60, 4))
    state = LoopState(lr=1.0)
    asks = iter([False, False, True])
    ended = train_steps(model, opt, source, state, TrainConfig(), DataConfig(bptt=5), num_steps=10,
                        stop=lambda: next(asks))
    assert not ended and state.step == 2 and state.pos == 10


# ---------------------------------------------------------------------------------------- fit
class _Run:
    """fit() on the tiny corpus with a checkpointing ``save``, as the train app wires it (dropouts and
    random BPTT lengths on, so every RNG must be restored for a resume to be exact)."""

    def __init__(self, root: Path, folder: Path) -> None:
        corpus = load_corpus(root)
        self.folder = folder
        self.data = DataConfig(bptt=7, batch_size=20, variable_bptt=True)
        # ~16 windows an epoch: the 30 steps cross an epoch end (with its lr decay) and three validations
        self.cfg = TrainConfig(lr=10.0, max_steps=30, eval_every=10, checkpoint_every=None, lr_decay=0.5)
        self.train, self.valid = batchify(corpus.train, 20), batchify(corpus.valid, 10)
        torch.manual_seed(0)
        self.model = build_model(ModelConfig(emb_size=16, hidden_size=16, num_layers=1, dropout_in=0.2,
                                             dropout_out=0.2), len(corpus.vocab))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr)
        self.state = LoopState(lr=self.cfg.lr)
        self.state.bptt_gen.manual_seed(0)
        self.saved_steps: list[int] = []

    def save(self, st: LoopState, is_best: bool) -> None:
        self.saved_steps.append(st.step)
        save_checkpoint(checkpoint_dir(self.folder) / LAST, {
            "config": {}, "step": st.step, "loop": st.to_dict(), "hidden": st.hidden, "rng": rng_state(),
            "state_dicts": {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}})

    def resume(self) -> None:
        payload = load_resumable(self.folder)
        self.model.load_state_dict(payload["state_dicts"]["model"])
        self.opt.load_state_dict(payload["state_dicts"]["optimizer"])
        self.state = LoopState.from_dict(payload["loop"])
        self.state.hidden = payload["hidden"]
        set_rng_state(payload["rng"])

    def fit(self, on_step: Callable[[LoopState, object], None] | None = None) -> LoopState:
        return fit(self.model, self.opt, self.train, self.valid, self.state, self.cfg, self.data, save=self.save,
                   on_step=on_step)


def _epoch_end(run: _Run) -> Callable[[LoopState], bool]:
    return lambda st: st.pos >= run.train.size(0) - 1  # the window that ends the first epoch


@pytest.mark.parametrize("when", ["mid_chunk", "at_validation", "at_epoch_end"])
def test_sigterm_stops_at_the_boundary_and_the_resumed_run_matches(tiny_corpus: Path, tmp_path: Path,
                                                                   handlers: None, when: str) -> None:
    full = _Run(tiny_corpus, tmp_path / "full")
    full.fit()
    assert full.state.epoch >= 1 and len(full.state.history) == 4  # three every 10 steps, one at the epoch end
    run = _Run(tiny_corpus, tmp_path / "cut")
    at = {"mid_chunk": lambda st: st.step == 13, "at_validation": lambda st: st.step == 10,
          "at_epoch_end": _epoch_end(run)}[when]
    sent: list[int] = []

    def term(st: LoopState, _res: object) -> None:
        if not sent and at(st):
            sent.append(st.step)
            os.kill(os.getpid(), signal.SIGTERM)  # a cluster's time limit, in the middle of the loop

    with pytest.raises(Interrupted) as exc:
        run.fit(on_step=term)
    step = sent[0]
    assert exc.value.step == step and run.state.step == step  # no step after the signal's
    assert f"interrupted at step {step} (SIGTERM); the checkpoint of step {step} is kept" in str(exc.value)
    assert load_resumable(run.folder)["step"] == step and run.saved_steps[-1] == step
    if when != "mid_chunk":  # what was due at that boundary happened before the stop
        assert run.state.history[-1]["step"] == step
    if when == "at_epoch_end":
        assert run.state.epoch == 1 and run.state.lr == run.cfg.lr * run.cfg.lr_decay
    interrupt.reset()
    run.resume()
    run.fit()
    assert [h["valid_loss"] for h in run.state.history] == [h["valid_loss"] for h in full.state.history]
    assert run.state.step == full.state.step == 30 and run.state.lr == full.state.lr
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k]), k


def test_a_request_before_the_first_window_saves_the_start(tiny_corpus: Path, tmp_path: Path, handlers: None) -> None:
    run = _Run(tiny_corpus, tmp_path / "r")
    interrupt.request("SIGTERM")
    with pytest.raises(Interrupted, match="at step 0"):
        run.fit()
    assert run.saved_steps == [0] and run.state.history == []  # no validation the uninterrupted run lacks
