"""Low-level pieces every cell program is built from: activation kernels with the guard's clamp
(and their backward kernels), the hoisted-GEMM autograd function, weight-bank gathers, and a pool
of scratch buffers for fused loops.

A search space compiles a genotype into a plan (``enas_rnn.spaces``) whose steps are named ops
from :data:`OPS`; the cell executes a plan with :data:`OPS`' kernels and export prints it with
their code templates, so the two back ends cannot drift apart (one analysis, two back ends).

Stability guard (``state_clip``, default 25; ``enas_rnn.cells``): every operand whose activation
is unbounded (identity, relu) is clamped to [-clip, clip]. The clamp is ``hardtanh``: its backward
is one kernel (clamp's is three), and ``hardtanh(v, 0, clip)`` is relu and clamp fused (gradient 0
at v = 0, like relu).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.nn import functional as F

#: Activations an operand (lstm) or a node (enas) may apply; the order is the choice index order
#: of the search spaces' decisions, so it must never change.
ACTIVATIONS: tuple[str, ...] = ("identity", "tanh", "sigmoid", "relu")
#: Activations with f(0) = 0 (sigmoid(0) = 1/2): what keeps a zero state at zero (degeneracy analysis).
ZERO_PRESERVING: frozenset[str] = frozenset({"identity", "tanh", "relu"})
#: Activations bounded by 1 in absolute value (never clamped by the guard).
BOUNDED: frozenset[str] = frozenset({"tanh", "sigmoid"})
#: Kernel order of activation groups in a per-step pre-activation tensor.
GROUP_ORDER: tuple[str, ...] = ("tanh", "sigmoid", "relu", "identity")


@dataclass(frozen=True)
class Op:
    """A named elementwise op of a plan: its kernel (clip bound in) and its code template for export.

    Unary ops also carry what a hand-written backward needs (``enas_rnn.spaces.enas``'s fused
    recurrence): ``inplace`` applies the op in place, ``grad(g, y, out)`` writes dL/dv into ``out``
    given g = dL/dy and the op's OUTPUT y = op(v) - the same ATen backward kernels autograd runs
    (tanh/sigmoid from the result; relu and the clamps from a mask that y determines exactly:
    for y = clamp(v, lo, hi), lo < v < hi iff lo < y < hi).
    """

    name: str
    fn: Callable[..., Tensor]
    code: str  # e.g. "torch.tanh({a})"; {a}, {b} are operands, STATE_CLIP the exported guard bound
    inplace: Optional[Callable[[Tensor], Tensor]] = None
    grad: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None


_aten = torch.ops.aten


def _op(name: str, clip: Optional[float]) -> Op:
    if name == "tanh":
        return Op(name, torch.tanh, "torch.tanh({a})", torch.tanh_,
                  lambda g, y, out: _aten.tanh_backward.grad_input(g, y, grad_input=out))
    if name == "sigmoid":
        return Op(name, torch.sigmoid, "torch.sigmoid({a})", torch.sigmoid_,
                  lambda g, y, out: _aten.sigmoid_backward.grad_input(g, y, grad_input=out))
    if name == "relu":
        return Op(name, torch.relu, "torch.relu({a})", torch.relu_,
                  lambda g, y, out: _aten.threshold_backward.grad_input(g, y, 0, grad_input=out))
    if name in ("relu_clip", "clip"):
        lo = 0.0 if name == "relu_clip" else -float(clip)  # type: ignore[arg-type]
        hi = float(clip)  # type: ignore[arg-type]
        code = "F.hardtanh({a}, 0.0, STATE_CLIP)" if name == "relu_clip" else "F.hardtanh({a}, -STATE_CLIP, STATE_CLIP)"
        return Op(name, functools.partial(F.hardtanh, min_val=lo, max_val=hi), code,
                  functools.partial(F.hardtanh_, min_val=lo, max_val=hi),
                  lambda g, y, out: _aten.hardtanh_backward.grad_input(g, y, lo, hi, grad_input=out))
    if name == "add":
        return Op(name, torch.add, "{a} + {b}")
    if name == "mul":
        return Op(name, torch.mul, "{a} * {b}")
    raise ValueError(f"unknown op {name!r}")


def act_op(act: str, clip: Optional[float], clamp: bool) -> Optional[Op]:
    """The op applying ``act`` (None: identity with no clamp, no kernel at all); ``clamp`` fuses the guard."""
    if act in BOUNDED:
        return _op(act, clip)
    if act == "relu":
        return _op("relu_clip" if clamp else "relu", clip)
    if act == "identity":
        return _op("clip", clip) if clamp else None
    raise ValueError(f"unknown activation {act!r}; valid activations: {', '.join(ACTIVATIONS)}")


def binary_op(name: str) -> Op:
    """``add`` or ``mul``."""
    return _op(name, None)


def act_bound(act: str, src_bound: float, clip: Optional[float], clamp: bool) -> float:
    """Upper bound of |act(v)| given |v| <= src_bound (interval analysis for the guard)."""
    if act in BOUNDED:
        return 1.0
    return float(clip) if clamp and clip is not None else src_bound


def needs_clamp(act: str, src_bound: float, clip: Optional[float]) -> bool:
    """True when the guard must clamp act(v): an unbounded activation of a value that may exceed clip."""
    return clip is not None and act not in BOUNDED and src_bound > clip


# ============================================================================ the hoisted GEMM
class StepGEMM(torch.autograd.Function):
    """Hoisted GEMM of a recurrence whose backward also yields the recurrent weight's gradient.

    The loop computes ``pre_t = base_t + in_t @ w_rec.detach()`` and appends ``in_t`` to
    ``tape``. Per step, backward then does ONE GEMM (grad of in_t) instead of two plus an
    accumulation; the weight gradient is one big GEMM over all steps here, the way fused
    cuDNN/oneDNN RNN kernels do it::

        forward:   base = bias + x @ w_in           [T*B, E] x [E, N] -> [T*B, N]  (zeros if no x)
        backward:  G = dL/dbase = dL/dpre_t, stacked over t                 [T*B, N]
                   dw_rec = cat(tape)^T @ G          [K, T*B] x [T*B, N] -> [K, N]
                   dx = G @ w_in^T,  dw_in = x^T @ G,  dbias = sum_rows(G)

    Autograd runs this backward after every step's (all of them consume ``base``), when the
    tape is complete. Not twice differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor | None,
        w_in: Tensor | None,
        bias: Tensor | None,
        w_rec: Tensor,
        tape: list[Tensor],
        rows: int,
    ) -> Tensor:
        ctx.tape = tape
        ctx.save_for_backward(x, w_in)
        ctx.has_bias = bias is not None
        # Input dtypes: under autocast the step GEMMs run in half precision while the
        # weights stay float32, so backward computes in grad's dtype and casts back.
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (x, w_in, bias, w_rec))
        if x is None:
            # A stride-0 zero base: the per-step addmm still routes dL/dpre_t here (stacked
            # by unbind's backward) without writing T*B*N zeros every forward.
            return w_rec.new_zeros(1, 1).expand(rows, w_rec.shape[1])
        return torch.mm(x, w_in) if bias is None else torch.addmm(bias, x, w_in)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w_in = ctx.saved_tensors
        need_x, need_w_in, need_b, need_w_rec = ctx.needs_input_grad[:4]
        dt_x, dt_w_in, dt_b, dt_w_rec = ctx.dtypes
        dx = grad.mm(w_in.to(grad.dtype).t()).to(dt_x) if need_x else None
        dw_in = x.to(grad.dtype).t().mm(grad).to(dt_w_in) if need_w_in else None
        db = grad.sum(0).to(dt_b) if (need_b and ctx.has_bias) else None
        dw_rec = None
        if need_w_rec and ctx.tape:
            # [T*B, K]^T x [T*B, N] -> [K, N]: the recurrent weight's gradient over all steps.
            hs = torch.cat([t.to(grad.dtype) for t in ctx.tape], 0)
            dw_rec = hs.t().mm(grad).to(dt_w_rec)
        ctx.tape = None  # free the inputs now that the gradient is taken
        return dx, dw_in, db, dw_rec, None, None


