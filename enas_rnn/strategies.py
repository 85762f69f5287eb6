"""Search strategies behind one small interface: who proposes cells and how it learns from rewards.

:class:`ENASStrategy` (REINFORCE with an EMA baseline and an entropy bonus, Pham et al. 2018) and
:class:`RandomStrategy` (Li & Talwalkar 2019, random search with weight sharing: uniform sampling,
no learning). The loop that drives them (``enas_rnn.search``) is shared, so every search result can
be compared with random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from enas_rnn.controller import Constraint, Controller, ControllerConfig, Sample
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.genotype import Genotype


@dataclass
class ReinforceConfig:
    """REINFORCE settings of the ENAS strategy (the ``search.*`` keys of the same names)."""

    entropy_weight: float = 1e-4  # added to the reward (ENAS-pytorch entropy_coeff)
    baseline_decay: float = 0.95  # EMA of the reward (ENAS-pytorch 0.9, enas_lm 0.999)
    controller_lr: float = 3.5e-4  # Adam (Pham et al. 2018, 3.1)
    controller_clip: Optional[float] = None


@dataclass
class StepStats:
    """What one strategy update reports, one entry per proposal that entered it (logged to
    TensorBoard and search_history.jsonl)."""

    rewards: list[float]
    advantages: list[float]
    entropies: list[float]
    baseline: float
    loss: float


Accept = Optional[Callable[[Genotype], bool]]


class Strategy:
    """Proposes cells and learns (or not) from their rewards.

    ``accept`` (when given) restricts proposals to the cells it accepts, e.g. those that are not
    degenerate: draws are repeated until enough are accepted, and ``propose`` reports how many
    draws were rejected on the way.
    """

    def sample_for_training(self, accept: Accept = None) -> tuple[Genotype, int]:
        """One child for one shared-weight training window, and the number of rejected draws."""
        raise NotImplementedError

    def propose(self, n: int, accept: Accept = None) -> tuple[list[Genotype], Any, int]:
        """n candidates, whatever the strategy needs to learn from them later, and the rejected draws."""
        raise NotImplementedError

    def update(self, handle: Any, index: Sequence[int], rewards: Sequence[float]) -> StepStats:
        """Learns from ``rewards[j]`` of proposal ``index[j]``."""
        raise NotImplementedError

    def to(self, device: torch.device) -> "Strategy":
        """Moves whatever the strategy learns with to ``device``."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


#: Draws tried per wanted cell before giving up on finding an accepted one (an untrained controller in the
#: 8-node enas space with search.unbounded=penalty finds a bounded cell in 1 of 256 draws).
MAX_DRAWS_PER_CELL = 10_000


class RandomStrategy(Strategy):
    """Uniform sampling with weight sharing (Li & Talwalkar 2019): the control experiment.
    With ``accept``, uniform over the accepted subset; ``constraint`` (the space's ``allowed``) only
    makes that cheaper where the space can mask node decisions exactly (see ``SearchSpace.sample``)."""

    def __init__(self, space: Any, generator: torch.Generator, constraint: Optional[Constraint] = None) -> None:
        self.space = space
        self.generator = generator
        self.constraint = constraint

    def _draw(self, accept: Accept) -> tuple[Genotype, int]:
        for tries in range(MAX_DRAWS_PER_CELL):
            g = self.space.sample(self.generator, constraint=self.constraint)
            if accept is None or accept(g):
                return g, tries
        raise SearchSpaceExhausted(self.space, MAX_DRAWS_PER_CELL)

    def sample_for_training(self, accept: Accept = None) -> tuple[Genotype, int]:
        return self._draw(accept)

    def propose(self, n: int, accept: Accept = None) -> tuple[list[Genotype], Any, int]:
        draws = [self._draw(accept) for _ in range(n)]
        return [g for g, _ in draws], None, sum(r for _, r in draws)

    def update(self, handle: Any, index: Sequence[int], rewards: Sequence[float]) -> StepStats:
        n = len(rewards)
        return StepStats(list(rewards), [0.0] * n, [0.0] * n, 0.0, 0.0)


class SearchSpaceExhausted(UserError):
    """No acceptable cell in many draws: the space (or a collapsed policy) offers none."""

    def __init__(self, space: Any, draws: int) -> None:
        super().__init__(
            f"no acceptable cell in {draws} draws from {space!r}: every draw was degenerate or (search.unbounded) "
            "unbounded. Use more nodes (space.num_nodes), search.require_memory=false to accept cells without a "
            "working memory, or search.unbounded=mask|off")


