"""Recurrent cells that execute a genotype: the shared (supernet) form and the fixed form.

Both cells ask the genotype's search space (``enas_rnn.spaces``) to compile it into a plan and run
that plan with the same loop; they differ only in which weight rows they own. So search and final
training run one piece of cell code (the DARTS lesson: ``DARTSCellSearch`` subclasses
``DARTSCell``), and ``FixedCell.from_shared`` reproduces ``SharedCell`` exactly.

Interface used by the language model (one core per layer)::

    cell.init_hidden(B) -> (h [B,H], c [B,H])          # enas: c is a zero dummy, passed through
    cell(x [T,B,E], hidden, genotype=None) -> (out [T,B,H] = h_t for every t, (h_T, c_T))

Weight banks are laid out by the space (``bank_layout``): a row is one (node, operand slot) for
lstm, one edge (l, j) for enas; a shared cell holds every row of the space, each row its own
parameter, a fixed cell only the rows its plan uses, in the plan's order, as one tensor per bank
(so its gather is a free view).

Speed by design (ARCHITECTURE.md): a shared step costs what its child costs - the child's rows are
stacked once per forward and rows it did not use get no gradient, so no bank-sized gradient,
zero-fill, weight decay or update ever happens; the x_t part of every live xh map is one GEMM over
the whole sequence; per step one GEMM covers the h_{t-1} part of all live slots (lstm) or all
children of a parent (enas); live slots are grouped by activation so each activation is one kernel;
only live nodes run; no host syncs in the loop. Backward, per step, does only the GEMM for
dL/dh_{t-1}; the recurrent weights' gradients are one GEMM over all steps (``kernels.StepGEMM``;
the enas loop has its own backward, ``enas_rnn.spaces.enas``), as fused cuDNN/oneDNN RNN kernels do.

Stability guard (``state_clip``, default 25): relu/mul chains make ENAS-style cells explode (a
chain n_{k+1} = n_k * n_k overflows float32 in 8 nodes). Every operand whose activation is
unbounded (identity, relu) is clamped to [-clip, clip]; the clamps that interval analysis proves to
be no-ops are skipped at plan time. Hence every operand lies in [-clip, clip], every node value in
[-clip^2, clip^2] (625: safe even in float16) and nothing grows across nodes or time. For the
vanilla LSTM this is exactly one clamp per step, on c_{t-1}; |c| < 25 in normal ranges (and
tanh(25) = 1 - 4e-22), so nn.LSTM is reproduced. For enas, candidates with identity/relu are
clamped and the incoming h is clamped once per forward, so every state stays in [-clip, clip]
(s_l is a convex combination). ``state_clip=None`` turns the guard off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from enas_rnn.genotype import Genotype, GenotypeError, space_type
from enas_rnn.kernels import rows_arg, take
from enas_rnn.spaces import SearchSpace, make_space

__all__ = ["CellConfig", "SharedCell", "FixedCell", "build_cell"]

Hidden = tuple[Tensor, Tensor]


@dataclass
class CellConfig:
    """Settings of a genotype cell (plain types only).

    state_clip: guard bound (see module doc); None disables it.
    dropout_h:  variational dropout on h_{t-1} (one mask per sequence, training only;
                ENAS/AWD-LSTM use it on the recurrent input).
    init_range: weights ~ U(-r, r); None means 1/sqrt(hidden_size), like nn.LSTM.
    compile:    wrap the time loop of a FixedCell in ``torch.compile`` (off by default).
                Measured on CPU: ~30 s to compile, no speed-up (the loop is GEMM-bound);
                meant for CUDA, where per-kernel launch cost dominates.
                A SharedCell ignores it (a recompile per sampled genotype costs more).
    """

    state_clip: Optional[float] = 25.0
    dropout_h: float = 0.0
    init_range: Optional[float] = None
    compile: bool = False


def _settings(cfg: CellConfig | None, overrides: dict[str, Any]) -> CellConfig:
    """``cfg`` (default settings when None) with keyword overrides, e.g. ``FixedCell(g, E, H, state_clip=None)``."""
    return dataclasses.replace(cfg or CellConfig(), **overrides)


class _GenotypeCell(nn.Module):
    """Common machinery: weight banks, plan cache, gather, dropout mask, hidden init."""

    def __init__(self, space: str, input_size: int, hidden_size: int, num_rows: int, cfg: CellConfig,
                 row_params: bool = False) -> None:
        super().__init__()
        if cfg.state_clip is not None and not cfg.state_clip > 0:
            raise ValueError(f"state_clip must be positive or None, got {cfg.state_clip}")
        if not 0.0 <= cfg.dropout_h < 1.0:
            raise ValueError(f"dropout_h must be in [0, 1), got {cfg.dropout_h}")
        self.kind = space_type(space)
        self.space = space
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.state_clip = None if cfg.state_clip is None else float(cfg.state_clip)
        self.dropout_h = float(cfg.dropout_h)
        self.init_range = cfg.init_range
        self.compile = bool(cfg.compile)
        self.row_dims: dict[str, Optional[int]] = {}
        self.bank_shapes: dict[str, tuple[int, ...]] = {}
        for name, (shape, row_dim) in self.kind.bank_layout(self.input_size, self.hidden_size, num_rows).items():
            if row_params and row_dim is not None:
                # One parameter per row (see SharedCell): [.., rows, ..] -> rows x [.., ..].
                row_shape = shape[:row_dim] + shape[row_dim + 1:]
                self.register_module(name, nn.ParameterList([nn.Parameter(torch.empty(*row_shape))
                                                             for _ in range(shape[row_dim])]))
            else:
                self.register_parameter(name, nn.Parameter(torch.empty(*shape)))
            self.row_dims[name] = row_dim
            self.bank_shapes[name] = tuple(shape)
        self.reset_parameters()
        self._plans: dict[tuple[Genotype, float | None], Any] = {}
        self._index: dict[tuple[int, torch.device], Any] = {}

    def config(self) -> CellConfig:
        """The settings this cell was built with."""
        return CellConfig(self.state_clip, self.dropout_h, self.init_range, self.compile)

    def reset_parameters(self) -> None:
        """U(-r, r) with r = init_range or 1/sqrt(H) (nn.LSTM's default).

        Banks are drawn whole, in layout order, whether held as one tensor or as rows: a seed
        gives the same weights in either form."""
        r = self.init_range if self.init_range is not None else 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, bank in self.banks().items():
                if isinstance(bank, Tensor):
                    nn.init.uniform_(bank, -r, r)
                    continue
                dense = torch.empty(self.bank_shapes[name], dtype=bank[0].dtype, device=bank[0].device).uniform_(-r, r)
                for row, value in zip(bank, dense.unbind(self.row_dims[name])):
                    row.copy_(value)

    def banks(self) -> dict[str, Any]:
        """The weight banks by name (the space's layout): a tensor, or a ParameterList of rows."""
        return {name: getattr(self, name) for name in self.row_dims}

    def bank(self, name: str) -> Tensor:
        """Bank ``name`` as one tensor of the space's layout (rows stacked, differentiable)."""
        b = getattr(self, name)
        return b if isinstance(b, Tensor) else torch.stack(list(b), self.row_dims[name])

    def bank_row(self, name: str, r: int) -> Tensor:
        """Row r of bank ``name``: a view of the parameter that holds it (writable under no_grad)."""
        b = getattr(self, name)
        return b.select(self.row_dims[name], r) if isinstance(b, Tensor) else b[r]

    # ---------------------------------------------------------------- interface
    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero (h, c), each [B, H], on the weights' device and dtype (enas: c is a dummy)."""
        w = next(self.parameters())
        return w.new_zeros(batch_size, self.hidden_size), w.new_zeros(batch_size, self.hidden_size)

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        """Bank rows of weight keys: (node, slot) for lstm, (node l, parent j) for enas."""
        raise NotImplementedError

    def plan(self, genotype: Genotype) -> Any:
        """Compiled (cached) plan of ``genotype`` under this cell's guard."""
        key = (genotype, self.state_clip)
        p = self._plans.get(key)
        if p is None:
            if len(self._plans) >= 1024:  # bound the cache during long searches
                self._plans.clear()
                self._index.clear()
            p = self._plans[key] = self.kind.compile(genotype, self.state_clip)
        return p

    def _rows_cached(self, keys: Sequence[tuple[int, int]], device: torch.device) -> Any:
        # ``keys`` tuples live as long as their cached plan (both caches are cleared together).
        cache_key = (id(keys), device)
        got = self._index.get(cache_key)
        if got is None:
            got = self._index[cache_key] = rows_arg(self.rows(keys), device)
        return got

    def _mask(self, h: Tensor) -> Tensor | None:
        """Variational dropout mask on h_{t-1}: one per sequence, training only (Gal & Ghahramani 2016)."""
        if not (self.training and self.dropout_h > 0):
            return None
        keep = 1.0 - self.dropout_h
        return h.new_empty(h.shape).bernoulli_(keep).div_(keep)

    def _execute(self, plan: Any, x: Tensor, hidden: Hidden | None) -> tuple[Tensor, Hidden]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected x of shape [T, B, {self.input_size}], got {tuple(x.shape)}")
        if hidden is None:
            hidden = self.init_hidden(x.shape[1])
        h, c = hidden[0], hidden[-1]
        mask = self._mask(h)
        rows = self._rows_cached(plan.keys, x.device)
        weights = self.kind.gather(plan, self.banks(), rows, self.input_size, self.hidden_size)
        return self._loop(self.kind.run, plan, weights, x, (h, c), mask, self.state_clip)

    def _loop(self, fn: Callable[..., tuple[Tensor, Hidden]], *args: Any) -> tuple[Tensor, Hidden]:
        return fn(*args)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"space={self.space}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"state_clip={self.state_clip}, dropout_h={self.dropout_h}"
        )


class SharedCell(_GenotypeCell):
    """Every parameter of a space (the ENAS supernet); runs any genotype passed to forward.

    Each bank row (an lstm (node, slot) map, an enas edge) is its own parameter, so a step costs
    what its child costs, not what the supernet holds: rows the child did not use get no gradient
    (``None``), so clipping, weight decay and the SGD update skip them, and no bank-sized gradient
    is ever zero-filled. Weight decay therefore regularises only what the child used, as
    enas_lm does ("extract the relevant variables, so that you only do L2-reg on them",
    ``child.py::_rnn_fn``). state_dict keys are ``<bank>.<row>`` (e.g. ``w_edge.17``).
    """

    def __init__(self, space: SearchSpace | str, input_size: int, hidden_size: int,
                 cfg: CellConfig | None = None, *, num_nodes: int | None = None, **settings: Any) -> None:
        sp = space if isinstance(space, SearchSpace) else make_space(space, 8 if num_nodes is None else num_nodes)
        super().__init__(sp.name, input_size, hidden_size, sp.shared_num_rows(sp.num_nodes), _settings(cfg, settings),
                         row_params=True)
        self.num_nodes = sp.num_nodes
        # compile is accepted for a uniform config but not used: a shared cell sees a new
        # genotype every step, and a recompile per genotype costs far more than it saves.

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        return [self.kind.shared_row(k) for k in keys]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A checkpoint written before banks were held as rows has one dense tensor per bank:
        # split it into the row keys (``w_edge`` [H, 2, P, H] -> ``w_edge.0`` .. ``w_edge.{P-1}``).
        for name, dim in self.row_dims.items():
            dense = state_dict.pop(prefix + name, None) if dim is not None else None
            if dense is not None:
                for r, row in enumerate(dense.unbind(dim)):
                    state_dict[f"{prefix}{name}.{r}"] = row
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _rows_cached(self, keys: Sequence[tuple[int, int]], device: torch.device) -> Any:
        # Row banks are gathered by Python index (a stack of the rows): a list, never a tensor.
        got = self._index.get((id(keys), device))
        if got is None:
            got = self._index[(id(keys), device)] = self.rows(keys)
        return got

    def forward(self, x: Tensor, hidden: Hidden | None = None, genotype: Genotype | None = None) -> tuple[Tensor, Hidden]:
        """x [T, B, E] -> (h_t for every t [T, B, H], final (h, c)), running ``genotype``."""
        if genotype is None:
            raise ValueError("SharedCell.forward needs the genotype to run (genotype=...)")
        if genotype.space != self.space:
            raise GenotypeError(f"a {genotype.space!r} genotype cannot run on a {self.space!r} SharedCell")
        if genotype.num_nodes > self.num_nodes:
            raise GenotypeError(
                f"genotype has {genotype.num_nodes} nodes; this SharedCell holds weights for {self.num_nodes}"
            )
        return self._execute(self.plan(genotype), x, hidden)


class FixedCell(_GenotypeCell):
    """One genotype, holding ONLY the weights it uses (live xh slots / used edges)."""

    def __init__(self, genotype: Genotype, input_size: int, hidden_size: int, cfg: CellConfig | None = None,
                 **settings: Any) -> None:
        cfg = _settings(cfg, settings)
        plan = genotype.kind.compile(genotype, None if cfg.state_clip is None else float(cfg.state_clip))
        super().__init__(genotype.space, input_size, hidden_size, len(plan.keys), cfg)
        self.genotype = genotype
        # Bank rows are laid out in the plan's own order, so the gather is a free view.
        self._row_of = {key: r for r, key in enumerate(plan.keys)}
        self._plan = plan
        self._compiled: Callable[..., tuple[Tensor, Hidden]] | None = None

    @classmethod
    def from_shared(cls, shared: SharedCell, genotype: Genotype) -> FixedCell:
        """A FixedCell of ``genotype`` with ``shared``'s weights for it (identical outputs)."""
        if genotype.space != shared.space:
            raise GenotypeError(f"a {genotype.space!r} genotype cannot come from a {shared.space!r} SharedCell")
        w = next(shared.parameters())
        fixed = cls(genotype, shared.input_size, shared.hidden_size, shared.config()).to(device=w.device, dtype=w.dtype)
        fixed.load_from_shared(shared)
        return fixed

    def load_from_shared(self, shared: SharedCell) -> None:
        """Copy this genotype's rows out of ``shared``'s banks (banks without rows are copied whole)."""
        src = shared.rows(list(self._row_of))
        with torch.no_grad():
            for name, dim in self.row_dims.items():
                bank = shared.banks()[name]
                getattr(self, name).copy_(bank if dim is None else take(bank, dim, src))

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        try:
            return [self._row_of[k] for k in keys]
        except KeyError as e:
            raise GenotypeError(f"weight key {e.args[0]} is not live in this FixedCell's genotype") from None

    def plan(self, genotype: Genotype | None = None) -> Any:
        return self._plan

    def forward(self, x: Tensor, hidden: Hidden | None = None, genotype: Genotype | None = None) -> tuple[Tensor, Hidden]:
        """x [T, B, E] -> (h_t for every t [T, B, H], final (h, c)). ``genotype`` must be None or its own."""
        if genotype is not None and genotype != self.genotype:
            raise GenotypeError("FixedCell runs only its own genotype; build another FixedCell for a different one")
        return self._execute(self._plan, x, hidden)

    def _loop(self, fn: Callable[..., tuple[Tensor, Hidden]], *args: Any) -> tuple[Tensor, Hidden]:
        if not self.compile:
            return fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(fn, dynamic=False)
        return self._compiled(*args)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", genotype={self.genotype.hash()}"


def build_cell(input_size: int, hidden_size: int, cfg: CellConfig | None = None, *,
               genotype: Genotype | None = None, space: SearchSpace | None = None) -> _GenotypeCell:
    """The one factory of genotype cells: ``FixedCell(genotype)`` or, with ``space``, the supernet's
    ``SharedCell``; settings from ``cfg``."""
    if (genotype is None) == (space is None):
        raise ValueError("build_cell needs exactly one of genotype= (a fixed cell) or space= (the shared cell)")
    if genotype is not None:
        return FixedCell(genotype, input_size, hidden_size, cfg)
    return SharedCell(space, input_size, hidden_size, cfg)