def hoist(
    x: Tensor | None, w_in: Tensor | None, bias: Tensor | None, w_rec: Tensor, T: int, B: int
) -> tuple[tuple[Tensor, ...], Tensor, list[Tensor] | None]:
    """Per-step bases [B, N], the recurrent weight to use in the loop, and the tape to fill.

    With autograd on, the loop uses ``w_rec.detach()`` and the weight gradient comes from
    ``StepGEMM``; without it (eval, no_grad) the plain ops run and nothing is taped.
    """
    N = w_rec.shape[1]
    # Under torch.compile the plain ops are traced instead (a tape of tensors filled after
    # the Function ran is a side effect the compiler cannot follow).
    if torch.is_grad_enabled() and w_rec.requires_grad and not torch.compiler.is_compiling():
        tape: list[Tensor] = []
        base = StepGEMM.apply(x, w_in, bias, w_rec, tape, T * B)
        # [T*B, N] -> [T, B, N] -> T x [B, N]; unbind's backward is one stack (indexing base[t]
        # per step would allocate a full [T, B, N] gradient per step).
        return base.view(T, B, N).unbind(0), w_rec.detach(), tape
    if x is None:
        base = w_rec.new_zeros(T * B, N)
    else:
        base = torch.mm(x, w_in) if bias is None else torch.addmm(bias, x, w_in)
    return base.view(T, B, N).unbind(0), w_rec, None


