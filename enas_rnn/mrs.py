"""MRS: mean absolute error random sampling, a training-free architecture score.

Method (Camero, Toutouh & Alba, "Low-cost recurrent neural network expected
performance evaluation", arXiv:1805.07159; EAAI 96 (2020) 103946; ASOC 106
(2021) 107356): keep the architecture fixed, draw *all* its weights at random
N times, and for every draw measure the error of the untrained network on
held-out data. Fit a normal distribution, truncated to the range the error can
take, to the N errors and score the architecture by the log-probability that
its error is below a small threshold t. Higher is better: an architecture whose
random draws already tend to give low error is expected to train well.

What the authors' code does (github.com/acamero/dlopt, ``dlopt/sampling.py``
``MAERandomSampling.fit`` and ``publications/caepia2018/sampler.py``), and what
we follow or change here:

* weights: every weight tensor redrawn from N(0, 1) (``util.random_normal``;
  its ``loc``/``scale`` keyword handling is broken, so it is always N(0, 1));
  the CAEPIA'18 scripts also offer U(-1, 1). We offer ``normal`` (N(0, scale)),
  ``uniform`` (U(-scale, scale)) and ``init`` (the modules' own
  ``reset_parameters``), all driven by one seeded :class:`torch.Generator`.
* N: 30 in their example configs (``num_samples``); default ``samples=30``.
* data: the *test* split, cut into look-back windows, predicted one step ahead
  (``dataset.testing_data`` in ``tools/architecture.py``).
* fit: ``mean = np.mean``, ``sd = np.std`` (population sd, ddof=0) - same here.
* truncation: ``[truncated_lower, truncated_upper] = [0, 2]`` for their sine
  example (targets and tanh outputs both in [-1, 1], so MAE is in [0, 2]).
  Our default ``hi`` comes from the error registry: 2.0 for ``"mae"`` for the
  same reason; pass ``hi=1.0`` for outputs and targets in [0, 1].
* score: ``np.log(scipy.stats.truncnorm.cdf(t, ...))`` with ``t = 0.01`` and no
  guard, so an underflowing cdf gives ``-inf``. *Deviation:* we evaluate
  ``log P`` in log space (``scipy.special.log_ndtr``), which stays finite and
  ordered far into the tail (where the cdf itself underflows); ``score`` is
  then clamped below at ``log(floor)`` (default ``floor = 1e-300``, i.e. about
  -690.8) so that no score is ever ``-inf``. ``MRSResult.log_p`` keeps the
  unclamped value; ``floor = 0`` disables the clamp.
* ``sd == 0`` (all draws equal) is handled exactly: the fitted distribution is
  a point mass, so ``p = 1`` if ``mean <= t`` else ``0`` (scipy would give NaN).
* non-finite errors (a draw that overflows) count as the worst error ``hi``
  (or ``+inf`` when ``hi`` is infinite, which makes ``p = 0``).
* *Addition:* a relative threshold (``threshold_mode="quantile"``): ``t`` is the
  q-quantile of all errors sampled so far in the population, because an
  absolute ``t = 0.01`` is meaningless for errors like cross-entropy.

Language models (second half of this module): :func:`mrs_score_genotype` scores a
cell inside the RNNLM that would be trained, with the LM errors ``"ce"`` (per-token
cross-entropy capped at 10 ln V, exact range [0, 10 ln V]) and ``"softmax_mae"``
(the paper's MAE of softmax vs one-hot, exact range [0, 2/V]); :class:`MRSCache`
scores identical cells (same ``Genotype.hash()``) once; :func:`hidden_cov_score`
is the competitor (Serianni & Kalita, ACL 2023); :func:`make_lm_screener` is the
search's pre-screen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import log_ndtr
from torch import Tensor, nn

__all__ = [
    "MRSConfig",
    "MRSResult",
    "ErrorSpec",
    "ERRORS",
    "register_error",
    "resolve_hi",
    "truncnorm_log_cdf",
    "score_from_errors",
    "randomize_",
    "mrs_score_module",
    "mrs_score_regression",
    "ThresholdTracker",
    "SCORES",
    "register_score",
    "get_score",
    "DISTRIBUTIONS",
    # language models (issue 5)
    "CE_CAP_FACTOR",
    "lm_error_hi",
    "data_fingerprint",
    "MRSCache",
    "LMSpec",
    "mrs_lm_errors",
    "mrs_lm_errors_many",
    "mrs_score_genotype",
    "HiddenCovConfig",
    "HiddenCovResult",
    "hidden_correlation",
    "hidden_cov_from_corr",
    "hidden_cov_score",
    "LMScreener",
    "make_lm_screener",
]

#: Weight distributions understood by :func:`randomize_`.
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "init")
_THRESHOLD_MODES: tuple[str, ...] = ("absolute", "quantile")


# --------------------------------------------------------------------------- config / result


@dataclass
class MRSConfig:
    """Settings of one MRS evaluation (a Hydra structured config: plain types only).

    samples: N, number of random weight draws (authors: 30 in dlopt's configs).
    dist: "normal" = N(0, scale) (paper: N(0, 1)); "uniform" = U(-scale, scale)
        (CAEPIA'18 scripts: U(-1, 1)); "init" = each submodule's own
        ``reset_parameters()`` under the seeded generator (``scale`` unused).
    error: name in :data:`ERRORS` ("mae" here; the language-model code adds more).
    lo, hi: range the error can take, where the normal fit is truncated;
        ``hi=None`` uses the error's registered default (2.0 for "mae": outputs
        and targets in [-1, 1], as in the authors' sine setup).
    threshold: absolute t of P(error <= t) (paper: 0.01).
    threshold_mode: "absolute" or "quantile" (t = ``quantile``-quantile of the
        errors of the population scored so far, see :class:`ThresholdTracker`).
    floor: scores are clamped below at log(floor) so they are never -inf;
        0 disables the clamp.
    seed: seed of the private torch.Generator used for the draws.
    """

    samples: int = 30
    dist: str = "normal"
    scale: float = 1.0
    error: str = "mae"
    lo: float = 0.0
    hi: Optional[float] = None
    threshold: float = 0.01
    threshold_mode: str = "absolute"
    quantile: float = 0.1
    floor: float = 1e-300
    seed: int = 0


@dataclass(frozen=True)
class MRSResult:
    """Outcome of one MRS evaluation. ``score`` is higher-is-better."""

    score: float  # max(log_p, log(floor))
    p: float  # P(error <= threshold) under the truncated-normal fit
    mean: float  # mean of the sampled errors
    sd: float  # population sd (ddof=0, as numpy's default used by the authors)
    samples: tuple[float, ...]  # the N sampled errors, in draw order
    seconds: float  # wall time of sampling + fit (0 for score_from_errors)
    threshold: float  # the t actually used
    log_p: float = -math.inf  # exact log P (not clamped; -inf only if P is exactly 0)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        """Flat dict for CSV/JSON rows (samples omitted unless asked)."""
        d = dataclasses.asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


# --------------------------------------------------------------------------- error registry


@dataclass(frozen=True)
class ErrorSpec:
    """An error measure ``fn(outputs, targets) -> float`` and its default upper bound."""

    fn: Callable[[Any, Tensor], float]
    hi: float


#: Error name -> spec. The language-model code registers "ce" / "softmax_mae".
ERRORS: dict[str, ErrorSpec] = {}


def register_error(name: str, hi: float, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(outputs, targets) -> float`` as error ``name``.

    ``hi`` is the default truncation upper bound used when ``MRSConfig.hi`` is None
    (``math.inf`` for unbounded errors such as cross-entropy).
    """

    def deco(fn: Callable[[Any, Tensor], float]) -> Callable[[Any, Tensor], float]:
        if name in ERRORS and not replace:
            raise ValueError(f"error {name!r} is already registered")
        ERRORS[name] = ErrorSpec(fn=fn, hi=float(hi))
        return fn

    return deco


def _first_tensor(outputs: Any) -> Tensor:
    """Modules such as nn.LSTM return tuples; the prediction is the first item."""
    while isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return outputs


@register_error("mae", hi=2.0)
def mae_error(outputs: Any, targets: Tensor) -> float:
    """Mean absolute error; outputs are reshaped to the targets' shape if sizes match."""
    out = _first_tensor(outputs)
    if out.shape != targets.shape:
        if out.numel() != targets.numel():
            raise ValueError(
                f"outputs {tuple(out.shape)} and targets {tuple(targets.shape)} differ in size"
            )
        out = out.reshape(targets.shape)  # shape: e.g. (B, 1) -> (B,)
    return float((out - targets).abs().mean().item())


def resolve_hi(cfg: MRSConfig) -> float:
    """The truncation upper bound: ``cfg.hi`` or the registered default of ``cfg.error``."""
    if cfg.hi is not None:
        return float(cfg.hi)
    if cfg.error not in ERRORS:
        raise KeyError(
            f"unknown error {cfg.error!r} (known: {sorted(ERRORS)}); register it or set cfg.hi"
        )
    return ERRORS[cfg.error].hi


# --------------------------------------------------------------------------- truncated normal


def _log_diff_ndtr(u: float, v: float) -> float:
    """log(Phi(u) - Phi(v)) for u >= v, accurate in both tails.

    When both points are above the median we use Phi(u) - Phi(v) = Phi(-v) -
    Phi(-u) so that both terms are small (no catastrophic cancellation near 1).
    """
    if u <= v:
        return -math.inf
    if v >= 0.0:
        la, lb = float(log_ndtr(-v)), float(log_ndtr(-u))
    else:
        la, lb = float(log_ndtr(u)), float(log_ndtr(v))
    if lb == -math.inf:
        return la
    # log(e^la - e^lb) = la + log1p(-e^(lb - la)); lb < la here.
    return la + math.log1p(-math.exp(lb - la))


def truncnorm_log_cdf(
    t: float, mean: float, sd: float, lo: float, hi: float, floor: float = 1e-300
) -> tuple[float, float]:
    """``(log p, p)`` with p = P(X <= t), X ~ N(mean, sd) truncated to [lo, hi].

    ``log p`` is exact (computed in log space), except that it is clamped below
    at ``log(floor)`` when ``floor > 0``; ``p`` is ``exp`` of the unclamped value.
    ``sd == 0`` is a point mass at ``mean`` (clipped to [lo, hi]).
    """
    log_p = _truncnorm_log_cdf_exact(t, mean, sd, lo, hi)
    p = math.exp(log_p) if log_p > -math.inf else 0.0
    if floor > 0.0:
        log_p = max(log_p, math.log(floor))
    return log_p, p


def _truncnorm_log_cdf_exact(t: float, mean: float, sd: float, lo: float, hi: float) -> float:
    """Unclamped log P(X <= t); see :func:`truncnorm_log_cdf`."""
    if not hi > lo:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    if math.isnan(t) or math.isnan(mean) or math.isnan(sd) or sd < 0:
        raise ValueError(f"invalid arguments t={t}, mean={mean}, sd={sd}")
    # Outside the support the answer does not depend on the fit.
    if t < lo:
        return -math.inf
    if t >= hi:
        return 0.0
    if sd == 0.0 or math.isinf(mean) or math.isinf(sd):
        if math.isinf(sd) and not math.isinf(mean):
            # Infinitely wide normal truncated to [lo, hi] is uniform there.
            if math.isinf(hi) or math.isinf(lo):
                return -math.inf if math.isinf(hi) else 0.0
            return math.log((t - lo) / (hi - lo)) if t > lo else -math.inf
        # Point mass at clip(mean, lo, hi); with lo <= t < hi that is "mean <= t".
        return 0.0 if mean <= t else -math.inf
    a = (lo - mean) / sd
    b = (hi - mean) / sd
    x = (t - mean) / sd
    num = _log_diff_ndtr(x, a)
    den = _log_diff_ndtr(b, a)
    if den == -math.inf:
        # The whole normal lies so far outside [lo, hi] that double precision
        # cannot see its mass there: fall back to the limiting point mass at
        # the nearer bound (mean below lo -> mass at lo <= t, so p = 1).
        return 0.0 if mean < lo else -math.inf
    return min(0.0, num - den)


def _clean_errors(errors: Iterable[float], hi: float) -> np.ndarray:
    """Errors as float64; non-finite ones become the worst value ``hi`` (inf if unbounded)."""
    e = np.asarray(list(errors), dtype=np.float64).ravel()
    if e.size == 0:
        raise ValueError("need at least one error sample")
    bad = ~np.isfinite(e)
    if bad.any():
        e = e.copy()
        e[bad] = hi if math.isfinite(hi) else math.inf
    return e


def score_from_errors(
    errors: Sequence[float],
    threshold: float,
    lo: float = 0.0,
    hi: float = 2.0,
    floor: float = 1e-300,
) -> MRSResult:
    """Fit the truncated normal to ``errors`` and score P(error <= threshold).

    Returns an :class:`MRSResult` with ``seconds = 0``.
    """
    e = _clean_errors(errors, hi)
    mean = float(e.mean())
    # Population sd (ddof=0) like the authors' np.std; inf-safe.
    sd = float(e.std()) if math.isfinite(mean) else math.inf
    if math.isinf(mean):
        exact = -math.inf  # some draw had an unbounded error: treat the architecture as hopeless
    else:
        exact = _truncnorm_log_cdf_exact(float(threshold), mean, sd, lo, hi)
    p = math.exp(exact) if exact > -math.inf else 0.0
    score = max(exact, math.log(floor)) if floor > 0.0 else exact
    return MRSResult(
        score=score,
        p=p,
        mean=mean,
        sd=sd,
        samples=tuple(float(v) for v in np.asarray(list(errors), dtype=np.float64).ravel()),
        seconds=0.0,
        threshold=float(threshold),
        log_p=exact,
    )


# --------------------------------------------------------------------------- relative threshold


class ThresholdTracker:
    """Relative threshold: t = q-quantile of all errors sampled so far in a population.

    ``threshold(current)`` pools the stored errors with ``current`` (the item
    being scored), so the very first item gets the q-quantile of its *own*
    errors rather than an unrelated absolute value; ``add`` then stores them.
    Thresholds drift as the pool grows, so scores taken at different times are
    not strictly comparable; :meth:`rescore` recomputes a score against the
    current pool for a final, consistent ranking.
    """

    def __init__(self, quantile: float = 0.1, window: int | None = None) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.quantile = float(quantile)
        # window: keep only the last `window` items, so a long search neither grows memory
        # nor slows np.quantile without bound (None: keep everything, as before).
        self._pool: deque[np.ndarray] = deque(maxlen=window)

    def __len__(self) -> int:
        """Number of items (architectures) added so far."""
        return len(self._pool)

    @staticmethod
    def _as_array(errors: Iterable[float]) -> np.ndarray:
        e = np.asarray(list(errors), dtype=np.float64).ravel()
        # NaN would poison np.quantile; an undefined error is the worst error.
        return np.where(np.isnan(e), np.inf, e)

    def threshold(self, current: Iterable[float] | None = None) -> float:
        """q-quantile of the pooled errors (stored plus ``current``)."""
        parts = list(self._pool)
        if current is not None:
            parts.append(self._as_array(current))
        if not parts or sum(p.size for p in parts) == 0:
            raise ValueError("ThresholdTracker is empty and no current errors were given")
        # inverted_cdf: an actual sample value, no interpolation (so an inf
        # error next to the quantile cannot produce inf or 0 * inf = nan).
        return float(np.quantile(np.concatenate(parts), self.quantile, method="inverted_cdf"))

    def add(self, errors: Iterable[float]) -> None:
        """Store one item's sampled errors."""
        self._pool.append(self._as_array(errors))

    def rescore(
        self, result: MRSResult, lo: float = 0.0, hi: float = 2.0, floor: float = 1e-300
    ) -> MRSResult:
        """``result`` re-scored against the threshold of the current pool."""
        new = score_from_errors(result.samples, self.threshold(), lo, hi, floor)
        return dataclasses.replace(new, seconds=result.seconds)


# --------------------------------------------------------------------------- weight sampling


def _draw_(p: Tensor, dist: str, scale: float, generator: torch.Generator) -> None:
    """Overwrite ``p`` in place with N(0, scale) or U(-scale, scale) draws.

    Draws always come from the CPU generator (so results do not depend on the
    device) and are copied over for non-CPU or low-precision tensors.
    """
    direct = p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
    buf = p if direct else torch.empty(p.shape, dtype=torch.float32)
    if dist == "normal":
        buf.normal_(0.0, scale, generator=generator)
    else:
        buf.uniform_(-scale, scale, generator=generator)
    if not direct:
        p.copy_(buf)


def randomize_(
    module: nn.Module, dist: str = "normal", scale: float = 1.0, generator: torch.Generator | None = None
) -> None:
    """Redraw ALL parameters of ``module`` in place.

    ``normal``: N(0, scale); ``uniform``: U(-scale, scale); ``init``: call every
    submodule's ``reset_parameters()`` with torch's global RNG temporarily
    seeded from ``generator`` (``reset_parameters`` takes no generator, so we
    fork the RNG state and restore it afterwards). With ``init``, every
    parameter must belong to some module that has ``reset_parameters``;
    otherwise a ValueError names the uncovered parameters.
    """
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown dist {dist!r}; expected one of {DISTRIBUTIONS}")
    if generator is None:
        generator = torch.Generator()
    with torch.no_grad():
        if dist in ("normal", "uniform"):
            if scale < 0:
                raise ValueError(f"scale must be >= 0, got {scale}")
            for p in module.parameters():  # deduplicated, so tied weights are drawn once
                _draw_(p, dist, float(scale), generator)
            return
        resettable = [
            m for m in module.modules() if callable(getattr(m, "reset_parameters", None))
        ]
        covered = {id(p) for m in resettable for p in m.parameters()}
        missing = [n for n, p in module.named_parameters() if id(p) not in covered]
        if missing:
            raise ValueError(
                "dist='init' needs reset_parameters() on a module owning each parameter; "
                f"uncovered: {missing}"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        cuda = sorted(
            {p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"}
        )
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for m in resettable:
                m.reset_parameters()


# --------------------------------------------------------------------------- scoring


def _validate(cfg: MRSConfig) -> None:
    if cfg.samples < 1:
        raise ValueError(f"samples must be >= 1, got {cfg.samples}")
    if cfg.dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown dist {cfg.dist!r}; expected one of {DISTRIBUTIONS}")
    if cfg.threshold_mode not in _THRESHOLD_MODES:
        raise ValueError(
            f"unknown threshold_mode {cfg.threshold_mode!r}; expected one of {_THRESHOLD_MODES}"
        )
    if cfg.floor < 0:
        raise ValueError(f"floor must be >= 0, got {cfg.floor}")


def mrs_score_module(
    module: nn.Module,
    error_fn: Callable[[nn.Module], float],
    cfg: MRSConfig | None = None,
    tracker: ThresholdTracker | None = None,
) -> MRSResult:
    """MRS score of ``module``: N random draws -> N errors -> truncated-normal fit -> score.

    Pure and seeded: the module's parameters, buffers and train/eval flags are
    saved and restored (it is not left randomized); draws come from a private
    ``torch.Generator(cfg.seed)``; everything runs in eval mode under
    ``torch.no_grad()``. ``error_fn(module)`` returns the error of the module as
    it currently is. In "quantile" mode the threshold comes from ``tracker``
    (a fresh one, i.e. this item's own errors, if None) and this item's errors
    are then added to it.
    """
    cfg = cfg or MRSConfig()
    _validate(cfg)
    hi = resolve_hi(cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    saved = [(t, t.detach().clone()) for t in list(module.parameters()) + list(module.buffers())]
    modes = [(m, m.training) for m in module.modules()]
    errors: list[float] = []
    start = time.perf_counter()
    try:
        module.eval()  # no dropout etc.: the authors score with Keras predict()
        with torch.no_grad():
            for _ in range(cfg.samples):
                randomize_(module, cfg.dist, cfg.scale, generator)
                errors.append(float(error_fn(module)))
    finally:
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
        for m, flag in modes:
            m.training = flag
    if cfg.threshold_mode == "quantile":
        tracker = tracker if tracker is not None else ThresholdTracker(cfg.quantile)
        threshold = tracker.threshold(errors)
        tracker.add(errors)
    else:
        threshold = cfg.threshold
    res = score_from_errors(errors, threshold, cfg.lo, hi, cfg.floor)
    return dataclasses.replace(res, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- score registry

#: Name -> zero-cost score; each returns an object with a float ``.score`` where higher is
#: better. Two calling conventions: "mrs" scores a module, ``fn(module, inputs, targets,
#: cfg=None, tracker=None)``; the genotype scorers "mrs_lm" and "hidden_cov" score a cell's
#: language model, ``fn(genotype, data, vocab_size, cfg, emb_size, hidden_size, tracker=None,
#: **model_kw)``.
SCORES: dict[str, Callable[..., Any]] = {}


def register_score(name: str, replace: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a score function to :data:`SCORES` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in SCORES and not replace:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = fn
        return fn

    return deco


def get_score(name: str) -> Callable[..., Any]:
    """Look up a registered score, with a clear error for an unknown name."""
    try:
        return SCORES[name]
    except KeyError:
        raise KeyError(f"unknown score {name!r}; registered scores: {sorted(SCORES)}") from None


@register_score("mrs")
def mrs_score_regression(
    module: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    cfg: MRSConfig | None = None,
    tracker: ThresholdTracker | None = None,
) -> MRSResult:
    """MRS for regression: the error of a draw is ``ERRORS[cfg.error]`` (MAE by default)
    of ``module(inputs)`` against ``targets``."""
    cfg = cfg or MRSConfig()
    if cfg.error not in ERRORS:
        raise KeyError(f"unknown error {cfg.error!r}; registered errors: {sorted(ERRORS)}")
    err = ERRORS[cfg.error].fn

    def error_fn(m: nn.Module) -> float:
        return err(m(inputs), targets)

    return mrs_score_module(module, error_fn, cfg, tracker)


# =========================================================================== language models
#
# MRS for a recurrent *cell* inside a word-level language model (issue 5). The paper scores a
# regression network; here the "network" is the RNNLM that will be trained, built around a
# FixedCell of the genotype:
#
#     tokens [T, B] -> embedding [T, B, E] -> FixedCell [T, B, H] -> decoder [T, B, V]
#
# and the error of a draw is a language-model error of the next-token predictions on a small,
# fixed held-out slice (the first validation window(s)).

#: Per-token cross-entropies are capped at CE_CAP_FACTOR * ln V nats (a target probability
#: below V**-10), which makes "ce" a bounded error with an exact truncation range [0, cap].
CE_CAP_FACTOR: float = 10.0


def _logits_targets(outputs: Any, targets: Tensor) -> tuple[Tensor, Tensor, int]:
    logits = _first_tensor(outputs)
    vocab = int(logits.size(-1))
    # [T, B, V] -> [T*B, V] and [T, B] -> [T*B]: one row per predicted token.
    return logits.reshape(-1, vocab).float(), targets.reshape(-1), vocab


@register_error("ce", hi=math.inf)
def ce_error(outputs: Any, targets: Tensor) -> float:
    """Mean next-token cross-entropy (nats), each token capped at ``CE_CAP_FACTOR * ln V``.

    Why a cap: per-token CE is unbounded (a random N(0, 1) decoder easily puts a target at
    p = 1e-40), but the truncated-normal fit needs a finite range [lo, hi]. With the cap the
    error lives exactly in [0, CE_CAP_FACTOR * ln V] (about 92 nats for PTB's 10k words), so
    :func:`lm_error_hi` is a true bound, not a guess; only predictions worse than V**-10 are
    affected. A non-finite per-token CE (overflowed logits) counts as the cap.
    """
    logits, tgt, vocab = _logits_targets(outputs, targets)
    cap = CE_CAP_FACTOR * math.log(max(vocab, 2))
    nll = F.cross_entropy(logits, tgt, reduction="none")  # [T*B]
    nll = torch.nan_to_num(nll, nan=cap, posinf=cap).clamp(max=cap)
    return float(nll.double().mean())


@register_error("softmax_mae", hi=2.0)
def softmax_mae_error(outputs: Any, targets: Tensor) -> float:
    """The paper's MAE applied to a softmax against one-hot targets: mean over tokens of
    ``mean_v |softmax(z)_v - onehot(y)_v|``.

    For one token sum_v |p_v - 1[v=y]| = (1 - p_y) + sum_{v != y} p_v = 2 (1 - p_y) exactly, so
    the error is ``(2 / V) * (1 - mean_t p_y)``: computed that way (no [T, B, V] abs), it lies in
    [0, 2/V] (2/V when every target has probability 0). It is an affine function of the mean
    target probability, hence tiny numbers for a 10k-word softmax: an absolute threshold such as
    the paper's 0.01 (> 2/V) is always met, which is why LM scoring uses a relative threshold.
    """
    logits, tgt, vocab = _logits_targets(outputs, targets)
    log_p = -F.cross_entropy(logits, tgt, reduction="none")  # [T*B], log p_y
    p_y = torch.nan_to_num(log_p.double().exp(), nan=0.0)
    return float((2.0 / vocab) * (1.0 - p_y.mean()))


def lm_error_hi(error: str, vocab_size: int) -> float:
    """Exact upper bound of an LM error for a vocabulary of ``vocab_size`` words (truncation hi)."""
    if vocab_size < 2:
        raise ValueError(f"an LM error needs vocab_size >= 2, got {vocab_size}")
    if error == "ce":
        return CE_CAP_FACTOR * math.log(vocab_size)
    if error == "softmax_mae":
        return 2.0 / vocab_size
    if error in ERRORS:
        return ERRORS[error].hi
    raise KeyError(f"unknown error {error!r}; registered errors: {sorted(ERRORS)}")


def _lm_hi(cfg: Any, vocab_size: int) -> float:
    return float(cfg.hi) if cfg.hi is not None else lm_error_hi(str(cfg.error), vocab_size)


def data_fingerprint(data: Tensor) -> str:
    """Content hash of a token tensor (shape, dtype, values): the 'data identity' of cache keys.

    Cheap for the small held-out slices MRS uses; unlike ``id(tensor)`` it cannot be fooled by
    a freed tensor's address being reused.
    """
    arr = data.detach().to("cpu").contiguous()
    h = hashlib.sha1(f"{tuple(arr.shape)}|{arr.dtype}".encode())
    h.update(arr.numpy().tobytes())
    return h.hexdigest()[:16]


def _cfg_items(cfg: Any, keys: Sequence[str]) -> tuple[Any, ...]:
    """Values of ``keys`` in a dataclass or DictConfig, as a hashable tuple."""
    return tuple((k, getattr(cfg, k)) for k in keys)


def _draw_seed(seed: int, draw: int, role: int) -> int:
    """Independent stream per (seed, draw, role) (numpy SeedSequence); role 0 = the LM part
    (embedding/decoder), 1 = the cell."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(draw), int(role)]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])  # < 2**63: a valid torch seed


# --------------------------------------------------------------------------- cache


class MRSCache:
    """Memo of training-free scores, so identical cells are scored once.

    Keys hold the scorer, the genotype's canonical ``hash()`` (two spellings of one cell share
    it), every config value that changes the sampled errors (not the threshold: MRS caches the
    raw errors and re-thresholds them), the model sizes and :func:`data_fingerprint` of the
    held-out slice. ``hits``/``misses`` count lookups (tests and the bench read them).

    It also keeps, within ``max_draw_bytes``, the genotype-independent weight draws (embedding,
    decoder) of each MRS draw: they are a deterministic function of (seed, draw index), the same
    for every cell (common random numbers), so caching them changes speed, never results.
    """

    def __init__(self, max_items: int = 100_000, max_draw_bytes: int = 256 << 20) -> None:
        self.max_items = int(max_items)
        self.max_draw_bytes = int(max_draw_bytes)
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._draws: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()
        self._draw_bytes = 0
        self._shells: dict[tuple, nn.Module] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> Any:
        """The stored value or None; counts a hit or a miss."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: tuple, value: Any) -> None:
        self._items[key] = value
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def draw(self, key: tuple, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The LM-part draw ``key`` (made by ``make()`` when absent), LRU within the byte budget."""
        got = self._draws.get(key)
        if got is not None:
            self._draws.move_to_end(key)
            return got
        got = make()
        size = sum(t.numel() * t.element_size() for t in got.values())
        if size <= self.max_draw_bytes:
            self._draws[key] = got
            self._draw_bytes += size
            while self._draw_bytes > self.max_draw_bytes:
                _, old = self._draws.popitem(last=False)
                self._draw_bytes -= sum(t.numel() * t.element_size() for t in old.values())
        return got


# --------------------------------------------------------------------------- the scoring LM


@dataclass(frozen=True)
class LMSpec:
    """How the scoring language model is built (the same model that would be trained)."""

    vocab_size: int
    emb_size: int
    hidden_size: int
    tie_weights: bool = True
    state_clip: Optional[float] = 25.0
    init_range: Optional[float] = None  # the model's own init (dist="init", hidden_cov)


def _build_lm(genotype: Any, spec: LMSpec, cache: MRSCache | None) -> nn.Module:
    """RNNLM(embedding -> FixedCell(genotype) -> decoder), without touching torch's global RNG.

    With a cache, the embedding/decoder shell is built once per spec and only the cell is new
    (building a 10k x 200 embedding costs as much as a forward pass).
    """
    # Imported here: enas_rnn.model imports enas_rnn.conf, which imports this module.
    from enas_rnn.cells import FixedCell
    from enas_rnn.conf import CoreKind, ModelConfig
    from enas_rnn.model import RNNLM

    if spec.tie_weights and spec.emb_size != spec.hidden_size:
        raise ValueError(
            f"tie_weights=True needs emb_size == hidden_size, got {spec.emb_size} and {spec.hidden_size}"
        )
    with torch.random.fork_rng(devices=[]):  # construction draws must not move the caller's RNG
        cell = FixedCell(genotype, spec.emb_size, spec.hidden_size, state_clip=spec.state_clip)
        key = ("shell", spec)
        model = cache._shells.get(key) if cache is not None else None
        if model is None:
            mcfg = ModelConfig(
                core=CoreKind.cell,
                emb_size=spec.emb_size,
                hidden_size=spec.hidden_size,
                num_layers=1,
                tie_weights=spec.tie_weights,
                init_range=spec.init_range,
                state_clip=spec.state_clip,
            )
            model = RNNLM(spec.vocab_size, [cell], mcfg)
            if cache is not None:
                cache._shells[key] = model
        else:
            model.cores[0] = cell
    return model.eval()


def _init_(module: nn.Module, init_range: Optional[float], seed: int, lm_part: bool) -> None:
    """The model's own initialisation of the LM part or of the cell, seeded (dist="init")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not lm_part:
            if init_range is None:
                module.reset_parameters()  # FixedCell: U(-1/sqrt(H), 1/sqrt(H)), like nn.LSTM
            else:
                for p in module.parameters():
                    nn.init.uniform_(p, -init_range, init_range)
            return
        model = module
        if model.decoder.weight is not model.embedding.weight:
            model.decoder.reset_parameters()  # nn.Linear's default, as at construction
        if init_range is None:  # RNNLM.reset_parameters(None): embedding U(-0.1, 0.1), zero bias
            nn.init.uniform_(model.embedding.weight, -0.1, 0.1)
            nn.init.zeros_(model.decoder.bias)
        else:
            for p in (model.embedding.weight, model.decoder.weight, model.decoder.bias):
                nn.init.uniform_(p, -init_range, init_range)


def _lm_part_draw(spec: LMSpec, dist: str, scale: float, seed: int) -> dict[str, Tensor]:
    """Fresh N(0, scale) / U(-scale, scale) draws of the embedding, decoder weight (untied only)
    and decoder bias, from one seeded generator in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {"emb": torch.empty(spec.vocab_size, spec.emb_size)}
    if not spec.tie_weights:
        out["dec_w"] = torch.empty(spec.vocab_size, spec.hidden_size)
    out["dec_b"] = torch.empty(spec.vocab_size)
    for t in out.values():
        _draw_(t, dist, scale, gen)
    return out


def _randomize_lm_part_(
    model: nn.Module, spec: LMSpec, dist: str, scale: float, seed: int, draw: int, cache: MRSCache | None
) -> None:
    """Draw the genotype-independent weights (embedding, decoder) of draw number ``draw``."""
    lm_seed = _draw_seed(seed, draw, 0)
    with torch.no_grad():
        if dist == "init":
            _init_(model, spec.init_range, lm_seed, lm_part=True)
            return
        key = ("lm_draw", spec, dist, float(scale), int(seed), int(draw))
        make = lambda: _lm_part_draw(spec, dist, scale, lm_seed)  # noqa: E731
        part = cache.draw(key, make) if cache is not None else make()
        # Copied in (not aliased): the cached draw must survive later in-place inits of the shell.
        model.embedding.weight.copy_(part["emb"])
        if not spec.tie_weights:
            model.decoder.weight.copy_(part["dec_w"])
        model.decoder.bias.copy_(part["dec_b"])


def _randomize_cell_(cell: nn.Module, spec: LMSpec, dist: str, scale: float, seed: int, draw: int) -> None:
    """Draw all weights of the cell for draw number ``draw`` (its own seeded stream)."""
    cell_seed = _draw_seed(seed, draw, 1)
    with torch.no_grad():
        if dist == "init":
            _init_(cell, spec.init_range, cell_seed, lm_part=False)
            return
        gen = torch.Generator().manual_seed(cell_seed)
        for p in cell.parameters():
            _draw_(p, dist, float(scale), gen)


def _randomize_lm_(
    model: nn.Module, spec: LMSpec, dist: str, scale: float, seed: int, draw: int, cache: MRSCache | None
) -> None:
    """Draw ALL weights of the scoring LM (``model.cores[0]`` is the cell) for draw ``draw``.

    The LM part and the cell use separate seeded streams (:func:`_draw_seed`), so the embedding
    and decoder of draw i are the same for every genotype: common random numbers, a variance
    reduction for *comparing* cells (their errors differ by the cell, not by a luckier
    embedding), and what lets :class:`MRSCache` reuse the big [V, E] draws and lets
    :func:`mrs_lm_errors_many` run one decoder GEMM for many cells. Each cell still gets all
    of its weights redrawn N times, as in the paper.
    """
    _randomize_lm_part_(model, spec, dist, scale, seed, draw, cache)
    _randomize_cell_(model.cores[0], spec, dist, scale, seed, draw)


def _check_tokens(data: Tensor, vocab_size: int) -> None:
    if data.dim() != 2 or data.size(0) < 2:
        raise ValueError(f"data must be a [T, B] token tensor with T >= 2, got shape {tuple(data.shape)}")
    if data.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"data must hold integer token ids, got {data.dtype}")
    if int(data.max()) >= vocab_size or int(data.min()) < 0:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got [{int(data.min())}, {int(data.max())}]")


def _new_cell(genotype: Any, spec: LMSpec, device: torch.device) -> nn.Module:
    from enas_rnn.cells import FixedCell

    with torch.random.fork_rng(devices=[]):  # construction draws must not move the caller's RNG
        return FixedCell(genotype, spec.emb_size, spec.hidden_size, state_clip=spec.state_clip).to(device).eval()


#: Largest logits tensor (bytes) one batched decoder call may produce; bigger groups are split.
_MAX_LOGITS_BYTES = 64 << 20


def mrs_lm_errors_many(
    genotypes: Sequence[Any], data: Tensor, spec: LMSpec, cfg: MRSConfig, cache: MRSCache | None = None
) -> list[tuple[tuple[float, ...], float, bool]]:
    """``(errors, seconds, cached)`` of each genotype's LM on ``data`` [T, B] (see :func:`mrs_lm_errors`).

    Same draws and errors as scoring the genotypes one by one (up to float round-off of the
    batched GEMM), but faster: for draw i the embedding/decoder draw is shared by every cell
    (common random numbers), so the embedded input is computed once and the hidden states of
    all cells go through ONE decoder GEMM - for a few dozen tokens that GEMM is bound by reading
    the [V, H] matrix, so batching K cells costs about as much as one. Cells already in
    ``cache`` (same ``hash()``) and repeats within ``genotypes`` are computed once; ``seconds``
    is the group's time shared equally by the cells computed.
    """
    _validate(cfg)
    if cfg.error not in ERRORS:
        raise KeyError(f"unknown error {cfg.error!r}; registered errors: {sorted(ERRORS)}")
    fp = data_fingerprint(data) if cache is not None else None
    cfg_key = _cfg_items(cfg, ("samples", "dist", "scale", "error", "seed"))
    out: list[Optional[tuple[tuple[float, ...], float, bool]]] = [None] * len(genotypes)
    todo: dict[str, list[int]] = {}  # hash -> positions, in first-seen order
    keys: dict[str, tuple] = {}
    for pos, g in enumerate(genotypes):
        h = g.hash()
        if h in todo:
            todo[h].append(pos)
            continue
        if cache is not None:
            keys[h] = ("mrs_lm", h, spec, fp, cfg_key)
            got = cache.get(keys[h])
            if got is not None:
                out[pos] = (got[0], got[1], True)
                continue
        todo[h] = [pos]
    if todo:
        err = ERRORS[cfg.error].fn
        inp, tgt = data[:-1], data[1:]  # [T-1, B] each: next-token prediction
        steps, batch = inp.shape
        group = max(1, _MAX_LOGITS_BYTES // max(1, steps * batch * spec.vocab_size * 4))
        hashes = list(todo)
        for lo in range(0, len(hashes), group):
            chunk = hashes[lo : lo + group]
            start = time.perf_counter()
            first = genotypes[todo[chunk[0]][0]]
            model = _build_lm(first, spec, cache).to(data.device)
            cells = [model.cores[0]] + [_new_cell(genotypes[todo[h][0]], spec, data.device) for h in chunk[1:]]
            errors: list[list[float]] = [[] for _ in chunk]
            with torch.no_grad():
                for i in range(int(cfg.samples)):
                    _randomize_lm_part_(model, spec, str(cfg.dist), float(cfg.scale), int(cfg.seed), i, cache)
                    x = model.embedding(inp)  # [T-1, B, E], shared by all cells of this draw
                    hs = []
                    for cell in cells:
                        _randomize_cell_(cell, spec, str(cfg.dist), float(cfg.scale), int(cfg.seed), i)
                        hs.append(cell(x, cell.init_hidden(batch))[0])  # [T-1, B, H]
                    logits = model.decoder(torch.cat(hs, 1))  # [T-1, K*B, V]: one GEMM for K cells
                    for k in range(len(cells)):
                        errors[k].append(float(err(logits[:, k * batch : (k + 1) * batch], tgt)))
            seconds = (time.perf_counter() - start) / len(chunk)
            for h, e in zip(chunk, errors):
                res = (tuple(e), seconds)
                if cache is not None:
                    cache.put(keys[h], res)
                first_pos, *repeats = todo[h]
                out[first_pos] = (res[0], res[1], False)
                for pos in repeats:  # a repeat within the call is a cache hit in all but name
                    out[pos] = (res[0], res[1], True)
    return out  # type: ignore[return-value]


def mrs_lm_errors(
    genotype: Any, data: Tensor, spec: LMSpec, cfg: MRSConfig, cache: MRSCache | None = None
) -> tuple[tuple[float, ...], float, bool]:
    """The N sampled errors of a genotype's LM on ``data`` [T, B]: ``(errors, seconds, cached)``.

    Draw i: all weights redrawn (:func:`_randomize_lm_`), one forward pass from a zero state over
    ``data[:-1]`` predicting ``data[1:]`` (eval mode, no grad), error ``ERRORS[cfg.error]``.
    """
    return mrs_lm_errors_many([genotype], data, spec, cfg, cache)[0]


@register_score("mrs_lm")
def mrs_score_genotype(
    genotype: Any,
    data: Tensor,
    vocab_size: int,
    cfg: MRSConfig | None = None,
    emb_size: int = 200,
    hidden_size: int = 200,
    tracker: ThresholdTracker | None = None,
    *,
    tie_weights: bool = True,
    state_clip: Optional[float] = 25.0,
    init_range: Optional[float] = None,
    cache: MRSCache | None = None,
) -> MRSResult:
    """MRS score of a cell's language model on a held-out token slice ``data`` [T, B].

    Pure and seeded: builds ``RNNLM(embedding -> FixedCell(genotype) -> decoder)`` (one layer,
    ``tie_weights=True`` by default: the ENAS supernet and our search presets tie, Press & Wolf
    2017, and a tied model has one [V, E] matrix to draw instead of two), draws all weights
    ``cfg.samples`` times (``cfg.dist``: N(0, scale) as in the paper, U(-scale, scale), or the
    model's own init) and records the LM error ``cfg.error`` ("ce" or "softmax_mae") of each draw.
    The truncation range is [cfg.lo, hi] with hi = ``cfg.hi`` or :func:`lm_error_hi`.

    Threshold: ``cfg.threshold_mode="absolute"`` uses ``cfg.threshold`` (the paper); "quantile"
    uses ``tracker`` (a fresh one if None: this cell's own errors). With a ``cache``, an
    equivalent genotype (same ``hash()``) is not resampled, and its errors are added to the
    tracker only the first time (the pool holds distinct cells).
    """
    cfg = cfg or MRSConfig(error="ce", threshold_mode="quantile")
    _check_tokens(data, vocab_size)
    spec = LMSpec(int(vocab_size), int(emb_size), int(hidden_size), bool(tie_weights), state_clip, init_range)
    errors, seconds, cached = mrs_lm_errors(genotype, data, spec, cfg, cache)
    hi = _lm_hi(cfg, spec.vocab_size)
    if cfg.threshold_mode == "quantile":
        tracker = tracker if tracker is not None else ThresholdTracker(cfg.quantile)
        threshold = tracker.threshold(errors)
        if not cached:
            tracker.add(errors)
    else:
        threshold = cfg.threshold
    res = score_from_errors(errors, threshold, cfg.lo, hi, cfg.floor)
    return dataclasses.replace(res, seconds=seconds)


# =========================================================================== hidden covariance
#
# Serianni & Kalita (ACL 2023, "Training-free Neural Architecture Search for RNNs and
# Transformers", arXiv:2306.00288; code github.com/aaronserianni/training-free-nas,
# RNN_metrics.ipynb ``hidden_scores`` / ``jacobian_score``). What their code computes, and we do:
#
#   1. the network at its own initialisation (AWD-LSTM's: embedding U(-0.1, 0.1), cell weights
#      U(-1/sqrt(H), 1/sqrt(H)) - the same as our FixedCell default), seeded, eval mode;
#   2. one minibatch [T, B] of held-out tokens; the hidden states fed *into* each step,
#      h_0 (zeros) .. h_{T-1} of the first recurrent layer, stacked ([B, H, T] in their code);
#   3. a data matrix with one row per hidden unit and one column per (example, step):
#      [H, B*T]; C = its Pearson correlation matrix [H, H] (np.corrcoef);
#   4. eigenvalues lambda of C and score = -sum_i [ log(lambda_i + k) + 1 / (lambda_i + k) ],
#      k = 1e-5 (the formula of Mellor et al.'s 2020 Jacobian-covariance score, applied to
#      hidden states). Higher is better; log x + 1/x is smallest at x = 1, so the best value,
#      -H (1 + O(k)), is reached by uncorrelated units (C = I), and correlated units (eigenvalues
#      far from 1) lower it.
#
# Details: C is symmetric, so we use eigvalsh (they use np.linalg.eig) and clip round-off
# negatives to 0. A hidden unit that is constant over the batch makes C undefined; their
# pipeline then recorded NaN for the architecture, and so do we (``score = nan``,
# ``constant_units`` says why); the screener ranks such cells last.

#: Jitter k of the eigenvalue score (authors' value).
HIDDEN_COV_K: float = 1e-5


@dataclass
class HiddenCovConfig:
    """Settings of the hidden-covariance score (a Hydra structured config)."""

    seed: int = 0  # seed of the initialisation draw
    k: float = HIDDEN_COV_K  # jitter added to the eigenvalues (Serianni & Kalita: 1e-5)


@dataclass(frozen=True)
class HiddenCovResult:
    """Outcome of one hidden-covariance evaluation; ``score`` is higher-is-better (nan if undefined)."""

    score: float
    n_units: int  # H
    n_samples: int  # B * T columns of the data matrix
    constant_units: int  # units with zero variance (score undefined when > 0)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hidden_cov_from_corr(corr: Tensor | np.ndarray, k: float = HIDDEN_COV_K) -> float:
    """-sum_i [log(lambda_i + k) + 1/(lambda_i + k)] over the eigenvalues of a correlation matrix."""
    c = torch.as_tensor(np.asarray(corr), dtype=torch.float64)
    if c.dim() != 2 or c.size(0) != c.size(1):
        raise ValueError(f"need a square correlation matrix, got shape {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        return math.nan
    lam = torch.linalg.eigvalsh(0.5 * (c + c.T)).clamp(min=0.0) + k  # symmetric: real eigenvalues
    return float(-(lam.log() + lam.reciprocal()).sum())


def hidden_correlation(states: Tensor) -> tuple[Tensor, int]:
    """Pearson correlation [H, H] of hidden units over samples, and the number of constant units.

    ``states`` [N, ..., H]: every leading index is one sample (e.g. [T, B, H]). Constant units
    get NaN rows/columns, as np.corrcoef gives.
    """
    h = states.size(-1)
    x = states.reshape(-1, h).double()  # [N, H]: one row per (step, example)
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.size(0) - 1, 1)  # [H, H]
    sd = cov.diagonal().sqrt()
    constant = int((sd == 0).sum())
    corr = cov / (sd[:, None] * sd[None, :])  # 0/0 -> nan for constant units
    return corr.clamp(-1.0, 1.0), constant


@register_score("hidden_cov")
def hidden_cov_score(
    genotype: Any,
    data: Tensor,
    vocab_size: int,
    cfg: HiddenCovConfig | None = None,
    emb_size: int = 200,
    hidden_size: int = 200,
    tracker: ThresholdTracker | None = None,
    *,
    tie_weights: bool = True,
    state_clip: Optional[float] = 25.0,
    init_range: Optional[float] = None,
    cache: MRSCache | None = None,
) -> HiddenCovResult:
    """Hidden-covariance score (Serianni & Kalita 2023) of a cell on tokens ``data`` [T, B].

    Same calling convention as :func:`mrs_score_genotype` (``tracker`` is unused; ``cfg`` is a
    :class:`HiddenCovConfig`, or anything with ``seed``). Only the embedding and the cell matter
    (the decoder never touches the hidden states), so the decoder is not run.
    """
    seed = int(getattr(cfg, "seed", 0)) if cfg is not None else 0
    k = float(getattr(cfg, "k", HIDDEN_COV_K)) if cfg is not None else HIDDEN_COV_K
    _check_tokens(data, vocab_size)
    spec = LMSpec(int(vocab_size), int(emb_size), int(hidden_size), bool(tie_weights), state_clip, init_range)
    key = None
    if cache is not None:
        key = ("hidden_cov", genotype.hash(), spec, data_fingerprint(data), seed, k)
        got = cache.get(key)
        if got is not None:
            return got
    start = time.perf_counter()
    model = _build_lm(genotype, spec, cache).to(data.device)
    with torch.no_grad():
        _init_(model, spec.init_range, _draw_seed(seed, 0, 0), lm_part=True)
        cell = model.cores[0]
        _init_(cell, spec.init_range, _draw_seed(seed, 0, 1), lm_part=False)
        x = model.embedding(data)  # [T, B, E]
        out, _ = cell(x, cell.init_hidden(data.size(1)))  # [T, B, H]: h_1 .. h_T
        # States fed into each step, as the authors record them: h_0 = 0, h_1 .. h_{T-1}.
        states = torch.cat([torch.zeros_like(out[:1]), out[:-1]], 0)  # [T, B, H]
        corr, constant = hidden_correlation(states)
        score = hidden_cov_from_corr(corr, k) if constant == 0 else math.nan
    res = HiddenCovResult(score, int(hidden_size), int(states.shape[0] * states.shape[1]), constant,
                          time.perf_counter() - start)
    if cache is not None:
        cache.put(key, res)
    return res


# =========================================================================== pre-screening


class LMScreener:
    """``screener(genotypes) -> list[float]``: training-free scores of a search's candidates.

    Scores all candidates on one fixed held-out slice. For MRS in "quantile" mode the threshold
    is the q-quantile of the errors of this step's (distinct) candidates, plus - when
    ``pool > 0`` - those of the last ``pool`` distinct cells scored before; every candidate of a
    step is scored against the same t, so the top-k is a fair comparison. ``pool = 0`` (default)
    makes the screener stateless apart from its cache, so a resumed search screens exactly as
    the uninterrupted one. Undefined scores (hidden_cov with a constant unit) become -inf: they
    rank last and stay valid JSON-able floats in the history.
    """

    def __init__(
        self,
        name: str,
        data: Tensor,
        spec: LMSpec,
        mrs: Any,
        hidden_cov: Any,
        pool: int = 0,
    ) -> None:
        if name not in ("mrs", "hidden_cov"):
            raise ValueError(f"unknown screen {name!r}; valid: mrs, hidden_cov")
        _check_tokens(data, spec.vocab_size)
        self.name = name
        self.data = data
        self.spec = spec
        self.mrs = mrs
        self.hidden_cov = hidden_cov
        self.cache = MRSCache()
        self.tracker = ThresholdTracker(float(mrs.quantile), window=pool) if pool > 0 else None
        self.seconds = 0.0  # total scoring time (for cost reports)

    def _kw(self) -> dict[str, Any]:
        s = self.spec
        return dict(emb_size=s.emb_size, hidden_size=s.hidden_size, tie_weights=s.tie_weights,
                    state_clip=s.state_clip, init_range=s.init_range, cache=self.cache)

    def __call__(self, genotypes: Sequence[Any]) -> list[float]:
        start = time.perf_counter()
        try:
            if self.name == "hidden_cov":
                scores = [
                    hidden_cov_score(g, self.data, self.spec.vocab_size, self.hidden_cov, **self._kw()).score
                    for g in genotypes
                ]
                return [s if math.isfinite(s) else -math.inf for s in scores]
            return self._mrs(genotypes)
        finally:
            self.seconds += time.perf_counter() - start

    def _mrs(self, genotypes: Sequence[Any]) -> list[float]:
        cfg = self.mrs
        got = mrs_lm_errors_many(genotypes, self.data, self.spec, cfg, self.cache)
        errs = [e for e, _, _ in got]
        hi = _lm_hi(cfg, self.spec.vocab_size)
        if cfg.threshold_mode == "quantile":
            step = ThresholdTracker(float(cfg.quantile)) if self.tracker is None else self.tracker
            distinct = {g.hash(): e for g, e in zip(genotypes, errs)}
            threshold = step.threshold([v for e in distinct.values() for v in e])
            if self.tracker is not None:
                for e, _, cached in got:
                    if not cached:
                        self.tracker.add(e)
        else:
            threshold = float(cfg.threshold)
        return [score_from_errors(e, threshold, cfg.lo, hi, cfg.floor).score for e in errs]


def make_lm_screener(cfg: Any, space: Any, vocab_size: int, valid: Tensor) -> LMScreener:
    """The pre-screener of a search config (``cfg.screen``), scoring on a fixed validation slice.

    The slice is the first ``screen.bptt`` (default ``data.bptt``) + 1 rows of the first
    ``screen.batch`` columns of the validation stream: small and fixed, so every candidate of
    every step is compared on the same tokens and screening stays cheap. The scoring LM has the
    supernet's sizes, tying, state clip and init range (``cfg.model``).
    """
    sc = cfg.screen
    rows = int(sc.bptt if sc.get("bptt") is not None else cfg.data.bptt) + 1
    cols = valid.size(1) if sc.get("batch") is None else min(int(sc.batch), valid.size(1))
    data = valid[:rows, :cols]  # [bptt + 1, batch]
    m = cfg.model
    spec = LMSpec(int(vocab_size), int(m.emb_size), int(m.hidden_size), bool(m.tie_weights),
                  m.state_clip, m.init_range)
    return LMScreener(str(sc.name), data, spec, sc.mrs, sc.hidden_cov, int(sc.get("pool") or 0))
