"""RNNLM: embedding -> recurrent core(s) -> decoder, with the regularisers of AWD-LSTM / ENAS.

The recurrent core is pluggable. A core is any module with

    init_hidden(batch_size) -> hidden
    forward(x [T, B, E], hidden, **kwargs) -> (output [T, B, H], hidden)

`LSTMCore` wraps torch.nn.LSTM (the vanilla baseline), `GRUCore` torch.nn.GRU (a second
baseline; its hidden state is one tensor, not a pair); `enas_rnn.cells.FixedCell` and
`SharedCell` run genotypes. Extra keyword arguments of `RNNLM.forward` (e.g. ``genotype=`` for the
shared supernet) are passed to every core untouched, so the model has no mode flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import enas_rnn.native as native
from enas_rnn.cells import CellConfig, build_cell
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype
from enas_rnn.kernels import POOL
from enas_rnn.rules import DROPOUT, INT1, OPT_POSITIVE, rule
from enas_rnn.spaces import SearchSpace


class CoreKind(str, Enum):
    """Which recurrent core the language model uses."""

    lstm = "lstm"  # torch.nn.LSTM, the vanilla baseline
    cell = "cell"  # a genotype executed by enas_rnn.cells.FixedCell
    gru = "gru"  # torch.nn.GRU (Cho et al. 2014), a second baseline


@dataclass
class ModelConfig:
    """RNNLM: embedding -> recurrent core (one per layer) -> decoder."""

    core: CoreKind = CoreKind.lstm
    emb_size: int = rule(200, INT1)
    hidden_size: int = rule(200, INT1)
    num_layers: int = rule(1, INT1)
    tie_weights: bool = True  # Press & Wolf 2017; Inan et al. 2017; needs emb_size == hidden_size
    dropout_emb: float = rule(0.0, DROPOUT)  # drops whole words of the embedding matrix (Gal & Ghahramani 2016)
    dropout_in: float = rule(0.0, DROPOUT)  # locked dropout on the embeddings
    dropout_out: float = rule(0.0, DROPOUT)  # locked dropout on every layer's output
    dropout_h: float = rule(0.0, DROPOUT)  # variational dropout on h_{t-1} inside searched cells (ENAS); nn.LSTM ignores it
    init_range: Optional[float] = rule(None, OPT_POSITIVE)  # uniform(-r, r) for every weight (Zaremba et al. 2014: 0.05)
    state_clip: Optional[float] = rule(25.0, OPT_POSITIVE)  # searched cells only: clamp unbounded operands to ±clip (cells.py)

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if cfg.tie_weights and cfg.emb_size != cfg.hidden_size:
            raise ConfigError(
                f"{key('tie_weights')}=true needs {key('emb_size')} == {key('hidden_size')} (got {cfg.emb_size} and "
                f"{cfg.hidden_size}): set both to one value or {key('tie_weights')}=false")


def cell_config(cfg: Any) -> CellConfig:
    """The cell settings a model config implies (``init_range`` is applied by the model to all weights)."""
    return CellConfig(state_clip=None if cfg.state_clip is None else float(cfg.state_clip),
                      dropout_h=float(cfg.dropout_h))


Hidden = Any  # a tensor or a tuple of tensors, as the core defines it


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared over time (Gal & Ghahramani 2016;
    Merity et al. 2018 call it locked dropout)."""

    def forward(self, x: Tensor, p: float) -> Tensor:  # x [T, B, E]
        if not self.training or p == 0.0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p).div_(1 - p)  # [1, B, E]
        return x * mask


def embedding_dropout(embed: nn.Embedding, words: Tensor, p: float, training: bool) -> Tensor:
    """Drops whole words (rows of the embedding matrix) for a batch (Gal & Ghahramani 2016)."""
    if not training or p == 0.0:
        return embed(words)
    keep = embed.weight.new_empty(embed.weight.size(0), 1).bernoulli_(1 - p).div_(1 - p)  # [V, 1]
    return F.embedding(words, embed.weight * keep, embed.padding_idx)


class LSTMCore(nn.Module):
    """One layer of torch.nn.LSTM behind the core interface (the vanilla baseline)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size)

    def init_hidden(self, batch_size: int) -> tuple[Tensor, Tensor]:
        w = self.lstm.weight_hh_l0
        return (w.new_zeros(1, batch_size, self.hidden_size), w.new_zeros(1, batch_size, self.hidden_size))

    def forward(self, x: Tensor, hidden: tuple[Tensor, Tensor], **_: Any) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.lstm(x, hidden)


class GRUCore(nn.Module):
    """One layer of torch.nn.GRU behind the core interface (Cho et al. 2014; a baseline beside nn.LSTM).

    Its hidden state is h [1, B, H] alone: a GRU has no cell state.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.gru = nn.GRU(input_size, hidden_size)

    def init_hidden(self, batch_size: int) -> Tensor:
        return self.gru.weight_hh_l0.new_zeros(1, batch_size, self.hidden_size)

    def forward(self, x: Tensor, hidden: Tensor, **_: Any) -> tuple[Tensor, Tensor]:
        return self.gru(x, hidden)


