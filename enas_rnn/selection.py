"""The pipeline's choice among a search's cells: successive halving on real training, with its fidelity measured.

Shared-weight rankings of an ENAS-like supernet are close to noise (Yu et al. 2020, "Evaluating the
search phase of NAS"), while a short standalone training ranks cells' final perplexity well (NAS-Bench-NLP:
Kendall tau 0.59 after one epoch). So the selection spends its budget on many candidates trained a little,
and cuts early:

* ``strategy=halving`` (default; successive halving, Jamieson & Talwalkar 2016, the inner loop of
  Hyperband, Li et al. 2018): ``candidates`` cells - the derive ranking's best by supernet perplexity,
  topped up with uniform valid cells when derive has fewer - are trained for ``min_steps``; the best
  1/``eta`` by validation perplexity survive and *continue* from their checkpoints (the step count goes
  on, the optimiser state is kept) to ``eta`` times the steps, until one cell remains, which is trained
  to the last rung's budget. Rung budgets: min_steps * eta^k. 9 candidates, eta 3, 50 steps:
  9 x 50, then 3 to 150 (+100 each), then 1 to 450 (+300): 450 + 300 + 300 = 1,050 training steps.
* ``strategy=topk``: the derive ranking's best ``k`` cells retrained from scratch for ``max_steps``
  (the earlier behaviour; 3 x 400 = 1,200 steps).

A candidate's training run IS the comparison's run of that cell at the configured size and the first
comparison seed, paused at each rung: the winner's comparison run continues from the last rung instead
of starting over, so the last rung costs nothing extra. ``prescreen=mrs`` drops candidates whose MRS error
with N(0, 1) weights sits at its cap (cells that blow up; see the README's MRS study) before any step and
replaces them from the pool; ``references`` (e.g. ``[lstm]``) run through every rung beside the candidates
(never eliminated, never the winner); ``audit=N`` trains the N best-by-supernet candidates to the last
rung whatever their fate, so the true tau of every signal is measured.

``fidelity``: Kendall tau of each earlier signal against the validation perplexity at the next budget,
over the cells that have both - the supernet against the first rung over all candidates, rung k against
rung k+1 over its survivors (topk: the supernet against the retrained perplexity); ``tau: null`` with the
reason when fewer than 3 cells have both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.comparison import RunSpec, cell_label, make_run_config, run_name, submit_train, train_job
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.genotype import Genotype, get_named
from enas_rnn.launch import Executor
from enas_rnn.model import CoreKind
from enas_rnn.rules import INT0, INT1, OPT_INT1, fail, one_of, rule
from enas_rnn.runs import write_json
from enas_rnn.scores.lm import lm_error_hi, mrs_score_genotype
from enas_rnn.scores.mrs import MRSConfig
from enas_rnn.spaces import SpaceConfig, space_from_config
from enas_rnn.stats import fmt_num, kendall, to_markdown
from enas_rnn.supernet import evaluate_cells, load_supernet

log = logging.getLogger(__name__)

__all__ = ["SelectConfig", "SelectionError", "rung_plan", "select_cells", "fidelity", "STRATEGIES", "PRESCREENS"]

STRATEGIES = ("halving", "topk")
PRESCREENS = ("none", "mrs")
#: MRS flags a cell when its mean error with N(0, 1) weights is at least this share of the error's cap
#: (10 ln V): such a cell's random outputs are saturated, which is what blowing up under training looked
#: like in the README's lstm-space study (AUC 0.82).
MRS_FLAG_SHARE = 0.99


class SelectionError(UserError):
    """No cell can be handed over (every candidate diverged); the message says what to change."""


@dataclass
class SelectConfig:
    """The pipeline's selection stage (see the module docstring)."""

    strategy: str = rule("halving", one_of(STRATEGIES))  # halving | topk
    # halving: cells started; the first rung's steps; the keep ratio (the best 1/eta of a rung go on)
    # Defaults (experiment=small): 9 x 50 + 3 x 100 + 1 x 300 = 1,050 steps, of which the last 300 are the
    # winner's comparison run (topk: 3 x 400 = 1,200 steps, none reused).
    candidates: int = rule(9, INT1)
    min_steps: int = rule(50, INT1)
    eta: int = rule(3, (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2, "an integer >= 2"))
    prescreen: str = rule("none", one_of(PRESCREENS))  # mrs: drop candidates MRS flags, replace them from the pool
    references: list[str] = field(default_factory=list)  # named cells raced beside the candidates, e.g. [lstm]
    audit: int = rule(0, INT0)  # candidates trained to the last rung whatever their fate (true tau of every signal)
    seed: Optional[int] = None  # training seed of the candidates' runs; None: the first comparison seed
    # topk: the derive ranking's best k, retrained from scratch for max_steps (eval_batches validation windows)
    k: int = rule(3, INT1)
    max_steps: int = rule(400, INT1)
    eval_batches: Optional[int] = rule(None, OPT_INT1)


