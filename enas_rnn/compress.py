"""Deep-Compression-style shrinking of a trained language model (Han, Mao & Dally, ICLR 2016).

Two methods, alone or combined, each applied per weight matrix (every parameter of two or more
dimensions that is not a bias: the embedding, the decoder, nn.LSTM/nn.GRU's ``weight_ih``/``weight_hh``,
a FixedCell's ``w_x``/``w_h`` banks):

* **magnitude pruning** (Han et al. 2015, 2016 sec. 2): the ``level`` share of the matrix's weights
  with the smallest magnitude is set to zero (exactly ``round(level * n)`` of them, ties broken by
  position); the mask stays fixed while the network is retrained.
* **weight sharing** (2016 sec. 3): the matrix's (surviving) weights are clustered into ``k`` values
  by one-dimensional k-means with linear initialisation between the smallest and largest weight
  (the initialisation the paper found best); every weight is replaced by its centroid. During
  retraining the centroids are the trained parameters: the gradient of a centroid is the sum of
  the gradients of its weights (the paper's Fig. 3).

Both are ``torch.nn.utils.parametrize`` parametrisations, so retraining runs the unchanged model code
and the one LM loop (``enas_rnn.train.fit``), with the optimiser and the gradient clipping seeing the
true parameters (dense weights under a mask; the centroids). :func:`materialize` removes them and
leaves plain dense weights that hold the zeros and the ``k`` values.

Stored size (:func:`stored_bits`), following the paper's sec. 2-3 format without its Huffman stage:
a pruned matrix is stored sparse as (value, relative index) pairs with ``index_bits``-bit index
differences and a filler zero whenever a gap exceeds 2^index_bits (the paper: 5 bits for fully
connected layers); a shared matrix stores ceil(log2 k)-bit cluster indices instead of 32-bit values,
plus a k-entry float32 codebook; whichever of the sparse and dense layouts is smaller is counted;
everything left uncompressed (biases) counts 32 bits a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from enas_rnn.rules import INT1, POSITIVE, check_values, each, int_in, number_in, one_of, rule

__all__ = ["CompressConfig", "validate_compress", "Applied", "Variant", "plan_variants", "compressible", "magnitude_mask", "kmeans_1d",
           "Pruned", "Shared", "ScaledSGD", "codebooks", "retrain_optimizer", "apply_variant", "materialize", "matrix_bits", "stored_bits", "sparsity", "cluster_counts",
           "SCOPES"]

SCOPES = ("all", "cores")
SHARE = number_in(0.0, 1.0, hi_open=True)  # a pruned share
CLUSTERS = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2, "integers >= 2")


@dataclass
class CompressConfig:
    """Which compressed variants to make: pruning levels, cluster counts, and combinations of both."""

    prune_levels: list[float] = rule(factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9], check=each(SHARE))
    clusters: list[int] = rule(factory=lambda: [10, 12, 14, 16], check=each(CLUSTERS))
    # x combined_clusters: prune, then share
    combined_levels: list[float] = rule(factory=lambda: [0.5, 0.8], check=each(SHARE))
    combined_clusters: list[int] = rule(factory=lambda: [16], check=each(CLUSTERS))
    scope: str = rule("all", one_of(SCOPES))  # all: embedding, decoder and cores; cores: the recurrent weights only
    index_bits: int = rule(5, int_in(1, 32))  # relative-index width of the sparse format (Han et al. 2016: 5 for fc layers)
    # The centroids' step is lr x codebook_lr_scale: a centroid's gradient sums those of its ~10^4-10^5
    # weights, so the weights' lr (and a global-norm clip that the sums dominate) would throw it far off.
    codebook_lr_scale: float = rule(1e-2, POSITIVE)
    kmeans_iters: int = rule(50, INT1)


def validate_compress(cfg: Any, prefix: str = "compress.") -> None:
    """Value checks of a compression config (each field's rule), keys named with ``prefix``."""
    check_values(cfg, CompressConfig, prefix)


@dataclass(frozen=True)
class Variant:
    """One compressed model: pruned share ``level`` (0: none) and ``clusters`` (None: no sharing)."""

    level: float = 0.0
    clusters: Optional[int] = None

    @property
    def name(self) -> str:
        parts = []
        if self.level > 0:
            parts.append(f"prune{round(100 * self.level):02d}")
        if self.clusters is not None:
            parts.append(f"share{self.clusters}")
        return "_".join(parts) or "retrained"

    @property
    def method(self) -> str:
        if self.level > 0 and self.clusters is not None:
            return "prune+share"
        return "prune" if self.level > 0 else ("share" if self.clusters is not None else "none")


def plan_variants(cfg: CompressConfig, control: bool = True) -> list[Variant]:
    """The variants a config asks for, without duplicates: the control (retrained, uncompressed) first."""
    out = [Variant()] if control else []
    out += [Variant(level=float(v)) for v in cfg.prune_levels]
    out += [Variant(clusters=int(k)) for k in cfg.clusters]
    out += [Variant(float(v), int(k)) for v in cfg.combined_levels for k in cfg.combined_clusters]
    seen, uniq = set(), []
    for v in out:
        if v not in seen:
            seen.add(v)
            uniq.append(v)
    return uniq


# ====================================================================================================================
# The methods
# ====================================================================================================================


def compressible(model: nn.Module, scope: str = "all") -> dict[str, tuple[nn.Module, str]]:
    """{qualified name: (owning module, attribute)} of the weight matrices to compress.

    A weight shared by two modules (tied embedding and decoder) is left out: one parametrisation
    cannot serve both owners. ``scope=cores`` keeps the recurrent cores' matrices only.
    """
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((f"{mod_name}.{attr}" if mod_name else attr, mod, attr))
    out = {}
    for entries in owners.values():
        name, mod, attr = entries[0]
        p = getattr(mod, attr)
        if len(entries) > 1 or p.dim() < 2 or "bias" in attr:
            continue
        if scope == "cores" and not name.startswith("cores."):
            continue
        out[name] = (mod, attr)
    return out


def magnitude_mask(w: Tensor, level: float) -> Tensor:
    """A {0, 1} mask of w's shape that zeroes exactly round(level * n) smallest-magnitude entries."""
    n = w.numel()
    drop = int(round(level * n))
    mask = torch.ones(n, dtype=w.dtype, device=w.device)
    if drop > 0:
        order = torch.sort(w.detach().abs().flatten(), stable=True).indices  # ties: the earlier position first
        mask[order[:drop]] = 0
    return mask.reshape(w.shape)


def kmeans_1d(values: Tensor, k: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on scalars with linear initialisation over [min, max] (Han et al. 2016, sec. 3.1).

    Returns (centroids [k'] ascending, assignment [n] in 0..k'-1) with k' = min(k, distinct values),
    every cluster non-empty (an emptied cluster is re-seeded at the worst-fitted value).
    """
    v = values.detach().flatten().double()
    k = min(int(k), int(torch.unique(v).numel()))
    c = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64, device=v.device)
    assign = torch.zeros_like(v, dtype=torch.long)
    for _ in range(max(iters, 1)):
        c = c.sort().values
        assign = torch.bucketize(v, (c[1:] + c[:-1]) / 2)  # nearest centroid: [n] in 0..k-1
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, dtype=v.dtype, device=v.device).index_add_(0, assign, v)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed each empty cluster at the value farthest from its centroid
            err = (v - new[assign]).abs()
            for j in empty.tolist():
                i = int(err.argmax())
                new[j] = v[i]
                err[i] = -1.0
        if torch.equal(new, c):
            break
        c = new
    c = c.sort().values
    assign = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros(k, dtype=v.dtype, device=v.device).index_add_(0, assign, v)
    c = sums / counts.clamp_min(1)
    return c.to(values.dtype), assign


class Pruned(nn.Module):
    """Parametrisation w -> w * mask: pruned weights stay zero and get no gradient."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


class _CodebookGather(torch.autograd.Function):
    """weight = centroids[assign] * mask; backward sums each cluster's (masked) weight gradients into
    its centroid with one index_add (autograd's own backward of indexing sorts the 2M indices of an
    embedding every step: ~30x slower on a CPU)."""

    @staticmethod
    def forward(ctx: Any, centroids: Tensor, assign: Tensor, mask: Tensor) -> Tensor:
        ctx.save_for_backward(assign, mask)
        ctx.k = centroids.numel()
        return centroids[assign] * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None]:
        assign, mask = ctx.saved_tensors
        g = grad.new_zeros(ctx.k).index_add_(0, assign.flatten(), (grad * mask).flatten())
        return g, None, None


class Shared(nn.Module):
    """Parametrisation centroids [k] -> weight: each weight is its cluster's centroid (zero where pruned).

    Its ``original`` is the codebook, so each centroid's gradient is the sum of its weights'
    gradients, and the optimiser updates the centroids (Han et al. 2016, Fig. 3).
    """

    def __init__(self, assign: Tensor, mask: Tensor, k: int) -> None:
        super().__init__()
        self.k = int(k)
        self.register_buffer("assign", assign)  # [same shape as the weight], cluster of every weight
        self.register_buffer("mask", mask)

    def forward(self, centroids: Tensor) -> Tensor:
        return _CodebookGather.apply(centroids, self.assign, self.mask)

    def right_inverse(self, w: Tensor) -> Tensor:
        """The codebook: the mean of each cluster's surviving weights."""
        keep = self.mask.flatten() > 0
        idx = self.assign.flatten()[keep]
        vals = w.detach().flatten()[keep]
        sums = torch.zeros(self.k, dtype=w.dtype, device=w.device).index_add_(0, idx, vals)
        counts = torch.zeros(self.k, dtype=w.dtype, device=w.device).index_add_(0, idx, torch.ones_like(vals))
        return sums / counts.clamp_min(1)


@dataclass
class Applied:
    """What a variant did to one matrix (for the stored size and the checks)."""

    numel: int
    kept: int
    clusters: Optional[int]


def apply_variant(model: nn.Module, variant: Variant, scope: str = "all", kmeans_iters: int = 50) -> dict[str, Applied]:
    """Prunes and/or clusters every compressible matrix of ``model`` in place and registers the
    parametrisations that keep the structure during retraining. Returns what was done per matrix.
    Create the optimiser afterwards: the parameters it must see are the parametrisations' originals."""
    done: dict[str, Applied] = {}
    for name, (mod, attr) in compressible(model, scope).items():
        w = getattr(mod, attr)
        n = w.numel()  # before registering: the parametrisation may re-shape w in place into its codebook
        mask = magnitude_mask(w, variant.level) if variant.level > 0 else torch.ones_like(w)
        k = None
        if variant.clusters is not None:
            keep = mask.flatten() > 0
            centroids, sub = kmeans_1d(w.detach().flatten()[keep], variant.clusters, kmeans_iters)
            k = int(centroids.numel())
            assign = torch.zeros(w.numel(), dtype=torch.long, device=w.device)
            assign[keep] = sub.to(w.device)
            with torch.no_grad():
                w.copy_((centroids.to(w.device)[assign].reshape(w.shape)) * mask)
            parametrize.register_parametrization(mod, attr, Shared(assign.reshape(w.shape), mask, k))
        elif variant.level > 0:
            with torch.no_grad():
                w.mul_(mask)
            parametrize.register_parametrization(mod, attr, Pruned(mask))
        done[name] = Applied(n, int(mask.sum().item()), k)
    return done


def codebooks(model: nn.Module) -> list[Tensor]:
    """The centroid parameters of every shared matrix (the originals of the Shared parametrisations)."""
    out = []
    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            for plist in mod.parametrizations.values():
                if any(isinstance(p, Shared) for p in plist):
                    out.append(plist.original)
    return out


class ScaledSGD(torch.optim.SGD):
    """SGD whose parameter groups may carry an ``lr_scale``: the LM loop sets one lr for every group
    each step (``enas_rnn.train``), and a group then steps with lr x lr_scale (the codebooks)."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        saved = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, saved):
                g["lr"] = lr


def retrain_optimizer(model: nn.Module, lr: float, weight_decay: float, codebook_lr_scale: float) -> ScaledSGD:
    """SGD over the model's parameters, the codebooks in their own group at ``lr x codebook_lr_scale``."""
    books = {id(p) for p in codebooks(model)}
    rest = [p for p in model.parameters() if id(p) not in books]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if books:
        groups.append({"params": [p for p in model.parameters() if id(p) in books], "lr_scale": codebook_lr_scale})
    return ScaledSGD(groups, lr=lr, weight_decay=weight_decay)


def materialize(model: nn.Module) -> nn.Module:
    """Removes every parametrisation, leaving plain dense weights (zeros and shared values included)."""
    for mod in list(model.modules()):
        if parametrize.is_parametrized(mod):
            for attr in list(mod.parametrizations.keys()):
                parametrize.remove_parametrizations(mod, attr, leave_parametrized=True)
    return model


# ====================================================================================================================
# Measuring
# ====================================================================================================================


def matrix_bits(w: Tensor, clusters: Optional[int], index_bits: int) -> int:
    """Bits to store one matrix: the smaller of the dense and the sparse layout, plus the codebook."""
    flat = w.detach().flatten()
    n = flat.numel()
    value_bits = 32 if clusters is None else max(1, math.ceil(math.log2(clusters)))
    codebook = 0 if clusters is None else 32 * clusters
    dense = n * value_bits
    pos = (flat != 0).nonzero().flatten()
    if pos.numel() == n:
        return dense + codebook
    # Relative indices: the gap before each nonzero (from position -1); a gap larger than the
    # largest codable difference needs ceil(gap / span) - 1 filler entries (Han et al. 2016, Fig. 2).
    span = 2 ** index_bits
    gaps = torch.diff(pos, prepend=torch.tensor([-1], device=pos.device))
    entries = int(pos.numel()) + int(((gaps + span - 1) // span - 1).clamp_min(0).sum())
    sparse = entries * (value_bits + index_bits)
    return min(dense, sparse) + codebook


def stored_bits(model: nn.Module, clusters: dict[str, Optional[int]], index_bits: int = 5) -> int:
    """Stored size in bits of a materialised model: ``clusters`` names the compressed matrices (None:
    pruned only, or untouched); every other parameter (biases, uncompressed matrices) counts 32 bits."""
    total = 0
    for name, p in model.named_parameters():  # tied weights are listed (and counted) once
        total += matrix_bits(p, clusters.get(name), index_bits) if name in clusters else 32 * p.numel()
    return total


def sparsity(model: nn.Module, names: list[str]) -> float:
    """The share of exact zeros over the named parameters."""
    params = dict(model.named_parameters())
    n = sum(params[k].numel() for k in names)
    zeros = sum(int((params[k] == 0).sum()) for k in names)
    return zeros / n if n else 0.0


def cluster_counts(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Distinct nonzero values per named parameter (the cluster count of a shared matrix)."""
    params = dict(model.named_parameters())
    return {k: int(torch.unique(params[k][params[k] != 0]).numel()) for k in names}