class ENASStrategy(Strategy):
    """REINFORCE (Williams 1992) on ``c / ppl`` with an EMA baseline and an entropy bonus."""

    def __init__(self, controller: Controller, cfg: ReinforceConfig, generator: torch.Generator,
                 constraint: Optional[Constraint] = None) -> None:
        self.controller = controller
        self.cfg = cfg
        self.generator = generator
        self.constraint = constraint  # constrained decoding: the controller samples with masked logits
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=cfg.controller_lr)
        self.baseline: Optional[float] = None

    def to(self, device: torch.device) -> "ENASStrategy":
        self.controller.to(device)
        return self

    @torch.no_grad()
    def sample_for_training(self, accept: Accept = None) -> tuple[Genotype, int]:
        self.controller.eval()
        for tries in range(MAX_DRAWS_PER_CELL):
            g = self.controller.draw(self.generator, self.constraint)
            if accept is None or accept(g):
                return g, tries
        raise SearchSpaceExhausted(self.controller.space, MAX_DRAWS_PER_CELL)

    def propose(self, n: int, accept: Accept = None) -> tuple[list[Genotype], Any, int]:
        self.controller.train()
        sample = self.controller.sample(n, self.generator, self.constraint)
        if accept is None:
            return sample.genotypes, sample, 0
        # Rejection sampling: the update then only sees accepted cells (the policy conditioned on
        # acceptance; its normaliser's gradient is ignored, which is why penalty mode is the default).
        parts, got, rejected = [], 0, 0
        for _ in range(MAX_DRAWS_PER_CELL):
            keep = [i for i, g in enumerate(sample.genotypes) if accept(g)]
            rejected += len(sample.genotypes) - len(keep)
            keep = keep[: n - got]
            if keep:
                parts.append(sample.select(keep))
                got += len(keep)
            if got == n:
                return [g for p in parts for g in p.genotypes], Sample.cat(parts), rejected
            sample = self.controller.sample(n - got, self.generator, self.constraint)
        raise SearchSpaceExhausted(self.controller.space, MAX_DRAWS_PER_CELL * n)

    def update(self, handle: Any, index: Sequence[int], rewards: Sequence[float]) -> StepStats:
        sample = handle
        idx = torch.tensor(list(index), device=sample.log_prob.device)
        log_prob = sample.log_prob[idx]
        entropy = sample.entropy[idx]
        # The entropy bonus is part of the reward, as in enas_lm and ENAS-pytorch.
        reward = torch.tensor(list(rewards), dtype=log_prob.dtype, device=log_prob.device) \
            + self.cfg.entropy_weight * entropy.detach()
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
        return StepStats(
            rewards=reward.tolist(),
            advantages=advantage.tolist(),
            entropies=entropy.tolist(),
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
    name: str, space: Any, controller_cfg: ControllerConfig, cfg: ReinforceConfig, generator: torch.Generator,
    constraint: Optional[Constraint] = None,
) -> Strategy:
    """Builds the named strategy; an unknown name lists the valid ones. ``constraint``: the controller's
    masked decoding (enas), or what random search may skip drawing (random: see RandomStrategy)."""
    if name == "enas":
        return ENASStrategy(Controller(space, controller_cfg), cfg, generator, constraint)
    if name == "random":
        return RandomStrategy(space, generator, constraint)
    raise ConfigError(f"invalid config value search.strategy={name!r}: valid values are {', '.join(STRATEGIES)}")


def reward_from_ppl(ppl: float, c: float, nonfinite_reward: float, chance: Optional[float] = None) -> float:
    """``c / ppl``; a diverged child (non-finite ppl, or - given the chance level ``chance``, the vocabulary
    size - one worse than a uniform guess) gets the penalty reward instead."""
    ok = math.isfinite(ppl) and ppl > 0 and (chance is None or ppl <= chance)
    return c / ppl if ok else nonfinite_reward


def top_k_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores (ties broken by position; NaN ranks last), in proposal order."""
    order = sorted(range(len(scores)), key=lambda i: (-(scores[i]) if scores[i] == scores[i] else math.inf, i))
    return sorted(order[:k])
