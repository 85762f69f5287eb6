"""How fast can a cell's state grow? Classifying a recurrence from upper bounds on its update.

A space's boundedness analysis (``LSTMSpace.analyse``) bounds every value of one step by a
polynomial in the magnitudes of the previous state, worst case over the weights, and hands the
bounds of the new state to :func:`classify`::

    |s_i(t)| <= P_i(|s_1(t-1)|, ..., |s_n(t-1)|),   P_i with coefficients in [0, inf]

|.| is the largest magnitude of a vector's elements (the sup norm); a coefficient ``inf`` stands for
"some finite number the weights can make as large as they like" (a W·xh map, a bias, a product with
a bounded value of unknown size). The classes, worst case over weights and starting states:

* ``bounded``: no state grows with t (``degree`` 0);
* ``linear``: grows by at most a bounded amount per step (degree 1), as nn.LSTM's c_t = f*c + i*g;
* ``unbounded``: not proven to grow at most linearly - geometric growth or faster (a cycle of the
  dependence graph gains more than 1 per step, or multiplies states), or a polynomial of degree
  >= 2 (a linearly growing value accumulated by a second one).

Method (exact for the bounds given, so sound whenever they are): the state variables' dependence
graph (s_j -> s_i when P_i has a monomial in s_j) is cut into strongly connected components and
visited in topological order. A component with a cycle whose polynomials have a monomial of total
degree >= 2 in the component's variables is superlinear (unbounded); otherwise its linear part is
a non-negative matrix A (an entry is ``inf`` when the weights scale it, or when the monomial also
carries another variable), and its spectral radius rho decides: rho > 1 (``inf`` included) grows
geometrically; rho = 1 adds one to the degree of what drives it (x' <= x + k is linear; a
component driven by nothing stays below its start); rho < 1 passes its inputs' degree on. The
degree a component receives is the largest, over the monomials without its own variables, of
sum(exponent * degree of the variable); a constant term has degree 0. Exponents are kept up to
2 (meaning "2 or more"): enough to tell degree 0, 1 and more apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GROWTH_CLASSES", "Poly", "Growth", "padd", "pmul", "pconst", "pvar", "classify", "worst"]

#: Growth classes, from best to worst.
GROWTH_CLASSES: tuple[str, ...] = ("bounded", "linear", "unbounded")
#: An upper bound: monomial (exponent per state variable, capped at 2) -> coefficient in (0, inf].
#: The empty polynomial is the bound 0 (the value is exactly zero).
Poly = dict[tuple[int, ...], float]
_CAP = 2
_TOL = 1e-9


def pconst(k: float, n: int) -> Poly:
    """The constant bound k (k > 0; 0 gives the zero polynomial) over n variables."""
    return {(0,) * n: float(k)} if k > 0 else {}


def pvar(i: int, coef: float, n: int) -> Poly:
    """coef * |s_i|."""
    return {tuple(1 if j == i else 0 for j in range(n)): float(coef)} if coef > 0 else {}


def padd(p: Poly, q: Poly) -> Poly:
    """Bound of a sum: |a + b| <= P + Q."""
    out = dict(p)
    for m, c in q.items():
        out[m] = out.get(m, 0.0) + c
    return out


def pmul(p: Poly, q: Poly) -> Poly:
    """Bound of an elementwise product: |a * b| <= P * Q (exponents capped, inf * finite = inf)."""
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = tuple(min(_CAP, a + b) for a, b in zip(m1, m2))
            out[m] = out.get(m, 0.0) + c1 * c2
    return out


@dataclass(frozen=True)
class Growth:
    """The class of every state variable, and in words why the worst one is not bounded."""

    classes: tuple[str, ...]  # per variable, in the order given to classify
    reasons: tuple[str, ...]  # per variable: '' when bounded


def worst(classes: Sequence[str]) -> str:
    """The worse of several growth classes."""
    return max(classes, key=GROWTH_CLASSES.index) if classes else "bounded"


def _radius(a: np.ndarray) -> float:
    if not a.size:
        return 0.0
    if np.isinf(a).any():
        return math.inf  # every entry of an SCC's matrix lies on a cycle of it
    return float(max(abs(np.linalg.eigvals(a))))


def _sccs(n: int, deps: list[set[int]]) -> list[list[int]]:
    """Strongly connected components in topological order (a component after everything it reads)."""
    reach = [set(d) for d in deps]  # reach[i]: variables i depends on, transitively
    changed = True
    while changed:
        changed = False
        for i in range(n):
            more = set().union(*(reach[j] for j in reach[i])) - reach[i] if reach[i] else set()
            if more:
                reach[i] |= more
                changed = True
    comps: list[list[int]] = []
    seen: set[int] = set()
    for i in range(n):
        if i not in seen:
            comp = [j for j in range(n) if j == i or (j in reach[i] and i in reach[j])]
            seen |= set(comp)
            comps.append(comp)
    # Topological: a component that depends on another comes after it (fewer dependencies first).
    comps.sort(key=lambda c: len(reach[c[0]] - set(c)))
    return comps


def classify(bounds: Sequence[Poly], names: Sequence[str]) -> Growth:
    """Growth class of each state variable s_i(t) <= bounds[i](s(t-1)); ``names`` label the reasons."""
    n = len(bounds)
    deps = [{j for m in p for j in range(n) if m[j] > 0} for p in bounds]
    degree: dict[int, float] = {}  # 0, 1, 2 (= 2 or more), inf (geometric or faster)
    why: dict[int, str] = {}
    for comp in _sccs(n, deps):
        inside = set(comp)
        cyclic = len(comp) > 1 or comp[0] in deps[comp[0]]
        a = np.zeros((len(comp), len(comp)))
        drive, blame, reason = -1.0, "", ""  # degree of the input (-1: none)
        for r, i in enumerate(comp):
            for m, coef in bounds[i].items():
                own = sum(m[j] for j in inside)
                if own >= 2:
                    reason = (f"{names[i]} grows with a product of {'its own past' if len(comp) == 1 else 'the states'}"
                              f" {', '.join(names[j] for j in comp)}: faster than geometrically")
                    continue
                outside = [j for j in range(n) if m[j] > 0 and j not in inside]
                if own == 1:
                    col = comp.index(next(j for j in inside if m[j] > 0))
                    # A product with another value of unknown size: a coefficient the weights can make large.
                    a[r, col] += math.inf if outside else coef
                    continue
                d = sum(m[j] * degree[j] for j in outside)  # degree of a constant term: 0
                if d > drive:
                    drive = d
                    blame = f" {names[max(outside, key=lambda j: m[j] * degree[j])]}" if outside and d > 0 else ""
        if cyclic and not reason:
            rho = _radius(a)
            who = ", ".join(names[i] for i in comp)
            if rho > 1 + _TOL:
                reason = (f"{who} can be scaled by any factor per step (an identity/relu W·xh path or a product "
                          "with another value feeds it back)" if math.isinf(rho) else
                          f"{who} can gain a factor of up to {rho:.3g} per step (sums of paths that carry it)")
            elif rho > 1 - _TOL:  # rho = 1: adds one degree to what drives it
                d = 0.0 if drive < 0 else drive + 1
                _set(comp, d, degree, why, names, blame, carried=True)
                continue
        if reason:
            for i in comp:
                degree[i], why[i] = math.inf, reason
            continue
        _set(comp, max(drive, 0.0), degree, why, names, blame, carried=False)
    classes, reasons = [], []
    for i in range(n):
        d = degree[i]
        classes.append("bounded" if d == 0 else "linear" if d == 1 else "unbounded")
        reasons.append(why.get(i, ""))
    return Growth(tuple(classes), tuple(reasons))


def _set(comp: list[int], d: float, degree: dict[int, float], why: dict[int, str], names: Sequence[str],
         blame: str, carried: bool) -> None:
    for i in comp:
        degree[i] = d if math.isinf(d) else min(d, 2.0)
        if math.isinf(d):
            why[i] = f"{names[i]} reads the unbounded{blame}"
        elif d == 1:
            why[i] = (f"{names[i]} carries its past and adds a bounded amount per step: it grows at most linearly"
                      if carried else f"{names[i]} reads the linearly growing{blame}: it grows at most linearly")
        elif d >= 2:
            why[i] = (f"{names[i]} accumulates the linearly growing{blame} step after step: polynomial growth"
                      if carried else f"{names[i]} multiplies linearly growing values: polynomial growth")