class RNNLM(nn.Module):
    """Word-level language model around a stack of recurrent cores.

        tokens [T, B] -> embed [T, B, E] -> core_1 -> ... -> core_L [T, B, H] -> decoder [T, B, V]
    """

    def __init__(self, vocab_size: int, cores: Sequence[nn.Module], cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, cfg.emb_size)
        self.cores = nn.ModuleList(cores)
        self.decoder = nn.Linear(cfg.hidden_size, vocab_size)
        self.drop = LockedDropout()
        if cfg.tie_weights:
            # Press & Wolf 2017; Inan et al. 2017: the output embedding is the input embedding.
            self.decoder.weight = self.embedding.weight
        self.reset_parameters(cfg.init_range)

    def reset_parameters(self, init_range: float | None) -> None:
        """uniform(-r, r) for every parameter when r is given (Zaremba et al. 2014); else the
        embedding uniform(-0.1, 0.1), a zero decoder bias and each core's own init."""
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
            return
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> list[Hidden]:
        return [core.init_hidden(batch_size) for core in self.cores]

    def features(self, tokens: Tensor, hidden: list[Hidden], **core_kwargs: Any) -> tuple[Tensor, list[Hidden]]:
        """tokens [T, B] -> the decoder's input [T, B, H] (after the last layer's dropout), new hidden."""
        x = embedding_dropout(self.embedding, tokens, self.cfg.dropout_emb, self.training)  # [T, B, E]
        x = self.drop(x, self.cfg.dropout_in)
        new_hidden = []
        for core, h in zip(self.cores, hidden):
            x, h = core(x, h, **core_kwargs)  # [T, B, H]
            x = self.drop(x, self.cfg.dropout_out)
            new_hidden.append(h)
        return x, new_hidden

    def forward(self, tokens: Tensor, hidden: list[Hidden], **core_kwargs: Any) -> tuple[Tensor, list[Hidden]]:
        """tokens [T, B] -> logits [T, B, V], new hidden (one entry per layer)."""
        x, new_hidden = self.features(tokens, hidden, **core_kwargs)
        return self.decoder(x), new_hidden

    def loss(self, tokens: Tensor, target: Tensor, hidden: list[Hidden], **core_kwargs: Any) -> tuple[Tensor, list[Hidden]]:
        """Mean cross-entropy per token of predicting ``target`` [T, B] from ``tokens`` [T, B], new hidden.

        The same number as ``F.cross_entropy(forward(...)[0])`` (to float rounding) without the
        logits as a tensor of their own on the CPU (:func:`linear_cross_entropy`)."""
        x, new_hidden = self.features(tokens, hidden, **core_kwargs)
        H = x.size(-1)
        return linear_cross_entropy(x.reshape(-1, H), self.decoder.weight, self.decoder.bias, target.reshape(-1)), new_hidden


def _pooled_xent(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, keep: bool) -> tuple[Tensor, Tensor]:
    """(mean CE, the pooled [N, V] buffer): the logits computed into the buffer, then overwritten in
    place with exp(logits - max) - and divided by its row sums, the softmax, when ``keep``."""
    N, V = x.size(0), weight.size(0)
    buf = POOL.empty((N, V), x.dtype, x.device)  # [N, V]
    if bias is not None:
        torch.addmm(bias, x, weight.t(), out=buf)
    else:
        torch.mm(x, weight.t(), out=buf)
    if native.available():  # one pass from memory per row instead of five
        return native.ops().softmax_xent_(buf, target, keep).mean(), buf
    picked = buf.gather(1, target.unsqueeze(1))  # [N, 1]: the targets' logits
    top = buf.amax(1, keepdim=True)  # [N, 1]
    buf.sub_(top).exp_()
    total = buf.sum(1, keepdim=True)  # [N, 1]
    loss = (total.log() + top - picked).mean()  # log-sum-exp minus the target's logit
    if keep:
        buf.div_(total)
    return loss, buf


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(x_i W^T + b, y_i) with the logits, then the softmax, then dL/dlogits held in ONE
    pooled [N, V] buffer (``enas_rnn.kernels.POOL``) and overwritten in place.

    Why: an LM's logits are its largest tensors ([T*B, V]: 45 MB at T = 35, B = 32, V = 10k);
    the unfused path makes four of them per step (logits, log-softmax, the NLL's gradient, the
    log-softmax's), each a fresh mmap that glibc unmaps on free, so each step faults every page in
    again. Backward: dL/dlogits = (softmax - onehot(y)) / N, written over the softmax.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor) -> Tensor:  # type: ignore[override]
        loss, softmax = _pooled_xent(x, weight, bias, target, keep=True)
        ctx.softmax = softmax
        ctx.save_for_backward(x, weight, target)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        p = ctx.softmax
        if p is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice through the same graph; its softmax "
                               "buffer was consumed by the first (compute the loss again instead of retain_graph=True)")
        ctx.softmax = None
        x, weight, target = ctx.saved_tensors
        N = p.size(0)
        p.scatter_add_(1, target.unsqueeze(1), p.new_full((N, 1), -1.0))  # softmax - onehot(y), in place
        scale = grad / N
        dx = torch.mm(p, weight).mul_(scale) if ctx.needs_input_grad[0] else None  # [N, H]
        dw = torch.mm(p.t(), x * scale) if ctx.needs_input_grad[1] else None  # [V, H]
        db = p.sum(0).mul_(scale) if ctx.needs_input_grad[2] else None  # [V]
        return dx, dw, db, None


