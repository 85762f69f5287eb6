"""Search strategies behind one small interface: who proposes cells and how it learns from rewards.

:class:`ENASStrategy` (REINFORCE with an EMA baseline and an entropy bonus, Pham et al. 2018) and
:class:`RandomStrategy` (Li & Talwalkar 2019, random search with weight sharing: uniform sampling,
no learning). The loop that drives them (``enas_rnn.search``) is shared, so every search result can
be compared with random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from enas_rnn.controller import Controller, ControllerConfig
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype


@dataclass
class ReinforceConfig:
    """REINFORCE settings of the ENAS strategy (the ``search.*`` keys of the same names)."""

    entropy_weight: float = 1e-4  # added to the reward (ENAS-pytorch entropy_coeff)
    baseline_decay: float = 0.95  # EMA of the reward (ENAS-pytorch 0.9, enas_lm 0.999)
    controller_lr: float = 3.5e-4  # Adam (Pham et al. 2018, 3.1)
    controller_clip: Optional[float] = None
    screened_reward: str = "skip"  # how screened-out candidates enter the update (enas_rnn.screen)


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

    def to(self, device: torch.device) -> "Strategy":
        """Moves whatever the strategy learns with to ``device``."""
        return self

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

    def __init__(self, controller: Controller, cfg: ReinforceConfig, generator: torch.Generator) -> None:
        self.controller = controller
        self.cfg = cfg
        self.generator = generator
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=cfg.controller_lr)
        self.baseline: Optional[float] = None

    def to(self, device: torch.device) -> "ENASStrategy":
        self.controller.to(device)
        return self

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
        if self.cfg.screened_reward == "min" and len(idx) < len(genotypes):
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
    name: str, space: Any, controller_cfg: ControllerConfig, cfg: ReinforceConfig, generator: torch.Generator
) -> Strategy:
    """Builds the named strategy; an unknown name lists the valid ones."""
    if name == "enas":
        return ENASStrategy(Controller(space, controller_cfg), cfg, generator)
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