def rung_plan(candidates: int, min_steps: int, eta: int, budget: int) -> list[tuple[int, int]]:
    """(cells, steps) of every rung: candidates, then floor(n / eta) (at least 1) until one cell is left, each
    rung eta times the steps of the one before, capped at ``budget`` (the comparison's training budget)."""
    if min_steps > budget:
        raise fail("select.min_steps", min_steps, f"an integer <= train.max_steps={budget} (the selection's rungs "
                   "are the first steps of the comparison's training runs)")
    rungs, n, steps = [], candidates, min_steps
    while True:
        rungs.append((n, min(steps, budget)))
        if n == 1 or steps >= budget:
            break
        n, steps = max(1, n // eta), steps * eta
    return rungs


def fidelity(signal: Sequence[Optional[float]], later: Sequence[Optional[float]], against: str,
             higher_is_better: bool = False) -> dict[str, Any]:
    """Kendall tau of an earlier signal against the validation perplexity at the next budget (lower is better).

    A signal where higher means better (an MRS score) is negated first, so a useful signal has tau > 0
    in every entry. Cells without a finite value on both sides are left out; fewer than 3: tau null."""
    pairs = [(s, v) for s, v in zip(signal, later) if s is not None and v is not None
             and math.isfinite(s) and math.isfinite(v)]
    out: dict[str, Any] = {"against": against, "n": len(pairs)}
    if len(pairs) < 3:
        return {**out, "tau": None, "p": None, "reason": f"n = {len(pairs)} < 3 cells with both values"}
    xs = [-s if higher_is_better else s for s, _ in pairs]
    tau, p = kendall(xs, [v for _, v in pairs])
    if tau is None or (isinstance(tau, float) and math.isnan(tau)):
        return {**out, "tau": None, "p": None, "reason": "a side is constant"}
    return {**out, "tau": float(tau), "p": float(p)}


@dataclass
class Candidate:
    """A cell in the selection and everything measured about it."""

    genotype: Genotype
    origin: str  # derive | uniform | reference
    supernet_ppl: Optional[float] = None
    mrs_mean: Optional[float] = None
    mrs_score: Optional[float] = None
    flagged: bool = False
    rungs: dict[int, Optional[float]] = field(default_factory=dict)  # steps -> valid ppl at that budget
    fate: str = ""  # winner | eliminated at rung k | diverged at rung k | reference | screened out

    @property
    def hash(self) -> str:
        return self.genotype.hash()

    @property
    def label(self) -> str:
        return cell_label(self.genotype)

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "label": self.label, "origin": self.origin, "supernet_ppl": self.supernet_ppl,
                "mrs_mean": self.mrs_mean, "mrs_score": self.mrs_score, "flagged": self.flagged,
                "valid_ppl": {str(k): v for k, v in sorted(self.rungs.items())}, "fate": self.fate,
                "genotype": self.genotype.to_dict()}


