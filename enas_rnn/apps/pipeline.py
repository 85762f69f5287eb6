"""`enas-pipeline`: the whole job in one folder - search, shortlist retraining, comparison, export.

Stages (each one's output is kept; a finished stage is never redone, an interrupted one resumes)::

    search/     enas-search run (supernet, controller, derive; top_genotypes.json is the shortlist)
    select/     the top ``select.k`` derived cells retrained from scratch for ``select.max_steps`` steps;
                the winner is the best retrained validation perplexity (shortlist.json, shortlist.md)
    compare/    enas-compare of the winner against nn.LSTM (same size and parameter-matched, seeds)
    export/     the winner's best compared run as a standalone module + safetensors
    summary.md  every stage's result, the winner's picture and formulas, and the verdict
    metrics.json the same numbers as strict JSON

Choosing among shared-weight front runners by short retraining is the remedy of DARTS (Liu et al.
2019, sec. 3.3: "we run ... from scratch ... and pick the best") and of random search with weight
sharing (Li & Talwalkar 2019) against the co-adaptation bias of supernet rankings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from enas_rnn.apps.compare import (
    BASELINE,
    RunSpec,
    run_compare,
    run_one,
    validate_compare,
)
from enas_rnn.apps.export import load_trained, resolve_run
from enas_rnn.apps.search import run_search
from enas_rnn.checkpoint import LAST, checkpoint_dir, write_text_atomic
from enas_rnn.conf import (
    CompareAppConfig,
    PipelineAppConfig,
    SearchAppConfig,
    TrainAppConfig,
    validate_search,
)
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.export import export_trained
from enas_rnn.genotype import Genotype
from enas_rnn.model import CoreKind
from enas_rnn.runs import check_resume_overrides, folder_lock, strict, write_json
from enas_rnn.search import describe
from enas_rnn.stats import fmt_num, to_markdown
from enas_rnn.viz import draw_genotype

log = logging.getLogger(__name__)

CONFIG_NAME = "pipeline_config.json"
STAGES = ("search", "select", "compare", "export")


class PipelineError(UserError):
    """A stage that cannot go on (e.g. every shortlisted cell diverged); the message says what to change."""


# --------------------------------------------------------------------------------------------- configs
def search_config(cfg: DictConfig) -> DictConfig:
    """The enas-search config of the pipeline's search stage."""
    return OmegaConf.merge(OmegaConf.structured(SearchAppConfig), {
        "data": cfg.data, "model": cfg.supernet, "train": cfg.shared_train, "space": cfg.space,
        "controller": cfg.controller, "search": cfg.search, "screen": cfg.screen, "seed": cfg.seed,
        "device": cfg.device, "experiment": cfg.get("experiment"),
    })


def retrain_config(cfg: DictConfig, cell: Path) -> DictConfig:
    """An enas-train config that retrains ``cell`` from scratch for the selection budget."""
    run = OmegaConf.merge(OmegaConf.structured(TrainAppConfig), {
        "data": cfg.data, "model": cfg.model, "train": cfg.train, "seed": cfg.seed, "device": cfg.device,
        "experiment": cfg.get("experiment"),
    })
    run.model.core = CoreKind.cell
    run.cell = str(cell)
    run.train.max_steps = int(cfg.select.max_steps)
    run.train.eval_batches = cfg.select.eval_batches
    run.train.eval_every = None
    return run


def compare_config(cfg: DictConfig, cell: Path) -> DictConfig:
    """The enas-compare config of the comparison stage (the winner against nn.LSTM)."""
    c = cfg.compare
    return OmegaConf.merge(OmegaConf.structured(CompareAppConfig), {
        "data": cfg.data, "model": cfg.model, "train": cfg.train, "cell": str(cell), "seeds": list(c.seeds),
        "sizings": list(c.sizings), "param_tolerance": c.param_tolerance, "alpha": c.alpha, "plot": True,
        "baseline_cache": c.baseline_cache, "baselines": list(c.baselines), "device": cfg.device,
        "experiment": cfg.get("experiment"),
    })