# ============================================================================ weight banks
def rows_arg(rows: Sequence[int], device: torch.device) -> tuple[int, int] | Tensor:
    """A contiguous run of rows as (start, length) for ``narrow`` (a view); else an index tensor."""
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return (rows[0], len(rows))
    return torch.tensor(list(rows), dtype=torch.long, device=device)


Bank = Union[Tensor, Sequence[Tensor]]


def take(bank: Bank, dim: int, rows: tuple[int, int] | Tensor | Sequence[int]) -> Tensor:
    """Rows of a bank along ``dim``, once per forward and bank.

    A dense bank (a FixedCell's, whose rows are in plan order) gives itself or a ``narrow`` view.
    A bank held as one parameter per row (the SharedCell's) gives the stack of the rows asked
    for: its backward hands each used row its own gradient and rows not asked for get none at all,
    so the optimiser never touches them (no bank-sized zero-fill, decay or update).
    """
    if isinstance(bank, Tensor):
        if isinstance(rows, tuple):
            if rows == (0, bank.shape[dim]):
                return bank  # a FixedCell owns exactly its rows: no op, no extra backward
            return bank.narrow(dim, rows[0], rows[1])
        return bank.index_select(dim, torch.as_tensor(rows, dtype=torch.long, device=bank.device))
    if isinstance(rows, tuple):
        rows = range(rows[0], rows[0] + rows[1])
    picked = [bank[int(r)] for r in rows]
    if not picked:  # a cell that reads no row of this bank
        shape = list(bank[0].shape)
        return bank[0].new_empty(shape[:dim] + [0] + shape[dim:])
    if len(picked) == 1:
        return picked[0].unsqueeze(dim)  # a view: its gradient is the row's, no copy either way
    return torch.stack(picked, dim)


# ============================================================================ scratch buffers
def _storage_refs(t: Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class BufferPool:
    """Reuses large CPU scratch buffers across calls (a fused loop's kept states and gradients).

    glibc hands allocations above 32 MiB to fresh ``mmap``s, so a buffer of that size allocated
    every step costs a page fault per 4 KiB page - at H = 1000 a few hundred thousand faults and
    ~0.5 s of system time per shared step. A buffer is handed out again only when nothing but the
    pool refers to its storage (every view, and every tensor an autograd graph saved, holds a
    reference), so a graph kept alive (``retain_graph=True``) never sees its buffers reused.
    Contents of a handed-out buffer are undefined, as with ``torch.empty``. CUDA has its own
    caching allocator: there the pool just allocates. Not thread-safe.
    """

    def __init__(self, max_bytes: int = 4 << 30, min_bytes: int = 1 << 20) -> None:
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self._bufs: list[Tensor] = []
        try:
            self._free_refs = _storage_refs(torch.empty(1))  # the buffer itself + the query's own
        except (AttributeError, RuntimeError):  # a torch without the query: no pooling
            self._free_refs = -1

    def empty(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``, reusing a free pooled buffer when one fits."""
        n = math.prod(shape)
        if device.type != "cpu" or self._free_refs < 0 or n * dtype.itemsize < self.min_bytes:
            return torch.empty(tuple(shape), dtype=dtype, device=device)
        best = None
        for b in self._bufs:
            if b.dtype == dtype and b.numel() >= n and (best is None or b.numel() < best.numel()) \
                    and _storage_refs(b) == self._free_refs:
                best = b
        if best is None:
            best = torch.empty(n, dtype=dtype, device=device)
            self._bufs.append(best)
            self._evict()
        return best[:n].view(tuple(shape))

    def _evict(self) -> None:
        """Drop free buffers, smallest first, while the pool holds more than ``max_bytes``."""
        total = sum(b.numel() * b.element_size() for b in self._bufs)
        drop: set[int] = set()
        for b in sorted(self._bufs, key=Tensor.numel):
            if total <= self.max_bytes:
                break
            if _storage_refs(b) == self._free_refs:
                drop.add(id(b))
                total -= b.numel() * b.element_size()
        self._bufs = [b for b in self._bufs if id(b) not in drop]


#: The process's pool for fused loops (``enas_rnn.spaces.enas``).
POOL = BufferPool()