# --------------------------------------------------------------------------------------------- the pool
def candidate_pool(ranking: Sequence[dict[str, Any]], search_folder: Path, n: int, accept: Callable[[Genotype], bool],
                   seed: int) -> list[Candidate]:
    """The derive ranking's distinct cells (best supernet perplexity first), topped up with uniform valid
    cells of the search's space when it has fewer than ``n``; the top-ups get their supernet perplexity on
    the same validation windows as derive's."""
    pool: list[Candidate] = []
    seen: set[str] = set()
    for r in ranking:
        g = Genotype.from_dict(r["genotype"])
        if g.hash() in seen or not accept(g) or r.get("ppl") is None or not math.isfinite(r["ppl"]):
            continue
        seen.add(g.hash())
        pool.append(Candidate(g, "derive", float(r["ppl"])))
    if len(pool) >= n:
        return pool
    model, cfg, splits = load_supernet(search_folder)
    from_space = _space_of(cfg)
    gen = torch.Generator().manual_seed(seed)
    extra: list[Genotype] = []
    for _ in range(1000 * n):
        if len(pool) + len(extra) >= n:
            break
        g = from_space.sample(gen)
        if g.hash() not in seen and accept(g):
            seen.add(g.hash())
            extra.append(g)
    windows = int(cfg.search.get("derive_rerank_batches") or cfg.search.derive_batches)
    for g, ppl in zip(extra, evaluate_cells(model, extra, splits.valid, int(cfg.data.bptt), windows, 0)):
        pool.append(Candidate(g, "uniform", ppl if math.isfinite(ppl) else None))
    return pool


def _space_of(cfg: Any) -> Any:
    return space_from_config(OmegaConf.merge(OmegaConf.structured(SpaceConfig), cfg.space))


def mrs_prescreen(pool: list[Candidate], n: int, valid: torch.Tensor, vocab_size: int, model_cfg: Any,
                  bptt: int) -> list[Candidate]:
    """Scores pool cells with MRS (N(0, 1) weights, cross-entropy, 30 draws; the supernet's sizes) in pool
    order until ``n`` unflagged cells are found; flagged cells are screened out. If the pool runs out, the
    flagged cells fill the rest in pool order (said in the log)."""
    cfg = MRSConfig(samples=30, dist="normal", error="ce", threshold_mode="quantile", quantile=0.1)
    cap = lm_error_hi("ce", vocab_size)
    data = valid[: bptt + 1]
    kept: list[Candidate] = []
    flagged: list[Candidate] = []
    for c in pool:
        if len(kept) >= n:
            break
        res = mrs_score_genotype(c.genotype, data, vocab_size, cfg, emb_size=int(model_cfg.emb_size),
                                 hidden_size=int(model_cfg.hidden_size), tie_weights=bool(model_cfg.tie_weights),
                                 state_clip=model_cfg.state_clip, init_range=model_cfg.init_range)
        c.mrs_mean, c.mrs_score = float(res.mean), float(res.score)
        c.flagged = res.mean >= MRS_FLAG_SHARE * cap
        (flagged if c.flagged else kept).append(c)
    for c in flagged:
        c.fate = "screened out by MRS"
    if len(kept) < n:
        log.warning("select: MRS flagged %d of %d scored cells; the pool has only %d unflagged, so %d flagged cells "
                    "fill the candidates", len(flagged), len(kept) + len(flagged), len(kept), n - len(kept))
        fill = flagged[: n - len(kept)]
        for c in fill:
            c.fate = ""
        kept += fill
    return kept


# --------------------------------------------------------------------------------------------- the race
def _run_spec(cand: Candidate, compare_cfg: Any, seed: int) -> RunSpec:
    label = cand.label
    cfg = make_run_config(compare_cfg, core=CoreKind.cell, seed=seed, hidden_size=int(compare_cfg.model.hidden_size),
                          label=label)
    return RunSpec(run_name(label, "same", seed), label, "same", seed, cfg, cand.genotype)


def _train_rung(cells: Sequence[Candidate], steps: int, compare_cfg: Any, seed: int, store: Path,
                executor: Executor) -> None:
    """Trains every cell to ``steps`` (continuing its run) and records its validation perplexity there."""
    budget = int(compare_cfg.train.max_steps)
    jobs = [train_job(_run_spec(c, compare_cfg, seed), store / run_name(c.label, "same", seed),
                      None if steps >= budget else steps) for c in cells]
    for c, res in zip(cells, executor.wait([submit_train(executor, j) for j in jobs])):
        m = res["metrics"]
        ppl = m.get("valid_ppl") if res["status"] != "diverged" else None
        if res["status"] != "diverged" and steps >= budget:
            last = (m.get("history") or [{}])[-1]
            ppl = last.get("valid_ppl", m.get("valid_ppl"))
        c.rungs[steps] = None if ppl is None or not math.isfinite(ppl) else float(ppl)