def validate_pipeline(cfg: DictConfig) -> None:
    """Every stage's values, checked before any work."""
    validate_search(search_config(cfg))
    validate_compare(compare_config(cfg, Path("winner.json")))
    s = cfg.select
    if s.k < 1:
        raise ConfigError(f"invalid config value select.k={s.k!r}: valid values are integers >= 1")
    if s.k > cfg.search.top_k:
        raise ConfigError(f"select.k={s.k} exceeds search.top_k={cfg.search.top_k} (the derived ranking kept): "
                          f"raise search.top_k or lower select.k")
    if s.max_steps < 1:
        raise ConfigError(f"invalid config value select.max_steps={s.max_steps!r}: valid values are integers >= 1")
    if s.eval_batches is not None and s.eval_batches < 1:
        raise ConfigError(f"invalid config value select.eval_batches={s.eval_batches!r}: valid values are integers >= 1 or null")


# --------------------------------------------------------------------------------------------- stages
def stage_search(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """The search stage: a finished search is read back, an interrupted one resumed."""
    if (folder / "metrics.json").is_file() and (folder / "top_genotypes.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    scfg = search_config(cfg)
    if (checkpoint_dir(folder) / LAST).is_file():
        scfg.resume = str(folder)
    return run_search(scfg, folder)


def stage_select(cfg: DictConfig, run: Path) -> dict[str, Any]:
    """Retrains the top ``select.k`` derived cells from scratch and picks the best validation perplexity."""
    folder = run / "select"
    out = folder / "shortlist.json"
    if out.is_file():
        return json.loads(out.read_text())
    top = json.loads((run / "search" / "top_genotypes.json").read_text())[: int(cfg.select.k)]
    rows = []
    for rank, entry in enumerate(top, 1):
        g = Genotype.from_dict(entry["genotype"])
        path = folder / "cells" / f"{g.hash()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, g.to_json() + "\n")
        spec = RunSpec(g.hash(), g.hash(), "same", int(cfg.seed), retrain_config(cfg, path.resolve()))
        log.info("select: retraining shortlisted cell %d/%d (%s, shared-weight ppl %.1f) for %d steps",
                 rank, len(top), g.hash(), entry["ppl"], cfg.select.max_steps)
        metrics, status = run_one(spec, folder / "runs" / spec.name)
        rows.append({"rank": rank, "hash": g.hash(), "shared_ppl": entry["ppl"], "valid_ppl": metrics["valid_ppl"],
                     "test_ppl": metrics.get("test_ppl"), "num_params": metrics.get("num_params"), "status": status,
                     "cell": str(path.relative_to(run)), "genotype": g.to_dict(), **describe(g)})
        log.info("select: %s retrained valid ppl %.2f", g.hash(), metrics["valid_ppl"])
    finite = [r for r in rows if r["valid_ppl"] is not None and math.isfinite(r["valid_ppl"])]
    if not finite:
        raise PipelineError(f"every shortlisted cell diverged when retrained (see {folder / 'runs'}): lower train.lr "
                            "or model.state_clip, or run the search longer")
    winner = min(finite, key=lambda r: r["valid_ppl"])
    for r in rows:
        r["chosen"] = r is winner
    result = {"winner": winner["hash"], "winner_cell": winner["cell"], "rows": rows,
              "budget_steps": int(cfg.select.max_steps),
              "shared_best_kept": rows[0] is winner}
    write_text_atomic(folder / "shortlist.md", _shortlist_markdown(result))
    write_json(out, result)
    return json.loads(out.read_text())


def stage_compare(cfg: DictConfig, run: Path, winner: Path) -> dict[str, Any]:
    """The winner against nn.LSTM (enas-compare reuses finished runs and resumes interrupted ones)."""
    folder = run / "compare"
    if (folder / "comparison.json").is_file():
        return json.loads((folder / "comparison.json").read_text())
    report = run_compare(compare_config(cfg, winner), folder)
    return strict(report)


def stage_export(cfg: DictConfig, run: Path, winner: Genotype) -> dict[str, Any]:
    """The winner's best compared run as a standalone module."""
    folder = run / "export"
    done = folder / "export.json"
    if done.is_file():
        return json.loads(done.read_text())
    ckpt, _ = resolve_run(run / "compare")
    trained = load_trained(ckpt)
    trained.provenance = [
        f"Cell: found by enas-pipeline in {run} ({cfg.search.strategy} search of the {cfg.space.name} space, seed "
        f"{cfg.seed}), chosen among {cfg.select.k} shortlisted cells by retraining; genotype hash {winner.hash()}.",
        f"Weights: the best-validation run of its comparison with nn.LSTM, checkpoint {ckpt}.",
    ]
    res = export_trained(trained, folder, f"cell_{winner.hash()}", bool(cfg.export.whole_model))
    result = {"module": str(res.module), "weights": str(res.weights), "max_error": res.max_error,
              "checkpoint": str(ckpt)}
    write_json(done, result)
    return result


# --------------------------------------------------------------------------------------------- the app
def _check_folder(cfg: DictConfig, run: Path) -> DictConfig:
    """The pipeline's config: a fresh one is recorded; a folder holding another pipeline is refused."""
    recorded = run / CONFIG_NAME
    mine = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    mine.pop("resume", None)
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        if cfg.get("resume"):
            return OmegaConf.merge(OmegaConf.structured(PipelineAppConfig), old)
        if old != mine:
            raise ConfigError(f"{run} holds another pipeline (different settings): continue it with resume={run}, "
                              "or start this one in a new folder (drop hydra.run.dir=)")
        return cfg
    if cfg.get("resume"):
        raise ConfigError(f"resume={run}: no pipeline there ({CONFIG_NAME} missing): drop resume= to start one")
    write_json(recorded, mine)
    return cfg


def run_pipeline(cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Runs (or continues) every stage in ``run_dir`` and writes summary.md / metrics.json."""
    run = Path(cfg.resume) if cfg.get("resume") else Path(run_dir)
    with folder_lock(run, "pipeline", create=not cfg.get("resume")):
        given = cfg
        cfg = _check_folder(cfg, run)
        if given.get("resume"):
            check_resume_overrides(overrides, given, cfg)
        validate_pipeline(cfg)
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        search = stage_search(cfg, run / "search")
        times["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        select = stage_select(cfg, run)
        times["select"] = time.perf_counter() - t0
        winner_path = run / select["winner_cell"]
        winner = Genotype.from_json(winner_path)
        t0 = time.perf_counter()
        compare = stage_compare(cfg, run, winner_path)
        times["compare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        export = stage_export(cfg, run, winner)
        times["export"] = time.perf_counter() - t0
        return write_summary(cfg, run, search, select, compare, export, winner, times)


# --------------------------------------------------------------------------------------------- summary
def _fmt(v: Any, fmt: str) -> str:
    return fmt_num(v, fmt, "–")


def _shortlist_markdown(result: dict[str, Any]) -> str:
    rows = [{"rank": r["rank"], "cell": r["hash"], "shared-weight ppl": _fmt(r["shared_ppl"], ".1f"),
             f"retrained valid ppl ({result['budget_steps']} steps)": _fmt(r["valid_ppl"], ".2f"),
             "memory": {True: "yes", False: "no", None: "n/a"}[r["has_memory"]],
             "distance to " + (r["reference"] or "reference"): _fmt(r["reference_distance"], "d")
             + ("" if r["distance_exact"] in (True, None) else " (≤)"),
             "chosen": "**winner**" if r["chosen"] else ""} for r in result["rows"]]
    return to_markdown(rows, list(rows[0]))


def verdict(compare: dict[str, Any]) -> dict[str, Any]:
    """The winner against nn.LSTM at matched parameters (or the same size when not matched)."""
    cell = compare["cell"]
    entries = {(s["model"], s["sizing"]): s for s in compare["summary"]}
    base = entries.get((BASELINE, "same"))
    mine = entries.get((cell, "matched")) or entries.get((cell, "same"))
    if base is None or mine is None or base.get("test_ppl_mean") is None or mine.get("test_ppl_mean") is None:
        return {"text": "no verdict: a run diverged or is missing", "ratio": None}
    b, c = base["test_ppl_mean"], mine["test_ppl_mean"]
    ratio = c / b - 1.0
    p = mine.get("p_value")
    sig = "" if p is None else f", Welch p = {p:.3g} over {len(mine['seeds'])} seeds"
    how = "beats" if ratio < 0 else "loses to"
    text = (f"the found cell ({mine['sizing']} size, {mine['num_params']:,} parameters) {how} nn.LSTM "
            f"({base['num_params']:,}): test ppl {c:.2f} vs {b:.2f} ({100 * ratio:+.1f} %{sig})")
    return {"text": text, "ratio": ratio, "cell_test_ppl": c, "lstm_test_ppl": b, "sizing": mine["sizing"], "p_value": p}


def write_summary(cfg: DictConfig, run: Path, search: dict, select: dict, compare: dict, export: dict,
                  winner: Genotype, times: dict[str, float]) -> dict[str, Any]:
    """summary.md (every stage, the picture, the verdict) and metrics.json."""
    draw_genotype(winner, run / "winner.png", title=f"winner {winner.hash()} ({cfg.space.name} space)")
    v = verdict(compare)
    info = describe(winner, bool(cfg.search.require_memory))
    lines = [
        f"# enas-pipeline: {cfg.search.strategy} search of the {cfg.space.name} space (seed {cfg.seed})",
        "",
        f"**Verdict:** {v['text']}.",
        "",
        f"Winner `{winner.hash()}`: output depends on the input: {'yes' if info['depends_on_input'] else 'NO'}; "
        f"working memory: {({True: 'yes', False: 'NO', None: 'n/a (no cell state in this space)'})[info['has_memory']]}; "
        f"edit distance to {info['reference']}: {_fmt(info['reference_distance'], 'd')}"
        + ("" if info["distance_exact"] in (True, None) else " (upper bound)") + ".",
        "",
        "![winner](winner.png)",
        "",
        "```",
        *winner.formula(),
        "```",
        "",
        "## 1. Search (`search/`)",
        "",
        f"- {search['controller_steps']} controller steps, {search['shared_steps']} shared steps, "
        f"{search['children_evaluated']} children evaluated on shared weights, {search['diverged_children']} diverged",
        f"- degenerate cells ({search.get('degenerate_handling')}): {search.get('degenerate_proposals')} of "
        f"{search.get('proposals')} proposals ({100 * (search.get('degenerate_share') or 0):.1f} %; last epoch "
        f"{_fmt(None if search.get('degenerate_share_last_epoch') is None else 100 * search['degenerate_share_last_epoch'], '.1f')} %), "
        f"{search.get('shared_degenerate_redrawn')} redrawn in the shared phase",
        f"- best derived cell on shared weights: `{search['best_hash']}`, ppl {search['best_ppl']:.1f}",
        "",
        f"## 2. Shortlist retrained from scratch (`select/`, {select['budget_steps']} steps each)",
        "",
        _shortlist_markdown(select).rstrip(),
        "",
        "The shared-weight best was " + ("kept" if select["shared_best_kept"] else "**overturned**") + " by retraining.",
        "",
        "## 3. Comparison with nn.LSTM (`compare/`)",
        "",
        (run / "compare" / "comparison.md").read_text().split("## Mean ± sd over seeds", 1)[-1].split("## Runs")[0].strip(),
        "",
        "## 4. Export (`export/`)",
        "",
        f"- `{Path(export['module']).name}` and `{Path(export['weights']).name}` (torch only), "
        f"max |exported − trained| = {export['max_error']:.2g}",
        "",
        "## Cost",
        "",
        "Wall time of this invocation per stage (0 for a stage finished earlier): "
        + ", ".join(f"{k} {t / 60:.1f} min" for k, t in times.items()) + ".",
        "",
    ]
    write_text_atomic(run / "summary.md", "\n".join(lines))
    metrics = {"verdict": v, "winner": winner.hash(), "winner_analysis": info, "search": search,
               "shortlist": [{k: r[k] for k in ("rank", "hash", "shared_ppl", "valid_ppl", "has_memory",
                                                "reference_distance", "chosen")} for r in select["rows"]],
               "compare_summary": compare["summary"], "export": export, "stage_seconds": times}
    write_json(run / "metrics.json", metrics)
    return metrics
