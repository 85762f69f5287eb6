"""The ENAS controller: an LSTM that samples a search space's decisions one after another.

It is generic over a space's list of decisions (``space.decisions()``): decision ``i`` has its own
output head (``num_choices_i`` logits) and its own embedding for the token fed back as the next
input, so a new search space needs no change here. Pham et al. 2018 (sec. 2.1) and
google-research ``enas_lm`` share heads between decisions of one kind and use attention for
sources; per-decision heads are the simpler generic form (carpedm20/ENAS-pytorch does the same).

Logits are shaped as in ENAS: ``tanh_constant * tanh(logits / temperature)`` bounds them, which
keeps the policy from collapsing early (Bello et al. 2017; Pham et al. 2018, 3.1).

No training code lives here; REINFORCE is in :mod:`enas_rnn.search`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas_rnn.genotype import Genotype
from enas_rnn.rules import INT1, NONNEG, POSITIVE, rule

Constraint = Callable[[list[int]], Optional[list[bool]]]  # a decision prefix -> allowed next choices (None: all)


@dataclass
class ControllerConfig:
    """Controller sizes and logit shaping; defaults after google-research enas_lm (controller.py)."""

    hidden_size: int = rule(64, INT1)  # enas_lm; the ENAS paper's PTB controller has 100
    temperature: float = rule(5.0, POSITIVE)  # enas_lm and the paper
    tanh_constant: float = rule(2.25, NONNEG)  # enas_lm (the paper: 2.5)
    init_range: float = rule(0.1, POSITIVE)  # uniform init of every controller weight (ENAS-pytorch)


@dataclass
class Sample:
    """A batch of sampled cells with what REINFORCE needs."""

    genotypes: list[Genotype]
    choices: Tensor  # [B, D] chosen index per decision
    log_prob: Tensor  # [B] summed log-probability (differentiable)
    entropy: Tensor  # [B] summed entropy of the per-decision distributions (differentiable)

    def select(self, index: Sequence[int]) -> "Sample":
        """The cells at ``index`` (log-probabilities and entropies stay differentiable)."""
        idx = torch.tensor(list(index), device=self.log_prob.device)
        return Sample([self.genotypes[i] for i in index], self.choices[idx], self.log_prob[idx], self.entropy[idx])

    @staticmethod
    def cat(parts: Sequence["Sample"]) -> "Sample":
        """Several samples as one batch, in order."""
        if len(parts) == 1:
            return parts[0]
        return Sample([g for p in parts for g in p.genotypes], torch.cat([p.choices for p in parts]),
                      torch.cat([p.log_prob for p in parts]), torch.cat([p.entropy for p in parts]))


class Controller(nn.Module):
    """Autoregressive policy over a space's decisions; ``sample(n)`` draws n cells at once."""

    def __init__(self, space, cfg: Optional[ControllerConfig] = None) -> None:
        super().__init__()
        self.space = space
        self.cfg = cfg or ControllerConfig()
        self.decisions = list(space.decisions())
        h = self.cfg.hidden_size
        self.start = nn.Parameter(torch.zeros(1, h))  # the first input, learned
        self.lstm = nn.LSTMCell(h, h)
        self.heads = nn.ModuleList(nn.Linear(h, d.num_choices) for d in self.decisions)
        self.embeds = nn.ModuleList(nn.Embedding(d.num_choices, h) for d in self.decisions)
        for p in self.parameters():
            nn.init.uniform_(p, -self.cfg.init_range, self.cfg.init_range)

    def _logits(self, i: int, h: Tensor) -> Tensor:
        logits = self.heads[i](h) / self.cfg.temperature  # [B, C_i]
        if self.cfg.tanh_constant:
            logits = self.cfg.tanh_constant * torch.tanh(logits)
        return logits

    def _run(
        self, n: int, forced: Optional[Tensor], generator: Optional[torch.Generator],
        constraint: Optional[Constraint] = None, stats: bool = True,
    ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Walks the decisions; samples (forced is None) or scores the given choices [n, D].

        With ``constraint(prefix) -> allowed choices or None`` the disallowed logits are masked, so the
        policy is the masked one: its log-probabilities and entropies, and hence REINFORCE's gradient,
        are those of the distribution that was actually sampled. ``stats=False`` skips the
        log-probabilities and entropies (returned as None): the same draws, for a child that only
        trains the shared weights.
        """
        x = self.start.expand(n, -1)  # [n, H]
        state = None
        choices, log_probs, entropies = [], [], []
        for i in range(len(self.decisions)):
            h, c = self.lstm(x, state)
            state = (h, c)
            logits = self._logits(i, h)  # [n, C_i]
            if constraint is not None:
                prefixes = torch.stack(choices, 1).tolist() if choices else [[] for _ in range(n)]
                masks = [constraint(p) for p in prefixes]
                if any(m is not None for m in masks):
                    allow = torch.tensor([m if m is not None else [True] * logits.size(1) for m in masks],
                                         dtype=torch.bool, device=logits.device)
                    logits = logits.masked_fill(~allow, float("-inf"))
            log_p = F.log_softmax(logits, dim=-1)  # [n, C_i]
            if forced is None:
                pick = torch.multinomial(log_p.detach().exp(), 1, generator=generator).squeeze(1)  # [n]
            else:
                pick = forced[:, i]
            choices.append(pick)
            if stats:
                log_probs.append(log_p.gather(1, pick[:, None]).squeeze(1))
                entropies.append(-(log_p.exp() * log_p.clamp(min=-1e4)).sum(-1))  # 0 * -inf of masked choices is 0
            x = self.embeds[i](pick)  # [n, H]
        if not stats:
            return torch.stack(choices, 1), None, None
        return torch.stack(choices, 1), torch.stack(log_probs, 1).sum(1), torch.stack(entropies, 1).sum(1)

    def sample(self, n: int = 1, generator: Optional[torch.Generator] = None,
               constraint: Optional[Constraint] = None) -> Sample:
        """Draws n cells (from the global torch RNG unless a generator is given), masked by ``constraint``."""
        choices, log_prob, entropy = self._run(n, None, generator, constraint)
        genotypes = [self.space.decode(row) for row in choices.tolist()]
        return Sample(genotypes, choices, log_prob, entropy)  # type: ignore[arg-type]

    @torch.no_grad()
    def draw(self, generator: Optional[torch.Generator] = None, constraint: Optional[Constraint] = None) -> Genotype:
        """One cell, exactly the one ``sample(1, ...)`` would draw from the same RNG state (the same ops
        on the same values), without the autograd graph, log-probability or entropy, and with the
        modules' call overhead cut out: the shared phase's child, drawn every window (~2x cheaper)."""
        lstm, cfg = self.lstm, self.cfg
        x = self.start
        h = c = x.new_zeros(1, lstm.hidden_size)  # nn.LSTMCell's state when none is given
        picks: list[int] = []
        for i in range(len(self.decisions)):
            h, c = torch.lstm_cell(x, (h, c), lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh)
            head = self.heads[i]
            logits = F.linear(h, head.weight, head.bias) / cfg.temperature  # [1, C_i], as _logits
            if cfg.tanh_constant:
                logits = cfg.tanh_constant * torch.tanh(logits)
            if constraint is not None:
                mask = constraint(list(picks))
                if mask is not None:
                    allow = torch.tensor([mask], dtype=torch.bool, device=logits.device)
                    logits = logits.masked_fill(~allow, float("-inf"))
            probs = F.log_softmax(logits, dim=-1).exp()
            pick = int(torch.multinomial(probs, 1, generator=generator))
            picks.append(pick)
            x = self.embeds[i].weight[pick:pick + 1]  # [1, H]: the embedding row
        return self.space.decode(picks)

    def log_prob(self, genotypes: Sequence[Genotype], constraint: Optional[Constraint] = None) -> tuple[Tensor, Tensor]:
        """Log-probability and entropy [B] of given cells (teacher forcing through the same path)."""
        device = self.start.device
        forced = torch.tensor([self.space.encode(g) for g in genotypes], dtype=torch.long, device=device)
        _, log_prob, entropy = self._run(len(genotypes), forced, None, constraint)
        return log_prob, entropy