def select_cells(cfg: Any, compare_cfg: Any, ranking: Sequence[dict[str, Any]], search_folder: Path, space: Any,
                 accept: Callable[[Genotype], bool], store: Path, folder: Path, executor: Executor,
                 vocab_size: int) -> dict[str, Any]:
    """Runs the selection (``cfg`` is the pipeline config's ``select``); writes ``folder``/selection.json and
    selection.md; returns the record with the winner's genotype under ``winner``."""
    s = cfg
    if s.strategy == "topk":
        return _select_topk(s, compare_cfg, ranking, store, folder, executor)
    seed = int(s.seed) if s.seed is not None else int(compare_cfg.seeds[0])
    budget = int(compare_cfg.train.max_steps)
    plan = rung_plan(int(s.candidates), int(s.min_steps), int(s.eta), budget)
    need = int(s.candidates) + int(s.audit)
    pool = candidate_pool(ranking, search_folder, need if s.prescreen == "none" else 3 * need, accept, seed)
    screened: list[Candidate] = []
    if s.prescreen == "mrs":
        _, scfg, splits = load_supernet(search_folder)
        kept = mrs_prescreen(pool, need, splits.valid, vocab_size, scfg.model, int(scfg.data.bptt))
        screened = [c for c in pool if c.fate.startswith("screened")]
        pool = kept
    cands, audit = pool[: int(s.candidates)], pool[int(s.candidates): need]
    refs = [Candidate(_reference(name, space), "reference") for name in s.references]
    log.info("select: successive halving of %d cells (eta %d): rungs %s; %d reference(s), %d audited", len(cands),
             int(s.eta), ", ".join(f"{n} x {st}" for n, st in plan), len(refs), len(audit))
    alive = list(cands)
    rungs: list[dict[str, Any]] = []
    for k, (n, steps) in enumerate(plan):
        _train_rung(alive + refs, steps, compare_cfg, seed, store, executor)
        finite = [c for c in alive if c.rungs.get(steps) is not None]
        for c in alive:
            if c.rungs.get(steps) is None:
                c.fate = f"diverged at rung {k} ({steps} steps)"
        if not finite:
            raise SelectionError(f"every candidate diverged at rung {k} ({steps} steps; see {store}): lower train.lr, "
                                 "keep model.state_clip, or search again")
        keep_n = plan[k + 1][0] if k + 1 < len(plan) else 1
        ranked = sorted(finite, key=lambda c: (c.rungs[steps], c.hash))
        survivors = ranked[:keep_n]
        for c in ranked[keep_n:]:
            c.fate = f"eliminated at rung {k} ({steps} steps)"
        best_ref = min((r.rungs.get(steps) for r in refs if r.rungs.get(steps) is not None), default=None)
        rungs.append({"rung": k, "steps": steps, "cells": [
            {"hash": c.hash, "label": c.label, "valid_ppl": c.rungs.get(steps), "kept": c in survivors,
             "diverged": c.rungs.get(steps) is None} for c in alive],
            "references": [{"label": r.label, "valid_ppl": r.rungs.get(steps)} for r in refs],
            "searched_outran_references": None if best_ref is None else ranked[0].rungs[steps] < best_ref})
        write_json(folder / "rungs.json", rungs)  # the record of every finished rung
        log.info("select: rung %d (%d steps): %s; kept %s", k, steps,
                 ", ".join(f"{c.label} {fmt_num(c.rungs.get(steps), '.1f', 'diverged')}" for c in ranked),
                 ", ".join(c.label for c in survivors))
        alive = survivors
    winner = alive[0]
    winner.fate = "winner"
    for r in refs:
        r.fate = "reference"
    last_steps = plan[-1][1]
    for c in audit:  # trained through every rung whatever their fate
        for _, steps in plan:
            _train_rung([c], steps, compare_cfg, seed, store, executor)
        c.fate = "audited"
    fid = _fidelity(cands, plan)
    result = {
        "strategy": "halving", "eta": int(s.eta), "min_steps": int(s.min_steps), "seed": seed,
        "plan": [{"cells": n, "steps": st} for n, st in plan],
        "training_steps": _steps_of(plan, len(refs)), "rungs": rungs, "fidelity": fid,
        "candidates": [c.to_dict() for c in cands], "screened_out": [c.to_dict() for c in screened],
        "references": [c.to_dict() for c in refs], "audit": [c.to_dict() for c in audit],
        "fidelity_audit": _audit_fidelity(cands, audit, plan) if audit else None,
        "winner": winner.hash, "winner_label": winner.label, "winner_genotype": winner.genotype.to_dict(),
        "winner_run": run_name(winner.label, "same", seed), "winner_steps": last_steps,
        "supernet_best_kept": winner.hash == cands[0].hash,
    }
    write_json(folder / "selection.json", result)
    write_text_atomic(folder / "selection.md", selection_markdown(result))
    return result


