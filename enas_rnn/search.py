"""Weight-sharing search: ENAS (REINFORCE controller) and random search, one alternating loop.

Each search epoch has two phases (Pham et al. 2018, sec. 2.2):

1. **shared phase**: the supernet's weights w are trained with SGD by the one LM loop
   (:func:`enas_rnn.train.train_steps`), each BPTT window running a freshly sampled child;
2. **controller phase**: children are sampled (optionally pre-screened by a training-free score),
   evaluated on validation windows with the shared weights, and the strategy learns from the
   rewards ``c / ppl``.

Strategies sit behind one small interface (:class:`Strategy`): :class:`ENASStrategy` (REINFORCE
with an EMA baseline and an entropy bonus) and :class:`RandomStrategy` (Li & Talwalkar 2019,
random search with weight sharing: uniform sampling, no learning). Everything else — the loop,
derive, outputs, checkpoints — is shared, so every search result can be compared with random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from enas_rnn.controller import Controller, ControllerConfig
from enas_rnn.mrs import HiddenCovConfig, MRSConfig  # mrs imports neither search nor conf: no cycle
from enas_rnn.genotype import Genotype
from enas_rnn.errors import ConfigError


@dataclass
class SearchConfig:
    """The alternating loop and REINFORCE. Defaults: Pham et al. 2018 and carpedm20/ENAS-pytorch
    (config.py), cited per field; see conf/search/enas.yaml."""

    strategy: str = "enas"  # enas | random
    epochs: int = 150  # ENAS-pytorch max_epoch
    shared_steps: Optional[int] = 400  # windows per shared phase (ENAS-pytorch); null: one pass over train
    controller_steps: int = 2000  # controller updates per epoch (ENAS-pytorch controller_max_step)
    children_per_step: int = 1  # children evaluated per controller update (enas_lm aggregates 10)
    reward_c: float = 80.0  # reward = c / valid ppl (enas_lm REWARD_CONSTANT, ENAS-pytorch reward_c)
    reward_batches: int = 1  # validation windows per child reward, rotating through the split
    entropy_weight: float = 1e-4  # added to the reward (ENAS-pytorch entropy_coeff)
    baseline_decay: float = 0.95  # EMA of the reward (ENAS-pytorch 0.9, enas_lm 0.999)
    controller_lr: float = 3.5e-4  # Adam (Pham et al. 2018, 3.1)
    controller_clip: Optional[float] = None
    nonfinite_reward: float = 0.0  # reward of a child whose validation loss is not finite
    derive_samples: int = 100  # cells drawn at derive time (ENAS-pytorch derive_num_sample)
    derive_batches: int = 10  # validation windows, the same for every derived cell
    top_k: int = 5  # cells kept in top_genotypes.json


@dataclass
class ScreenConfig:
    """Training-free pre-screening of children (see enas_rnn.mrs). ``name=none`` turns it off."""

    name: str = "none"  # none | mrs | hidden_cov
    candidates: int = 8  # K cells sampled per controller step
    keep: int = 1  # top k by score evaluated on shared weights
    # How screened-out candidates enter REINFORCE: "skip" leaves them out of the update (their
    # sampling cost is only the score); "min" gives them the lowest reward of the evaluated ones,
    # teaching the controller to avoid what the score rejects.
    screened_reward: str = "skip"
    # Scorer settings. MRS for screening: few draws, CE on a tiny slice, and a relative
    # threshold (an absolute t means nothing for a 10k-word softmax); see conf/screen/mrs.yaml.
    mrs: MRSConfig = field(
        default_factory=lambda: MRSConfig(samples=4, error="ce", threshold_mode="quantile", quantile=0.1)
    )
    hidden_cov: HiddenCovConfig = field(default_factory=HiddenCovConfig)
    bptt: Optional[int] = None  # rows of the fixed validation slice scored (None: data.bptt)
    batch: Optional[int] = None  # its columns, from the validation stream (None: all eval_batch_size)
    pool: int = 0  # quantile pool: 0 = this step's candidates only (stateless); n > 0: + last n distinct cells


@dataclass
class StepStats:
    """What one strategy update reports (logged to TensorBoard and search_history.jsonl)."""

    rewards: list[float]
    advantages: list[float]
    entropies: list[float]
    baseline: float
    loss: float


class Strategy:
    """Proposes cells and learns (or not) from their rewards."""

    def sample_for_training(self) -> Genotype:
        """One child for one shared-weight training window."""
        raise NotImplementedError

    def propose(self, n: int) -> tuple[list[Genotype], Any]:
        """n candidates and whatever the strategy needs to learn from them later."""
        raise NotImplementedError

    def update(self, genotypes: Sequence[Genotype], handle: Any, keep: Sequence[int], rewards: Sequence[float]) -> StepStats:
        """Learns from the rewards of the kept candidates (indices into the proposal)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RandomStrategy(Strategy):
    """Uniform sampling with weight sharing (Li & Talwalkar 2019): the control experiment."""

    def __init__(self, space: Any, generator: torch.Generator) -> None:
        self.space = space
        self.generator = generator

    def sample_for_training(self) -> Genotype:
        return self.space.sample(self.generator)

    def propose(self, n: int) -> tuple[list[Genotype], Any]:
        return [self.space.sample(self.generator) for _ in range(n)], None

    def update(self, genotypes, handle, keep, rewards) -> StepStats:
        return StepStats(list(rewards), [0.0] * len(rewards), [0.0] * len(rewards), 0.0, 0.0)


