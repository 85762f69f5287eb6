"""MRS for a recurrent *cell* inside a word-level language model, and what LM scores share.

The paper scores a regression network (``enas_rnn.scores.mrs``); here the "network" is the RNNLM
that would be trained, built around a FixedCell of the genotype::

    tokens [T, B] -> embedding [T, B, E] -> FixedCell [T, B, H] -> decoder [T, B, V]

and the error of a draw is a language-model error of the next-token predictions on a small, fixed
held-out slice: ``"ce"`` (per-token cross-entropy capped at 10 ln V, exact range [0, 10 ln V]) or
``"softmax_mae"`` (the paper's MAE of softmax vs one-hot, exact range [0, 2/V]). :class:`ScoreCache`
scores identical cells (same ``Genotype.hash()``) once; :class:`LMSpec` describes the scoring model.
Registered as the cell score ``"mrs"`` (:class:`MRSScore`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from enas_rnn.cells import CellConfig, build_cell
from enas_rnn.kernels import POOL
from enas_rnn.model import RNNLM, CoreKind, ModelConfig, token_nll
from enas_rnn.scores.mrs import (
    ERRORS,
    MRSConfig,
    MRSResult,
    ThresholdTracker,
    draw_,
    register_error,
    score_from_errors,
    validate_config,
)
from enas_rnn.scores.registry import register_score

__all__ = [
    "CE_CAP_FACTOR",
    "lm_error_hi",
    "data_fingerprint",
    "ScoreCache",
    "LMSpec",
    "build_scoring_lm",
    "init_",
    "draw_seed",
    "check_tokens",
    "mrs_lm_errors",
    "mrs_lm_errors_many",
    "mrs_score_genotype",
    "MRSScore",
]


def _first_tensor(outputs: Any) -> Tensor:
    """Modules such as nn.LSTM return tuples; the prediction is the first item."""
    while isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return outputs


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
    nll = token_nll(logits, tgt)  # [T*B]
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
    log_p = -token_nll(logits, tgt)  # [T*B], log p_y
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


def draw_seed(seed: int, draw: int, role: int) -> int:
    """Independent stream per (seed, draw, role) (numpy SeedSequence); role 0 = the LM part
    (embedding/decoder), 1 = the cell."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(draw), int(role)]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])  # < 2**63: a valid torch seed


# --------------------------------------------------------------------------- cache


class ScoreCache:
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


def build_scoring_lm(genotype: Any, spec: LMSpec, cache: ScoreCache | None) -> nn.Module:
    """RNNLM(embedding -> FixedCell(genotype) -> decoder), without touching torch's global RNG.

    With a cache, the embedding/decoder shell is built once per spec and only the cell is new
    (building a 10k x 200 embedding costs as much as a forward pass).
    """
    if spec.tie_weights and spec.emb_size != spec.hidden_size:
        raise ValueError(
            f"tie_weights=True needs emb_size == hidden_size, got {spec.emb_size} and {spec.hidden_size}"
        )
    with torch.random.fork_rng(devices=[]):  # construction draws must not move the caller's RNG
        cell = build_cell(spec.emb_size, spec.hidden_size, CellConfig(state_clip=spec.state_clip), genotype=genotype)
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


def init_(module: nn.Module, init_range: Optional[float], seed: int, lm_part: bool) -> None:
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
        draw_(t, dist, scale, gen)
    return out


def _randomize_lm_part_(
    model: nn.Module, spec: LMSpec, dist: str, scale: float, seed: int, draw: int, cache: ScoreCache | None
) -> None:
    """Draw the genotype-independent weights (embedding, decoder) of draw number ``draw``."""
    lm_seed = draw_seed(seed, draw, 0)
    with torch.no_grad():
        if dist == "init":
            init_(model, spec.init_range, lm_seed, lm_part=True)
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
    cell_seed = draw_seed(seed, draw, 1)
    with torch.no_grad():
        if dist == "init":
            init_(cell, spec.init_range, cell_seed, lm_part=False)
            return
        gen = torch.Generator().manual_seed(cell_seed)
        for p in cell.parameters():
            draw_(p, dist, float(scale), gen)


def _randomize_lm_(
    model: nn.Module, spec: LMSpec, dist: str, scale: float, seed: int, draw: int, cache: ScoreCache | None
) -> None:
    """Draw ALL weights of the scoring LM (``model.cores[0]`` is the cell) for draw ``draw``.

    The LM part and the cell use separate seeded streams (:func:`draw_seed`), so the embedding
    and decoder of draw i are the same for every genotype: common random numbers, a variance
    reduction for *comparing* cells (their errors differ by the cell, not by a luckier
    embedding), and what lets :class:`ScoreCache` reuse the big [V, E] draws and lets
    :func:`mrs_lm_errors_many` run one decoder GEMM for many cells. Each cell still gets all
    of its weights redrawn N times, as in the paper.
    """
    _randomize_lm_part_(model, spec, dist, scale, seed, draw, cache)
    _randomize_cell_(model.cores[0], spec, dist, scale, seed, draw)


