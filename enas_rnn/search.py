"""Weight-sharing search: the alternating loop of ENAS, read as its phases, and derive.

Each search epoch has two phases (Pham et al. 2018, sec. 2.2):

1. **shared phase**: the supernet's weights w are trained with SGD by the one LM loop
   (:func:`enas_rnn.train.train_steps`), each BPTT window running a freshly sampled child;
2. **controller phase**: children are sampled (optionally pre-screened by a training-free score),
   evaluated on validation windows with the shared weights, and the strategy learns from the
   rewards ``c / ppl``;

then the end of the epoch (lr decay, best cell so far, checkpoint) and, after the last epoch, the
outputs: derive (the best of ``derive_samples`` cells on the same validation windows) and files.
A search folder holds::

    best_genotype.json      the derived cell (a genotype file: enas-train cell=<this file>)
    best_genotype.png       its picture
    top_genotypes.json      the top-k derived cells with their shared-weight perplexities
    derived.json            every derived cell, ranked (where the pipeline's selection draws its candidates)
    search_history.jsonl    one line per evaluated child (step, hash, genotype, ppl, reward, ...)
    metrics.json            summary numbers
    checkpoints/last.pt     written at the end of every epoch; resume=<folder> continues
    tb/                     TensorBoard events
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from enas_rnn import interrupt
from enas_rnn.board import PPL_CAP, cell_markdown, hparams, open_writer, write_hparams
from enas_rnn.checkpoint import (
    LAST,
    checkpoint_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_text_atomic,
)
from enas_rnn.distance import distance_to_reference
from enas_rnn.errors import CheckpointError, UserError
from enas_rnn.genotype import Genotype
from enas_rnn.model import RNNLM
from enas_rnn.rules import (
    FINITE,
    INT0,
    INT1,
    NONNEG,
    OPT_INT1,
    OPT_POSITIVE,
    POSITIVE,
    fail,
    number_in,
    one_of,
    rule,
)
from enas_rnn.runs import (
    load_splits,
    resolve_device,
    strict,
    to_device,
    write_json,
)
from enas_rnn.screen import make_screener
from enas_rnn.spaces import space_from_config
from enas_rnn.strategies import (
    STRATEGIES,
    ReinforceConfig,
    Strategy,
    make_strategy,
    reward_from_ppl,
    top_k_indices,
)
from enas_rnn.supernet import build_supernet, evaluate_cells
from enas_rnn.train import LoopState, StepResult, perplexity, show_progress, train_steps, worse_than_uniform
from enas_rnn.viz import draw_genotype

__all__ = ["SearchConfig", "SearchState", "SearchRun", "derive", "describe", "Hook", "DEGENERATE_MODES",
           "UNBOUNDED_MODES", "refusal_threshold"]

Hook = Callable[[str, int], None]  # (event, counter): lets tests interrupt a run at a chosen point
log = logging.getLogger(__name__)
DEGENERATE_MODES: tuple[str, ...] = ("mask", "penalty", "resample", "off")
UNBOUNDED_MODES: tuple[str, ...] = ("mask", "penalty", "off")


class SearchDiverged(UserError):
    """Every child of a search diverged: there is no cell to hand over."""


def refusal_threshold(vocab_size: int) -> float:
    """The loss above which ``search.skip_exploding`` refuses a shared update: 10x a uniform guess, ln(10 V).

    Not ln V itself: an untrained supernet predicts almost uniformly, so its loss starts at about ln V (on
    PTB just above it) - a threshold of ln V refused 1,500 of 2,500 updates of a search and held the
    supernet at its initial weights for 8 epochs (README, the study's stabilisers)."""
    return math.log(10.0 * vocab_size)


@dataclass
class SearchConfig:
    """The alternating loop and REINFORCE. Defaults: Pham et al. 2018 and carpedm20/ENAS-pytorch
    (config.py), cited per field; see conf/search/enas.yaml."""

    strategy: str = rule("enas", one_of(STRATEGIES))  # enas | random
    epochs: int = rule(150, INT1)  # ENAS-pytorch max_epoch
    shared_steps: Optional[int] = rule(400, OPT_INT1)  # windows per shared phase (ENAS-pytorch); null: one pass over train
    # controller updates per epoch (ENAS-pytorch controller_max_step); random search: children evaluated per epoch
    controller_steps: int = rule(2000, INT0)
    children_per_step: int = rule(1, INT1)  # children evaluated per controller update (enas_lm aggregates 10)
    reward_c: float = rule(80.0, POSITIVE)  # reward = c / valid ppl (enas_lm REWARD_CONSTANT, ENAS-pytorch reward_c)
    reward_batches: int = rule(1, INT1)  # validation windows per child reward, rotating through the split
    entropy_weight: float = rule(1e-4, NONNEG)  # added to the reward (ENAS-pytorch entropy_coeff)
    baseline_decay: float = rule(0.95, number_in(0.0, 1.0, hi_open=True))  # EMA of the reward (ENAS-pytorch 0.9, enas_lm 0.999)
    controller_lr: float = rule(3.5e-4, POSITIVE)  # Adam (Pham et al. 2018, 3.1)
    controller_clip: Optional[float] = rule(None, OPT_POSITIVE)
    nonfinite_reward: float = rule(0.0, FINITE)  # reward of a child whose validation loss is not finite
    # Degenerate cells (h_t ignores the input, or - with require_memory - c_t carries nothing; decided
    # exactly from the genotype, Genotype.analysis): "mask" decodes only valid cells (the controller's
    # output decisions are masked, so its policy and gradient are those of the valid cells), "penalty"
    # gives them degenerate_reward without any evaluation so the controller may learn to avoid them,
    # "resample" draws again until a cell is valid, "off" treats them like any cell. Random search
    # samples the valid subset unless "off". No degenerate cell is trained or derived unless "off".
    degenerate: str = rule("mask", one_of(DEGENERATE_MODES))
    require_memory: bool = True  # lstm space: a cell whose memory never carries the input is degenerate
    degenerate_reward: float = rule(0.0, FINITE)  # as bad as a diverged child
    # Unbounded cells (the state can explode for some weights without the guard: Genotype.analysis().growth,
    # decided from the genotype like degeneracy): "mask" decodes only cells that are neither degenerate nor
    # unbounded (the output decisions, as above), "penalty" gives them degenerate_reward without evaluation,
    # "off" treats them like any cell. Unless "off", no unbounded cell is trained, evaluated or derived, and
    # random search samples the bounded subset.
    unbounded: str = rule("off", one_of(UNBOUNDED_MODES))
    # A shared-phase window whose child is 10x worse than a uniform guess (loss > ln 10V, refusal_threshold)
    # updates nothing: its clipped gradient would pull every shared weight towards an exploding child.
    skip_exploding: bool = False
    derive_samples: int = rule(100, INT1)  # cells drawn at derive time (ENAS-pytorch derive_num_sample)
    derive_batches: int = rule(10, INT1)  # validation windows, the same for every derived cell
    # The best derive_rerank cells are evaluated again on derive_rerank_batches windows, enough to
    # separate close cells; the ranking (and top_genotypes.json, the shortlist) uses those numbers.
    derive_rerank: int = rule(10, INT0)
    derive_rerank_batches: int = rule(40, INT0)
    top_k: int = rule(5, INT1)  # cells kept in top_genotypes.json
    # Stop after the first epoch that ends past this many seconds (then derive as usual): searches that
    # differ in cost per step (e.g. with and without screening) compared at equal budget. "process" counts
    # this process's CPU time (fair on a shared machine; equal to wall time on a dedicated core).
    time_budget_s: Optional[float] = rule(None, OPT_POSITIVE)
    time_budget_clock: str = rule("wall", one_of(("wall", "process")))  # wall | process

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if cfg.strategy == "enas" and cfg.controller_steps < 1:
            # Without controller steps ENAS never evaluates a child: the controller would never learn.
            raise fail(key("controller_steps"), cfg.controller_steps,
                       "an integer >= 1 for search.strategy=enas (0 only for random search)")


@dataclass
class SearchState:
    """Progress of a search beyond the LM loop's own state; checkpointed every epoch."""

    epoch: int = 0
    controller_step: int = 0
    valid_pos: int = 0  # next validation row for rewards (rotates through the split)
    records: list[dict[str, Any]] = field(default_factory=list)  # one per evaluated child
    proposals: int = 0  # cells drawn in controller steps (rejected redraws included)
    degenerate_proposals: int = 0  # of which degenerate (penalised, redrawn, or - handling off - evaluated)
    unbounded_proposals: int = 0  # of which unbounded (the same three ways)
    shared_draws: int = 0  # children drawn for shared-phase windows (redraws included)
    shared_rejected: int = 0  # of which redrawn (degenerate or unbounded)
    shared_unbounded: int = 0  # of the redrawn ones, unbounded
    shared_unbounded_only: int = 0  # of the redrawn ones, unbounded but not degenerate
    # per epoch: [proposals, degenerate, unbounded] (runs from before the unbounded count: two entries)
    epoch_proposals: list[list[int]] = field(default_factory=list)
    budget_used_s: float = 0.0  # seconds counted against search.time_budget_s (across resumes)
    # Where the current epoch stands (an interrupt checkpoints mid-epoch; resume= continues there).
    shared_done: int = 0  # shared-phase windows of this epoch done
    controller_done: int = 0  # controller steps of this epoch done
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's shared-window losses (the epoch log)
    windows: int = 0  # shared windows trained (finite loss), every epoch
    exploding_windows: int = 0  # of which worse than a uniform guess (loss > ln V)
    epoch_windows: list[list[int]] = field(default_factory=list)  # per epoch: [windows, exploding]


def reinforce_config(cfg: Any) -> ReinforceConfig:
    """The ENAS strategy's settings out of a search app config."""
    s = cfg.search
    return ReinforceConfig(float(s.entropy_weight), float(s.baseline_decay), float(s.controller_lr), s.controller_clip)


class SearchRun:
    """One search in a run folder: its parts, its state, and its phases.

    ``payload`` is the last checkpoint of an interrupted run (then ``cfg`` is that run's config);
    the run continues exactly where it stopped.
    """

    def __init__(self, cfg: Any, run_dir: str | Path, payload: Optional[dict] = None, hook: Optional[Hook] = None,
                 overrides: Sequence[str] = ()) -> None:
        self.wall_t0 = time.perf_counter()
        self.cfg, self.hook, self.overrides = cfg, hook, list(overrides)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        self.splits = load_splits(cfg.data, self.device)
        vocab_size = len(self.splits.corpus.vocab)
        self.space = space_from_config(cfg.space)
        self.model = build_supernet(cfg.model, self.space, vocab_size).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.gen = torch.Generator()
        self.gen.manual_seed(cfg.seed)
        s = cfg.search
        self.require_memory = bool(s.require_memory)
        unbounded = str(s.get("unbounded", "off"))  # a run from before the key: off
        self.unbounded_mode = unbounded
        # Constrained decoding (mode "mask"): the space says which output choices keep a cell valid. Random
        # search redraws every invalid cell unless handling is off; the space's node masks only save draws.
        if s.strategy == "random":
            deg, unb = s.degenerate != "off", unbounded != "off"
        else:
            deg, unb = s.degenerate == "mask", unbounded == "mask"
        constraint = functools.partial(self.space.allowed, require_memory=self.require_memory, require_bounded=unb,
                                       exclude_degenerate=deg) if deg or unb else None
        self.strategy: Strategy = make_strategy(s.strategy, self.space, cfg.controller, reinforce_config(cfg), self.gen,
                                                constraint)
        self.strategy.to(self.device)
        self.screener = make_screener(cfg, vocab_size, self.splits.valid)
        s = cfg.search
        check_deg, check_unb = s.degenerate != "off", unbounded != "off"
        # valid(g): a cell worth evaluating (neither degenerate nor - unless off - unbounded); proposals are
        # restricted to valid cells when redrawing (mask and resample modes, or random search, which has no
        # policy to teach); the rest of the invalid proposals are penalised (penalty mode).
        self.valid = self._acceptor(check_deg, check_unb)
        # (mask mode redraws too: the ~4 % of node choices with no valid output pair, 8-node lstm space)
        no_policy = s.strategy == "random"
        self.redraw = self._acceptor(check_deg and (s.degenerate != "penalty" or no_policy),
                                     check_unb and (unbounded != "penalty" or no_policy))
        self.loop = LoopState(lr=cfg.train.lr)
        self.loop.bptt_gen.manual_seed(cfg.seed)
        self.state = SearchState()
        self.wall_before = 0.0
        if payload is not None:
            self._restore(payload)
        self.cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.history_path = self.run_dir / "search_history.jsonl"
        # Rewrite the history from the checkpoint: lines of an interrupted epoch are dropped and redone.
        write_text_atomic(self.history_path, "".join(json.dumps(r) + "\n" for r in self.state.records))
        self.writer = open_writer(self.run_dir, f"search-{self.space.name}-{s.strategy}-seed{cfg.seed}",
                                  self.loop.step if payload is not None else None)
        s = cfg.search
        per_epoch = (s.shared_steps or 0) + s.controller_steps
        self.bar = tqdm(total=s.epochs * per_epoch, initial=self.state.epoch * per_epoch,
                        disable=not show_progress(cfg.train.progress), unit="step", leave=False)
        self.best_ppl = min((r["ppl"] for r in self.state.records), default=math.inf)
        self.history_file: Any = None
        template = "" if self.space.template == "none" else f", template {self.space.template}"
        log.info("enas-search in %s: %s search of the %s space (%d nodes%s), supernet %d units (%s parameters), "
                 "%d epochs x (%s shared + %d controller steps), screen %s, degenerate cells: %s, unbounded cells: %s%s",
                 self.run_dir, s.strategy, self.space.name, self.space.num_nodes, template, cfg.model.hidden_size,
                 f"{sum(p.numel() for p in self.model.parameters()):,}", s.epochs, s.shared_steps, s.controller_steps,
                 cfg.screen.name, s.degenerate, unbounded, f"; resumed at epoch {self.state.epoch}" if payload is not None else "")

    def _acceptor(self, degenerate: bool, unbounded: bool) -> Optional[Callable[[Genotype], bool]]:
        """The cells to keep: not degenerate (when ``degenerate``) and not unbounded (when ``unbounded``)."""
        if not (degenerate or unbounded):
            return None
        rm = self.require_memory
        return lambda g: not ((degenerate and g.is_degenerate(rm)) or (unbounded and g.is_unbounded()))

    def _counted(self, accept: Optional[Callable[[Genotype], bool]], tally: list[int]
                 ) -> Optional[Callable[[Genotype], bool]]:
        """``accept`` that also counts, in ``tally`` = [degenerate, unbounded, unbounded only], what it rejects."""
        if accept is None:
            return None
        rm = self.require_memory

        def counting(g: Genotype) -> bool:
            ok = accept(g)
            if not ok:
                deg, unb = g.is_degenerate(rm), g.is_unbounded()
                tally[0] += deg
                tally[1] += unb
                tally[2] += unb and not deg
            return ok

        return counting

    def _restore(self, payload: dict) -> None:
        try:
            self.model.load_state_dict(payload["state_dicts"]["model"])
            self.optimizer.load_state_dict(payload["state_dicts"]["optimizer"])
            self.strategy.load_state_dict(payload["state_dicts"]["strategy"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint in {self.run_dir} does not match its config ({exc}): "
                                  "start a new search") from None
        self.loop = LoopState.from_dict(payload["loop"])
        self.loop.hidden = to_device(payload.get("hidden"), self.device)
        self.state = SearchState(**payload["search"])
        self.gen.set_state(payload["generator"])
        set_rng_state(payload["rng"])
        self.wall_before = payload.get("wall_s", 0.0)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """All remaining epochs, then derive and the outputs; returns the metrics."""
        s = self.cfg.search
        clock = time.process_time if s.time_budget_clock == "process" else time.perf_counter
        with open(self.history_path, "a") as self.history_file:
            while self.state.epoch < s.epochs and not self._over_budget():
                t0 = clock()
                self.shared_phase()
                while self.state.controller_done < s.controller_steps:
                    self._stop_if_interrupted()
                    self.controller_step()
                    self.state.controller_done += 1
                self.state.budget_used_s += clock() - t0
                self.end_epoch()
        self.bar.close()
        return self.write_outputs()

    def shared_phase(self) -> None:
        """Trains the shared weights for ``search.shared_steps`` windows, a sampled child per window."""
        cfg, loop = self.cfg, self.loop
        self.bar.set_description(f"epoch {self.state.epoch} shared | best ppl {self.best_ppl:.1f}")
        steps = cfg.search.shared_steps
        remaining = None if steps is None else steps - self.state.shared_done
        while remaining is None or remaining > 0:
            before = loop.step
            ended = train_steps(self.model, self.optimizer, self.splits.train, loop, cfg.train, cfg.data, remaining,
                                self._training_child, self._shared_step_hook, stop=interrupt.requested,
                                skip_above=refusal_threshold(self.model.vocab_size) if cfg.search.skip_exploding else None)
            self._stop_if_interrupted()
            if remaining is None:
                break
            remaining -= loop.step - before
            if not ended and loop.step == before:
                break

    def _training_child(self) -> dict[str, Any]:
        """The child of one shared-phase window (never a degenerate or unbounded one unless handling is off)."""
        tally = [0, 0, 0]
        g, rejected = self.strategy.sample_for_training(self._counted(self.valid, tally))
        self.state.shared_draws += 1 + rejected
        self.state.shared_rejected += rejected
        self.state.shared_unbounded += tally[1]
        self.state.shared_unbounded_only += tally[2]
        return {"genotype": g}

    def _shared_step_hook(self, ls: LoopState, res: StepResult) -> None:
        self.bar.update(1)
        self.state.shared_done += 1
        if res.ok or res.refused:
            self.state.epoch_losses.append(res.loss)
        if ls.step % self.cfg.train.log_every == 0 and res.ok:
            self.writer.add_scalar("shared/train_ppl", perplexity(res.loss), ls.step)
            self.writer.add_scalar("shared/lr", ls.lr, ls.step)
            self.writer.add_scalar("shared/tokens_per_s", ls.tokens / max(ls.train_seconds, 1e-9), ls.step)
        if not res.ok:
            self.writer.add_scalar("shared/skipped_steps", ls.skipped, ls.step)
        if self.hook is not None:
            self.hook("shared_step", ls.step)

    def controller_step(self) -> None:
        """Proposes children, screens them, evaluates the kept ones on shared weights, updates the strategy.

        Degenerate and unbounded proposals (penalty mode) are never scored or evaluated: they enter the
        update with ``search.degenerate_reward``.
        """
        cfg, s, st = self.cfg, self.cfg.search, self.state
        self.bar.set_description(f"epoch {st.epoch} controller | best ppl {self.best_ppl:.1f}")
        n = cfg.screen.candidates if self.screener is not None else s.children_per_step
        tally = [0, 0, 0]  # what the redraws rejected: degenerate, unbounded, unbounded only
        genotypes, handle, rejected = self.strategy.propose(n, self._counted(self.redraw, tally))
        bad = [i for i, g in enumerate(genotypes) if self.valid is not None and not self.valid(g)]
        live = [i for i in range(len(genotypes)) if i not in set(bad)]
        scores: Optional[dict[int, float]] = None
        keep = live
        if self.screener is not None and live:
            live_scores = self.screener([genotypes[i] for i in live])
            scores = dict(zip(live, live_scores))
            keep = [live[j] for j in top_k_indices(live_scores, cfg.screen.keep)]
        ppls = evaluate_cells(self.model, [genotypes[i] for i in keep], self.splits.valid, cfg.data.bptt,
                              s.reward_batches, st.valid_pos)
        rewards = [reward_from_ppl(p, s.reward_c, s.nonfinite_reward, self.model.vocab_size) for p in ppls]
        index, entry_rewards = list(keep), list(rewards)
        if scores is not None and cfg.screen.screened_reward == "min" and len(keep) < len(live):
            # Screened-out candidates count as no better than the worst evaluated child.
            rest = [i for i in live if i not in set(keep)]
            index += rest
            entry_rewards += [min(rewards)] * len(rest)
        index += bad
        entry_rewards += [float(s.degenerate_reward)] * len(bad)
        stats = self.strategy.update(handle, index, entry_rewards)
        # Every draw is counted by what it is (a redrawn one was rejected for being degenerate or unbounded).
        n_deg = tally[0] + sum(g.is_degenerate(self.require_memory) for g in genotypes)
        n_unb = tally[1] + sum(g.is_unbounded() for g in genotypes)
        st.proposals += len(genotypes) + rejected
        st.degenerate_proposals += n_deg
        st.unbounded_proposals += n_unb
        st.valid_pos += s.reward_batches * cfg.data.bptt
        if st.valid_pos >= self.splits.valid.size(0) - 1:
            st.valid_pos = 0
        ranked = sorted(scores.values(), reverse=True) if scores is not None else []
        for j, i in enumerate(keep):
            g = genotypes[i]
            rec = {
                "step": st.controller_step, "epoch": st.epoch, "shared_step": self.loop.step,
                "hash": g.hash(), "genotype": g.to_dict(), "ppl": ppls[j], "reward": stats.rewards[j],
                "baseline": stats.baseline, "advantage": stats.advantages[j], "entropy": stats.entropies[j],
                # worse than a uniform guess counts as diverged: such a child learnt nothing on these weights
                "diverged": worse_than_uniform(ppls[j], self.model.vocab_size),
            }
            if s.degenerate == "off":  # handling off: say which evaluated cells were degenerate
                rec["degenerate"] = g.is_degenerate(self.require_memory)
            if self.unbounded_mode == "off":  # and which were unbounded
                rec["unbounded"] = g.is_unbounded()
            if scores is not None:
                rec["screen_score"] = scores[i]
                rec["screen_rank"] = ranked.index(scores[i])
            st.records.append(rec)
            self.history_file.write(json.dumps(strict(rec)) + "\n")
            self.best_ppl = min(self.best_ppl, ppls[j])
        draws = len(genotypes) + rejected
        self._log_controller(st.controller_step, ppls, stats, scores, keep, n_deg / draws, n_unb / draws)
        st.controller_step += 1
        self.bar.update(1)
        if self.hook is not None:
            self.hook("controller_step", st.controller_step)

    def _log_controller(self, k: int, ppls: list[float], stats: Any, scores: Optional[dict[int, float]],
                        keep: list[int], degenerate_share: float, unbounded_share: float) -> None:
        w = self.writer
        finite = [p for p in ppls if math.isfinite(p)]
        if finite:
            # Diverged or untrained children reach ppl 1e10: the plain chart would be flat, so the log
            # and a capped copy are what to read (the raw value stays in search_history.jsonl).
            mean = sum(finite) / len(finite)
            w.add_scalar("controller/child_valid_log_ppl", sum(math.log(p) for p in finite) / len(finite), k)
            w.add_scalar("controller/child_valid_ppl_capped", min(mean, PPL_CAP), k)
        if stats.rewards:
            w.add_scalar("controller/reward", sum(stats.rewards) / len(stats.rewards), k)
            w.add_scalar("controller/advantage", sum(stats.advantages) / len(stats.advantages), k)
            w.add_scalar("controller/entropy", sum(stats.entropies) / len(stats.entropies), k)
        w.add_scalar("controller/baseline", stats.baseline, k)
        w.add_scalar("controller/loss", stats.loss, k)
        w.add_scalar("controller/degenerate_share", degenerate_share, k)
        w.add_scalar("controller/unbounded_share", unbounded_share, k)
        if scores is not None and keep:
            w.add_scalar("screen/score_kept", sum(scores[i] for i in keep) / len(keep), k)
            w.add_scalar("screen/score_all", sum(scores.values()) / len(scores), k)

    def end_epoch(self) -> None:
        """lr decay, the epoch's best cell to TensorBoard, and a checkpoint."""
        cfg, st, loop = self.cfg, self.state, self.loop
        st.epoch += 1
        done = [sum(e[k] for e in st.epoch_proposals if len(e) > k) for k in range(3)]
        st.epoch_proposals.append([st.proposals - done[0], st.degenerate_proposals - done[1],
                                   st.unbounded_proposals - done[2]])
        p, d, u = st.epoch_proposals[-1]
        self.writer.add_scalar("controller/degenerate_share_epoch", d / p if p else 0.0, st.epoch)
        self.writer.add_scalar("controller/unbounded_share_epoch", u / p if p else 0.0, st.epoch)
        ppls = sorted(r["ppl"] for r in st.records if r["epoch"] == st.epoch - 1 and math.isfinite(r["ppl"]))
        # Median, not exp(mean loss): a few exploding children (loss far above a uniform guess, ln V) would
        # make the mean astronomically large and hide how the typical child trains; their count is logged.
        losses = sorted(st.epoch_losses)
        uniform = math.log(self.model.vocab_size)
        exploding = sum(1 for x in losses if x > uniform)
        st.windows += len(losses)
        st.exploding_windows += exploding
        st.epoch_windows.append([len(losses), exploding])
        if losses:
            self.writer.add_scalar("shared/exploding_share_epoch", exploding / len(losses), st.epoch)
        log.info("epoch %d/%d: shared train ppl median %s, %d of %d windows worse than a uniform guess (%.0f tokens/s); "
                 "children: %d evaluated, median ppl %s, best %s (so far %.1f); degenerate proposals %d/%d, "
                 "unbounded %d/%d; %.0f s",
                 st.epoch, cfg.search.epochs, f"{perplexity(losses[len(losses) // 2]):.4g}" if losses else "–",
                 exploding, len(losses), loop.tokens / max(loop.train_seconds, 1e-9), len(ppls),
                 f"{ppls[len(ppls) // 2]:.4g}" if ppls else "–", f"{ppls[0]:.1f}" if ppls else "–", self.best_ppl, d, p,
                 u, p, time.perf_counter() - self.wall_t0)
        st.epoch_losses, st.shared_done, st.controller_done = [], 0, 0
        if st.epoch >= cfg.train.decay_start:
            loop.lr *= cfg.train.lr_decay
        epoch_recs = [r for r in st.records if r["epoch"] == st.epoch - 1 and math.isfinite(r["ppl"])]
        if epoch_recs:
            best = min(epoch_recs, key=lambda r: r["ppl"])
            _log_cell(self.writer, "search/epoch_best_cell", Genotype.from_dict(best["genotype"]), best["ppl"], st.epoch)
        self.save()
        if self.hook is not None:
            self.hook("epoch", st.epoch)

    def save(self) -> None:
        """A checkpoint of everything the search needs to continue exactly: at the end of every epoch, and
        where an interrupt stopped it (between two steps of an epoch)."""
        loop = self.loop
        if self.history_file is not None:
            self.history_file.flush()
        save_checkpoint(
            checkpoint_dir(self.run_dir) / LAST,
            {
                "config": self.cfg_dict,
                "step": loop.step,
                "state_dicts": {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                "strategy": self.strategy.state_dict()},
                "loop": loop.to_dict(),
                "hidden": loop.hidden,
                "search": dataclasses.asdict(self.state),
                "generator": self.gen.get_state(),
                "rng": rng_state(),
                "wall_s": self.wall_before + time.perf_counter() - self.wall_t0,
            },
        )

    def _stop_if_interrupted(self) -> None:
        """SIGTERM / SIGINT (enas_rnn.interrupt): a checkpoint of this very point, then Interrupted."""
        if interrupt.requested():
            self.save()
            raise interrupt.Interrupted(self.loop.step, interrupt.requested_by())

    def _over_budget(self) -> bool:
        budget = self.cfg.search.time_budget_s
        return budget is not None and self.state.budget_used_s >= budget

    def _last_epoch_share(self, k: int = 1) -> Optional[float]:
        """Share of the last epoch's proposals that were degenerate (k = 1) or unbounded (k = 2)."""
        last = self.state.epoch_proposals[-1] if self.state.epoch_proposals else []
        if len(last) <= k or not last[0]:
            return None
        return last[k] / last[0]

    def write_outputs(self) -> dict[str, Any]:
        """Derive, then best_genotype.{json,png}, top_genotypes.json, metrics.json and TensorBoard's summary."""
        cfg, s, st, loop = self.cfg, self.cfg.search, self.state, self.loop
        top = derive(self.model, self.strategy, self.splits.valid, cfg, s.derive_samples, self.valid)
        if math.isfinite(top[0]["ppl"]) and worse_than_uniform(top[0]["ppl"], self.model.vocab_size):
            write_json(self.run_dir / "metrics.json", {"status": "worse than uniform", "best_ppl": top[0]["ppl"],
                                                        "children_evaluated": len(st.records), "epochs": st.epoch})
            raise SearchDiverged(
                f"the supernet ends worse than a uniform guess: its best derived cell has perplexity "
                f"{top[0]['ppl']:.4g} > {self.model.vocab_size:,} (the vocabulary): no best genotype was written. "
                "Lower train.lr (the shared SGD), keep model.state_clip set, or search longer")
        if not math.isfinite(top[0]["ppl"]):
            # No cell worth handing over: say so, and write no best genotype.
            write_json(self.run_dir / "metrics.json", {"status": "diverged", "children_evaluated": len(st.records),
                                                        "epochs": st.epoch, "derived": len(top)})
            raise SearchDiverged(
                f"no child reached a finite perplexity on the shared weights ({len(st.records)} evaluated in the "
                f"search, {len(top)} derived): no best genotype was written. Lower train.lr (the shared SGD), "
                "keep model.state_clip set, or check the data"
            )
        for r in top[: s.top_k]:
            r.update(describe(Genotype.from_dict(r["genotype"]), bool(s.require_memory)))
        best_g = Genotype.from_dict(top[0]["genotype"])
        write_text_atomic(self.run_dir / "best_genotype.json", best_g.to_json() + "\n")
        write_json(self.run_dir / "top_genotypes.json", top[: s.top_k])
        write_json(self.run_dir / "derived.json", top)  # every derived cell, best first (the selection's pool)
        fig = draw_genotype(best_g, self.run_dir / "best_genotype.png", title=f"best cell: derive ppl {top[0]['ppl']:.1f}")
        self.writer.add_figure("search/best_cell", fig, st.controller_step)
        self.writer.add_text("search/best_genotype", cell_markdown(best_g, f"derive ppl {top[0]['ppl']:.1f}"),
                             st.controller_step)
        metrics = {
            "strategy": s.strategy,
            "space": cfg.space.name,
            "best_ppl": top[0]["ppl"],
            "best_hash": top[0]["hash"],
            "epochs": st.epoch,
            "budget_used_s": st.budget_used_s,
            "stopped_by_budget": self._over_budget() and st.epoch < s.epochs,
            "controller_steps": st.controller_step,
            "shared_steps": loop.step,
            "children_evaluated": len(st.records),
            "diverged_children": sum(r["diverged"] for r in st.records),
            "degenerate_handling": s.degenerate,
            "proposals": st.proposals,
            "degenerate_proposals": st.degenerate_proposals,
            "degenerate_share": st.degenerate_proposals / st.proposals if st.proposals else 0.0,
            "degenerate_share_last_epoch": self._last_epoch_share(),
            "degenerate_evaluated": sum(bool(r.get("degenerate")) for r in st.records),
            "shared_degenerate_redrawn": st.shared_rejected - st.shared_unbounded_only,
            "unbounded_handling": self.unbounded_mode,
            "unbounded_proposals": st.unbounded_proposals,
            "unbounded_share": st.unbounded_proposals / st.proposals if st.proposals else 0.0,
            "unbounded_share_last_epoch": self._last_epoch_share(2),
            "unbounded_evaluated": sum(bool(r.get("unbounded")) for r in st.records),
            "shared_unbounded_redrawn": st.shared_unbounded,
            "best_depends_on_input": top[0].get("depends_on_input"),
            "best_has_memory": top[0].get("has_memory"),
            "best_reference_distance": top[0].get("reference_distance"),
            "skipped_shared_steps": loop.skipped, "refused_shared_steps": loop.refused,
            # shared windows whose child was worse than a uniform guess (loss > ln V): exploding children
            "exploding_windows": st.exploding_windows, "shared_windows": st.windows,
            "exploding_share": st.exploding_windows / st.windows if st.windows else None,
            "exploding_share_last_epoch": (st.epoch_windows[-1][1] / st.epoch_windows[-1][0]
                                           if st.epoch_windows and st.epoch_windows[-1][0] else None),
            "tokens_per_s": loop.tokens / loop.train_seconds if loop.train_seconds > 0 else 0.0,
            "wall_s": self.wall_before + time.perf_counter() - self.wall_t0,
            "device": str(self.device),
        }
        write_hparams(self.writer, hparams(cfg, "search", self.overrides),
                      {"hparam/best_shared_ppl": min(metrics["best_ppl"], PPL_CAP),
                       "hparam/degenerate_share": metrics["degenerate_share"],
                       "hparam/unbounded_share": metrics["unbounded_share"]}, st.controller_step)
        self.writer.close()
        write_json(self.run_dir / "metrics.json", metrics)
        return metrics


@torch.no_grad()
def derive(model: RNNLM, strategy: Strategy, valid: torch.Tensor, cfg: Any, n: int,
           accept: Optional[Callable[[Genotype], bool]] = None) -> list[dict[str, Any]]:
    """Samples n cells (only accepted ones when ``accept`` is given), evaluates each distinct one on
    the *same* first ``derive_batches`` validation windows with the shared weights, re-evaluates the
    best ``derive_rerank`` on ``derive_rerank_batches`` windows, and ranks them (best first).

    Every candidate of a stage sees the same windows, unlike ENAS-pytorch's derive, which compared
    cells on different single batches; the second stage gives the front runners enough tokens to be
    told apart (what a shortlist is then chosen from)."""
    s = cfg.search
    genotypes, _, _ = strategy.propose(n, accept)
    seen: dict[str, dict[str, Any]] = {}
    todo: list[Genotype] = []
    for g in genotypes:
        h = g.hash()
        if h in seen:
            seen[h]["count"] += 1
            continue
        # Keep the spelling that was evaluated: on shared weights, node numbers and operand slots
        # pick weight rows, so the canonical respelling of a cell is a different supernet child.
        seen[h] = {"hash": h, "ppl": math.nan, "windows": s.derive_batches, "count": 1, "genotype": g.to_dict()}
        todo.append(g)
    for g, ppl in zip(todo, evaluate_cells(model, todo, valid, cfg.data.bptt, s.derive_batches, 0)):
        seen[g.hash()]["ppl"] = ppl
    ranked = sorted(seen.values(), key=lambda r: (r["ppl"], r["hash"]))
    more = int(s.get("derive_rerank_batches") or 0)
    if more > s.derive_batches:
        front = ranked[: int(s.get("derive_rerank") or 0)]
        cells = [Genotype.from_dict(r["genotype"]) for r in front]
        for r, ppl in zip(front, evaluate_cells(model, cells, valid, cfg.data.bptt, more, 0)):
            r["ppl_first_stage"], r["ppl"], r["windows"] = r["ppl"], ppl, more
        ranked = sorted(front, key=lambda r: (r["ppl"], r["hash"])) + ranked[len(front):]
    for rank, r in enumerate(ranked):
        r["rank"] = rank + 1
    return ranked


def describe(g: Genotype, require_memory: bool = True) -> dict[str, Any]:
    """What the shortlist and summaries say about a cell: degeneracy, growth and distance to its space's reference."""
    a = g.analysis()
    ref, d = distance_to_reference(g)
    return {"depends_on_input": a.depends_on_input, "has_memory": a.has_memory,
            "degenerate": a.degenerate(require_memory), "why": a.why(require_memory), "growth": a.growth,
            "reference": ref, "reference_distance": None if d is None else d.value,
            "distance_exact": None if d is None else d.exact}


def _log_cell(writer: Any, tag: str, g: Genotype, ppl: float, step: int) -> None:
    writer.add_figure(tag, draw_genotype(g, None, title=f"{tag.split('/')[-1]}: ppl {ppl:.1f}"), step)
    writer.add_text(tag + "_formulas", cell_markdown(g, f"ppl {ppl:.1f}"), step)