class ENASStrategy(Strategy):
    """REINFORCE (Williams 1992) on ``c / ppl`` with an EMA baseline and an entropy bonus."""

    def __init__(self, controller: Controller, cfg: SearchConfig, screen: ScreenConfig, generator: torch.Generator) -> None:
        self.controller = controller
        self.cfg = cfg
        self.screen = screen
        self.generator = generator
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=cfg.controller_lr)
        self.baseline: Optional[float] = None

    @torch.no_grad()
    def sample_for_training(self) -> Genotype:
        self.controller.eval()
        return self.controller.sample(1, self.generator).genotypes[0]

    def propose(self, n: int) -> tuple[list[Genotype], Any]:
        self.controller.train()
        sample = self.controller.sample(n, self.generator)
        return sample.genotypes, sample

    def update(self, genotypes, handle, keep, rewards) -> StepStats:
        sample = handle
        rewards = list(rewards)
        idx = list(keep)
        if self.screen.screened_reward == "min" and len(idx) < len(genotypes):
            # Screened-out candidates count as no better than the worst evaluated child.
            worst = min(rewards)
            rest = [i for i in range(len(genotypes)) if i not in set(idx)]
            idx += rest
            rewards += [worst] * len(rest)
        index = torch.tensor(idx, device=sample.log_prob.device)
        log_prob = sample.log_prob[index]
        entropy = sample.entropy[index]
        # The entropy bonus is part of the reward, as in enas_lm and ENAS-pytorch.
        reward = torch.tensor(rewards, dtype=log_prob.dtype, device=log_prob.device) + self.cfg.entropy_weight * entropy.detach()
        mean_reward = float(reward.mean())
        if self.baseline is None:
            self.baseline = mean_reward  # start at the first reward instead of 0: no initial bias
        # Advantage against the baseline *before* this step's rewards enter it.
        advantage = reward - self.baseline
        loss = -(log_prob * advantage).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.controller_clip:
            torch.nn.utils.clip_grad_norm_(self.controller.parameters(), self.cfg.controller_clip)
        self.optimizer.step()
        baseline_used = self.baseline
        self.baseline = self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * mean_reward
        n_eval = len(keep)
        return StepStats(
            rewards=reward.tolist()[:n_eval],
            advantages=advantage.tolist()[:n_eval],
            entropies=entropy.tolist()[:n_eval],
            baseline=baseline_used,
            loss=float(loss.detach()),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


STRATEGIES = ("enas", "random")


def make_strategy(
    name: str, space: Any, controller_cfg: ControllerConfig, cfg: SearchConfig, screen: ScreenConfig, generator: torch.Generator
) -> Strategy:
    """Builds the named strategy; an unknown name lists the valid ones."""
    if name == "enas":
        return ENASStrategy(Controller(space, controller_cfg), cfg, screen, generator)
    if name == "random":
        return RandomStrategy(space, generator)
    raise ConfigError(f"invalid config value search.strategy={name!r}: valid values are {', '.join(STRATEGIES)}")


def reward_from_ppl(ppl: float, c: float, nonfinite_reward: float) -> float:
    """``c / ppl``; a diverged child (non-finite ppl) gets the penalty reward instead."""
    return c / ppl if math.isfinite(ppl) and ppl > 0 else nonfinite_reward


def top_k_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores (ties broken by position; NaN ranks last), in proposal order."""
    order = sorted(range(len(scores)), key=lambda i: (-(scores[i]) if scores[i] == scores[i] else math.inf, i))
    return sorted(order[:k])


@dataclass
class SearchState:
    """Progress of a search beyond the LM loop's own state; checkpointed every epoch."""

    epoch: int = 0
    controller_step: int = 0
    valid_pos: int = 0  # next validation row for rewards (rotates through the split)
    records: list[dict[str, Any]] = field(default_factory=list)  # one per evaluated child
