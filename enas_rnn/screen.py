"""Training-free pre-screening of a search's candidates: score K sampled children, evaluate the top k.

The screener looks its score up by name in the score registry (``enas_rnn.scores``) and scores
every candidate of a controller step on one fixed held-out slice, so the top-k is a fair comparison.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import Tensor

from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype
from enas_rnn.rules import INT0, INT1, OPT_INT1, one_of, rule
from enas_rnn.scores import SCORES, HiddenCovConfig, LMSpec, MRSConfig, ScoreCache, make_score

__all__ = ["ScreenConfig", "Screener", "make_screener", "SCREENED_REWARDS"]

#: How screened-out candidates enter REINFORCE.
SCREENED_REWARDS: tuple[str, ...] = ("skip", "min")


@dataclass
class ScreenConfig:
    """Training-free pre-screening of children. ``name=none`` turns it off; else a registered score."""

    name: str = rule("none", (lambda v: v == "none" or v in SCORES, lambda: "none or one of " + ", ".join(sorted(SCORES))))
    candidates: int = rule(8, INT1)  # K cells sampled per controller step
    keep: int = rule(1, INT1)  # top k by score evaluated on shared weights
    # How screened-out candidates enter REINFORCE: "skip" leaves them out of the update (their
    # sampling cost is only the score); "min" gives them the lowest reward of the evaluated ones,
    # teaching the controller to avoid what the score rejects.
    screened_reward: str = rule("skip", one_of(SCREENED_REWARDS))
    # Scorer settings. MRS for screening: few draws, CE on a tiny slice, and a relative
    # threshold (an absolute t means nothing for a 10k-word softmax); see conf/screen/mrs.yaml.
    mrs: MRSConfig = field(
        default_factory=lambda: MRSConfig(samples=4, error="ce", threshold_mode="quantile", quantile=0.1)
    )
    hidden_cov: HiddenCovConfig = field(default_factory=HiddenCovConfig)
    bptt: Optional[int] = rule(None, OPT_INT1)  # rows of the fixed validation slice scored (None: data.bptt)
    batch: Optional[int] = rule(None, OPT_INT1)  # its columns, from the validation stream (None: all eval_batch_size)
    pool: int = rule(0, INT0)  # quantile pool: 0 = this step's candidates only (stateless); n > 0: + last n distinct cells

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if cfg.name != "none" and not 1 <= cfg.keep <= cfg.candidates:
            raise ConfigError(f"{key('keep')}={cfg.keep} must be between 1 and {key('candidates')}={cfg.candidates}")


class Screener:
    """``screener(genotypes) -> list[float]``: a registered score of each candidate on one fixed slice.

    Undefined scores (hidden_cov with a constant unit) become -inf: they rank last and stay valid
    JSON-able floats in the history.
    """

    def __init__(self, name: str, data: Tensor, spec: LMSpec, cfg: Any, pool: int = 0) -> None:
        self.name = name
        self.data = data
        self.cache = ScoreCache()
        self.score = make_score(name, spec, cfg, self.cache, pool)
        self.seconds = 0.0  # total scoring time (for cost reports)

    def __call__(self, genotypes: Sequence[Genotype]) -> list[float]:
        start = time.perf_counter()
        try:
            scores = [r.score for r in self.score(genotypes, self.data)]
            return [s if math.isfinite(s) else -math.inf for s in scores]
        finally:
            self.seconds += time.perf_counter() - start


def make_screener(cfg: Any, vocab_size: int, valid: Tensor) -> Optional[Screener]:
    """The pre-screener of a search config (``cfg.screen``), None when screening is off.

    The slice is the first ``screen.bptt`` (default ``data.bptt``) + 1 rows of the first
    ``screen.batch`` columns of the validation stream: small and fixed, so every candidate of
    every step is compared on the same tokens and screening stays cheap. The scoring LM has the
    supernet's sizes, tying, state clip and init range (``cfg.model``).
    """
    sc = cfg.screen
    if sc.name == "none":
        return None
    rows = int(sc.bptt if sc.get("bptt") is not None else cfg.data.bptt) + 1
    cols = valid.size(1) if sc.get("batch") is None else min(int(sc.batch), valid.size(1))
    data = valid[:rows, :cols]  # [bptt + 1, batch]
    m = cfg.model
    spec = LMSpec(int(vocab_size), int(m.emb_size), int(m.hidden_size), bool(m.tie_weights), m.state_clip, m.init_range)
    return Screener(str(sc.name), data, spec, sc.get(sc.name), int(sc.get("pool") or 0))