def check_tokens(data: Tensor, vocab_size: int) -> None:
    if data.dim() != 2 or data.size(0) < 2:
        raise ValueError(f"data must be a [T, B] token tensor with T >= 2, got shape {tuple(data.shape)}")
    if data.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"data must hold integer token ids, got {data.dtype}")
    if int(data.max()) >= vocab_size or int(data.min()) < 0:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got [{int(data.min())}, {int(data.max())}]")


def _new_cell(genotype: Any, spec: LMSpec, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # construction draws must not move the caller's RNG
        cell = build_cell(spec.emb_size, spec.hidden_size, CellConfig(state_clip=spec.state_clip), genotype=genotype)
        return cell.to(device).eval()


def _decode(decoder: nn.Linear, h: Tensor) -> Tensor:
    """``decoder(h)`` for h [..., H] into a pooled buffer (``enas_rnn.kernels.POOL``): a fresh [..., V]
    tensor per draw would be a new mmap, faulted in page by page every time."""
    V, H = decoder.out_features, h.size(-1)
    out = POOL.empty((*h.shape[:-1], V), h.dtype, h.device)
    if decoder.bias is not None:
        torch.addmm(decoder.bias, h.reshape(-1, H), decoder.weight.t(), out=out.view(-1, V))  # reshape: a view
    else:
        torch.mm(h.reshape(-1, H), decoder.weight.t(), out=out.view(-1, V))
    return out


#: Largest logits tensor (bytes) one batched decoder call may produce; bigger groups are split.
_MAX_LOGITS_BYTES = 64 << 20


def mrs_lm_errors_many(
    genotypes: Sequence[Any], data: Tensor, spec: LMSpec, cfg: MRSConfig, cache: ScoreCache | None = None
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
    validate_config(cfg)
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
            model = build_scoring_lm(first, spec, cache).to(data.device)
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
                    logits = _decode(model.decoder, torch.stack(hs))  # [K, T-1, B, V]: one GEMM for K cells
                    for k in range(len(cells)):
                        errors[k].append(float(err(logits[k], tgt)))
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
    genotype: Any, data: Tensor, spec: LMSpec, cfg: MRSConfig, cache: ScoreCache | None = None
) -> tuple[tuple[float, ...], float, bool]:
    """The N sampled errors of a genotype's LM on ``data`` [T, B]: ``(errors, seconds, cached)``.

    Draw i: all weights redrawn (:func:`_randomize_lm_`), one forward pass from a zero state over
    ``data[:-1]`` predicting ``data[1:]`` (eval mode, no grad), error ``ERRORS[cfg.error]``.
    """
    return mrs_lm_errors_many([genotype], data, spec, cfg, cache)[0]


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
    cache: ScoreCache | None = None,
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
    check_tokens(data, vocab_size)
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



@register_score("mrs")
class MRSScore:
    """MRS of each candidate cell's LM, thresholded together (the screener's and the study's MRS).

    In "quantile" mode the threshold is the q-quantile of the errors of this call's distinct cells
    plus - when ``pool > 0`` - those of the last ``pool`` distinct cells scored before; every
    candidate of one call is scored against the same t, so a top-k is a fair comparison. ``pool = 0``
    keeps the score stateless apart from its cache (a resumed search screens exactly as the
    uninterrupted one). "absolute" mode uses the paper's ``cfg.threshold``.
    """

    def __init__(self, spec: LMSpec, cfg: Any, cache: ScoreCache | None = None, pool: int = 0) -> None:
        validate_config(cfg)
        self.spec, self.cfg, self.cache = spec, cfg, cache
        self.tracker = ThresholdTracker(float(cfg.quantile), window=pool) if pool > 0 else None

    def __call__(self, genotypes: Sequence[Any], data: Tensor) -> list[MRSResult]:
        cfg = self.cfg
        check_tokens(data, self.spec.vocab_size)
        got = mrs_lm_errors_many(genotypes, data, self.spec, cfg, self.cache)
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
        return [dataclasses.replace(score_from_errors(e, threshold, cfg.lo, hi, cfg.floor), seconds=s)
                for e, s, _ in got]


def scoring_slice(valid: torch.Tensor, bptt: int, batch: Optional[int]) -> torch.Tensor:
    """The fixed held-out slice the scores see: first ``bptt + 1`` rows of the first ``batch`` columns."""
    cols = valid.size(1) if batch is None else min(int(batch), valid.size(1))
    return valid[: int(bptt) + 1, :cols]  # [bptt + 1, batch]