def linear_cross_entropy(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor) -> Tensor:
    """``F.cross_entropy(F.linear(x, weight, bias), target)`` (mean over rows): x [N, H], weight [V, H],
    target [N]. Float32 on the CPU it runs :class:`_LinearCrossEntropy` (no logits tensor of its own;
    the gradient through a graph can be taken once); other dtypes, devices and autocast the two ops."""
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == x.dtype) \
            and not torch.is_autocast_enabled("cpu"):
        if not torch.is_grad_enabled():  # evaluation: no softmax to keep for a backward
            return _pooled_xent(x, weight, bias, target, keep=False)[0]
        return _LinearCrossEntropy.apply(x, weight, bias, target)
    return F.cross_entropy(F.linear(x, weight, bias), target)


def token_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row ``-log softmax(logits)[target]`` of logits [N, V] (``F.cross_entropy(..., reduction="none")``).

    On the CPU in float32 without autograd (every training-free score) one C++ pass per row reads
    the logits (``xent_rows``): no [N, V] log-softmax is written, which for a [340, 10k] slice cost
    more than the decoder GEMM that made it (a fresh 14 MB block, faulted in on every call)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(1) == 1 \
            and not (torch.is_grad_enabled() and logits.requires_grad) and native.available():
        return native.ops().xent_rows(logits, target.contiguous())
    return F.cross_entropy(logits, target, reduction="none")


def count_parameters(model: nn.Module) -> int:
    """Exact number of trainable scalars; tied weights are counted once (parameters() dedups)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cuts the graph between BPTT windows while carrying the state (truncated BPTT)."""
    if isinstance(hidden, Tensor):
        return hidden.detach()
    return type(hidden)(detach_hidden(h) for h in hidden)


def build_cores(cfg: Any, input_size: int, genotype: Genotype | None = None,
                space: SearchSpace | None = None) -> list[nn.Module]:
    """The recurrent cores of ``cfg.num_layers`` layers of ``cfg.hidden_size`` units over inputs of
    ``input_size``: nn.LSTM (``cfg.core=lstm``), nn.GRU (``gru``), ``FixedCell(genotype)`` (``cell``)
    or, with ``space``, the search supernet's ``SharedCell``. Every model with a recurrent core gets
    its cores here (the language model and the synthetic-task model of ``enas_rnn.tasks``)."""
    sizes = [input_size] + [cfg.hidden_size] * cfg.num_layers
    pairs = [(sizes[i], sizes[i + 1]) for i in range(cfg.num_layers)]
    if space is not None:
        return [build_cell(i, h, cell_config(cfg), space=space) for i, h in pairs]
    kind = CoreKind(cfg.core)
    if kind == CoreKind.lstm:
        return [LSTMCore(i, h) for i, h in pairs]
    if kind == CoreKind.gru:
        return [GRUCore(i, h) for i, h in pairs]
    if genotype is None:
        raise ConfigError("model.core=cell needs a genotype: set cell=<name or genotype.json>")
    return [build_cell(i, h, cell_config(cfg), genotype=genotype) for i, h in pairs]


def build_model(cfg: Any, vocab_size: int, genotype: Genotype | None = None,
                space: SearchSpace | None = None) -> RNNLM:
    """The one factory of language models: nn.LSTM cores (``cfg.core=lstm``), nn.GRU cores (``gru``),
    ``FixedCell(genotype)`` cores (``cell``), or, with ``space``, the search supernet (one ``SharedCell``)."""
    return RNNLM(vocab_size, build_cores(cfg, cfg.emb_size, genotype, space), cfg)


def build_lm(cfg: Any, vocab_size: int, genotype: Genotype | None = None) -> RNNLM:
    """The language model a model config describes: nn.LSTM / nn.GRU cores (``genotype`` None) or
    ``FixedCell(genotype)`` cores (``cfg.core=cell``). Every trained model of the project is built here."""
    kind = CoreKind(cfg.core)
    if kind == CoreKind.cell and genotype is None:
        raise ConfigError("model.core=cell needs a genotype: set cell=<name or genotype.json>")
    if kind != CoreKind.cell and genotype is not None:
        raise ConfigError(f"a genotype was given but model.core={kind.value}: set model=cell to train the cell")
    return build_model(cfg, vocab_size, genotype)