def _steps_of(plan: Sequence[tuple[int, int]], refs: int) -> dict[str, Any]:
    """Training steps the rungs cost (continuations count only their new steps)."""
    total, before = 0, 0
    for n, steps in plan:
        total += n * (steps - before)
        before = steps
    return {"candidates": total, "references": refs * plan[-1][1], "last_rung": plan[-1][0] * (plan[-1][1] -
            (plan[-2][1] if len(plan) > 1 else 0))}


def _fidelity(cands: Sequence[Candidate], plan: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """The earlier signals against the next budget (see the module docstring); references are left out."""
    first = plan[0][1]
    out = {"supernet": fidelity([c.supernet_ppl for c in cands], [c.rungs.get(first) for c in cands],
                                f"rung 0 ({first} steps)")}
    if any(c.mrs_score is not None for c in cands):
        out["mrs"] = fidelity([c.mrs_mean for c in cands], [c.rungs.get(first) for c in cands],
                              f"rung 0 ({first} steps)")
    for k in range(len(plan) - 1):
        a, b = plan[k][1], plan[k + 1][1]
        both = [c for c in cands if b in c.rungs]
        out[f"rung{k}"] = fidelity([c.rungs.get(a) for c in both], [c.rungs.get(b) for c in both],
                                   f"rung {k + 1} ({b} steps)")
    return out


def _audit_fidelity(cands: Sequence[Candidate], audit: Sequence[Candidate], plan: Sequence[tuple[int, int]]
                    ) -> dict[str, Any]:
    """Every signal against the last rung's perplexity over every cell trained that far (the true tau)."""
    last = plan[-1][1]
    cells = [c for c in list(cands) + list(audit) if last in c.rungs]
    out = {"supernet": fidelity([c.supernet_ppl for c in cells], [c.rungs[last] for c in cells], f"{last} steps")}
    if any(c.mrs_score is not None for c in cells):
        out["mrs"] = fidelity([c.mrs_mean for c in cells], [c.rungs[last] for c in cells], f"{last} steps")
    for k, (_, steps) in enumerate(plan[:-1]):
        out[f"rung{k}"] = fidelity([c.rungs.get(steps) for c in cells], [c.rungs[last] for c in cells], f"{last} steps")
    return out


def _reference(name: str, space: Any) -> Genotype:
    g = get_named(name)
    if g.space != space.name:
        valid = ", ".join(sorted(getattr(space, "named", {}) or {})) or "none"
        raise ConfigError(f"invalid config value select.references: {name} is a cell of the {g.space} space, but "
                          f"the search ran in the {space.name} space; valid references here: {valid}")
    return g


def _select_topk(s: Any, compare_cfg: Any, ranking: Sequence[dict[str, Any]], store: Path, folder: Path,
                 executor: Executor) -> dict[str, Any]:
    """The earlier selection: the derive ranking's best k retrained from scratch for ``max_steps``."""
    cands: list[Candidate] = []
    for r in ranking:
        g = Genotype.from_dict(r["genotype"])
        if g.hash() not in {c.hash for c in cands}:
            cands.append(Candidate(g, "derive", r.get("ppl")))
        if len(cands) == int(s.k):
            break
    seed = int(s.seed) if s.seed is not None else int(compare_cfg.seeds[0])
    short = OmegaConf.merge(compare_cfg, {"train": {"max_steps": int(s.max_steps), "eval_batches": s.eval_batches,
                                                    "eval_every": None}})
    jobs = [train_job(_run_spec(c, short, seed), folder / "runs" / c.hash) for c in cands]
    for c, res in zip(cands, executor.wait([submit_train(executor, j) for j in jobs])):
        ppl = res["metrics"].get("valid_ppl")
        c.rungs[int(s.max_steps)] = None if ppl is None or not math.isfinite(ppl) else float(ppl)
    finite = [c for c in cands if c.rungs[int(s.max_steps)] is not None]
    if not finite:
        raise SelectionError(f"every shortlisted cell diverged when retrained (see {folder / 'runs'}): lower train.lr "
                             "or model.state_clip, or run the search longer")
    winner = min(finite, key=lambda c: (c.rungs[int(s.max_steps)], c.hash))
    for c in cands:
        c.fate = "winner" if c is winner else ("diverged" if c.rungs[int(s.max_steps)] is None else "retrained")
    rungs = [{"rung": 0, "steps": int(s.max_steps), "cells": [
        {"hash": c.hash, "label": c.label, "valid_ppl": c.rungs[int(s.max_steps)], "kept": c is winner,
         "diverged": c.rungs[int(s.max_steps)] is None} for c in cands], "references": [],
        "searched_outran_references": None}]
    result = {
        "strategy": "topk", "k": int(s.k), "seed": seed, "plan": [{"cells": len(cands), "steps": int(s.max_steps)}],
        "training_steps": {"candidates": len(cands) * int(s.max_steps), "references": 0, "last_rung": 0},
        "rungs": rungs, "fidelity": {"supernet": fidelity([c.supernet_ppl for c in cands],
                                                          [c.rungs[int(s.max_steps)] for c in cands],
                                                          f"retrained ({int(s.max_steps)} steps)")},
        "candidates": [c.to_dict() for c in cands], "screened_out": [], "references": [], "audit": [],
        "fidelity_audit": None, "winner": winner.hash, "winner_label": winner.label,
        "winner_genotype": winner.genotype.to_dict(), "winner_run": None, "winner_steps": 0,
        "supernet_best_kept": winner is cands[0],
    }
    write_json(folder / "selection.json", result)
    write_text_atomic(folder / "selection.md", selection_markdown(result))
    return result


def selection_markdown(result: dict[str, Any]) -> str:
    """selection.md: the candidates rung by rung, the references, and the fidelity of every signal."""
    steps = [p["steps"] for p in result["plan"]]
    rows = []
    for c in result["candidates"] + result["references"] + result.get("audit", []):
        row = {"cell": c["label"], "origin": c["origin"], "supernet ppl": fmt_num(c["supernet_ppl"], ".1f", "–")}
        if result["screened_out"] or any(x.get("mrs_mean") is not None for x in result["candidates"]):
            row["MRS mean error"] = fmt_num(c["mrs_mean"], ".2f", "–")
        for st in steps:
            row[f"valid ppl @ {st}"] = fmt_num(c["valid_ppl"].get(str(st)), ".1f", "–")
        row["fate"] = "**winner**" if c["fate"] == "winner" else c["fate"]
        rows.append(row)
    fid = [{"signal": k, "against": v["against"], "n": v["n"], "tau": fmt_num(v["tau"], "+.2f", "–"),
            "p": fmt_num(v["p"], ".3g", "–"), "note": v.get("reason", "")} for k, v in result["fidelity"].items()]
    lines = [f"# Selection ({result['strategy']})", "",
             "Rungs: " + ", ".join(f"{p['cells']} x {p['steps']} steps" for p in result["plan"])
             + f"; {result['training_steps']['candidates']:,} training steps for the candidates.", "",
             to_markdown(rows, list(rows[0])).rstrip(), "",
             "## Ranking fidelity (Kendall tau against the next budget's validation perplexity; > 0: the signal "
             "ranks like the later training)", "", to_markdown(fid, list(fid[0])).rstrip(), ""]
    for r in result["rungs"]:
        if r.get("searched_outran_references") is not None:
            lines.append(f"- rung {r['rung']} ({r['steps']} steps): the best searched cell "
                         + ("outran" if r["searched_outran_references"] else "did **not** outrun")
                         + " the best reference")
    if result.get("fidelity_audit"):
        aud = [{"signal": k, "against": v["against"], "n": v["n"], "tau": fmt_num(v["tau"], "+.2f", "–"),
                "p": fmt_num(v["p"], ".3g", "–")} for k, v in result["fidelity_audit"].items()]
        lines += ["", "## Audit: every signal against the last rung (cells trained that far whatever their fate)", "",
                  to_markdown(aud, list(aud[0])).rstrip()]
    return "\n".join(lines) + "\n"
