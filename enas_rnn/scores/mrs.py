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
  examples (unscaled sine targets in [-1, 1], so MAE is in [0, 2]) and
  ``[0, 1]`` for their MinMax-scaled data with sigmoid outputs
  (``publications/low-cost/mae/mrs-energy.json``). Our default ``hi`` comes
  from the error registry: 2.0 for ``"mae"``; pass ``hi=1.0`` for outputs and
  targets in [0, 1] (scripts/mrs_sine.py does).
* score: ``np.log(scipy.stats.truncnorm.cdf(t, ...))`` with ``t = 0.01``; the
  2018 code had no guard (an underflowing cdf gave ``-inf``), since 2019
  ``p == 0`` is replaced by ``log(1e-300)``. *Deviation:* we evaluate
  ``log P`` in log space (``scipy.special.log_ndtr``), which stays finite and
  ordered far into the tail (where the cdf itself underflows); ``score`` is
  then clamped below at ``log(floor)`` (default ``floor = 1e-300``, i.e. about
  -690.8, the authors' 2019 guard) so that no score is ever ``-inf``. ``MRSResult.log_p`` keeps the
  unclamped value; ``floor = 0`` disables the clamp.
* ``sd == 0`` (all draws equal) is handled exactly: the fitted distribution is
  a point mass, so ``p = 1`` if ``mean <= t`` else ``0`` (scipy would give NaN).
* non-finite errors (a draw that overflows) count as the worst error ``hi``
  (or ``+inf`` when ``hi`` is infinite, which makes ``p = 0``).
* *Addition:* a relative threshold (``threshold_mode="quantile"``): ``t`` is the
  q-quantile of all errors sampled so far in the population, because an
  absolute ``t = 0.01`` is meaningless for errors like cross-entropy.

This module is the method as published, for any module with an error function
(:func:`mrs_score_regression` reproduces the paper's sine experiments, scripts/mrs_sine.py).
Its adaptation to a cell inside a language model is ``enas_rnn.scores.lm``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from scipy.special import log_ndtr
from torch import Tensor, nn

from enas_rnn.rules import FINITE, INT1, NONNEG, OPT_POSITIVE, POSITIVE, UNIT_OPEN, one_of, rule

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
    "draw_",
    "validate_config",
    "mrs_score_module",
    "mrs_score_regression",
    "ThresholdTracker",
    "DISTRIBUTIONS",
]

#: Weight distributions understood by :func:`randomize_`.
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "init")
_ERRORS: dict[str, Any] = {}  # the error registry (ERRORS below), created here so MRSConfig's rule can name it
THRESHOLD_MODES: tuple[str, ...] = ("absolute", "quantile")


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

    samples: int = rule(30, INT1)
    dist: str = rule("normal", one_of(DISTRIBUTIONS))
    scale: float = rule(1.0, POSITIVE)
    error: str = rule("mae", one_of(_ERRORS))
    lo: float = rule(0.0, FINITE)
    hi: Optional[float] = rule(None, OPT_POSITIVE)
    threshold: float = rule(0.01, FINITE)
    threshold_mode: str = rule("absolute", one_of(THRESHOLD_MODES))
    quantile: float = rule(0.1, UNIT_OPEN)
    floor: float = rule(1e-300, NONNEG)
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
ERRORS: dict[str, ErrorSpec] = _ERRORS


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


def draw_(p: Tensor, dist: str, scale: float, generator: torch.Generator) -> None:
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
                draw_(p, dist, float(scale), generator)
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


def validate_config(cfg: MRSConfig) -> None:
    if cfg.samples < 1:
        raise ValueError(f"samples must be >= 1, got {cfg.samples}")
    if cfg.dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown dist {cfg.dist!r}; expected one of {DISTRIBUTIONS}")
    if cfg.threshold_mode not in THRESHOLD_MODES:
        raise ValueError(
            f"unknown threshold_mode {cfg.threshold_mode!r}; expected one of {THRESHOLD_MODES}"
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
    validate_config(cfg)
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
