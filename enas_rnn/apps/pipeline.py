"""`enas-pipeline`: the whole job in one folder - search, selection, comparison, export.

Stages (each one's output is kept; a finished stage is never redone, an interrupted one resumes)::

    search/     the search (an enas-search run folder), or a copy of search_from=<finished search>
    runs/       every training run of the selection and the comparison, one folder each: a candidate's
                selection run is the first part of its comparison run (same size, first seed)
    select/     selection.json / selection.md / rungs.json: successive halving (or topk) with its fidelity
    compare/    the winner against nn.LSTM (same size and parameter-matched, seeds): comparison.{json,md}
    export/     the run the verdict is about as a standalone module + safetensors
    summary.md  every stage's result, the winner's picture and formulas, the fidelity, the verdict
    metrics.json the same numbers as strict JSON; fidelity.png (supernet vs first-rung perplexity)

The stages' independent trainings go through one executor (``launcher=serial|local|slurm``): the baseline
runs of the comparison depend only on the config and train while the search runs; a rung's candidates
train side by side. Choosing among shared-weight front runners by real training is the remedy of DARTS
(Liu et al. 2019, sec. 3.3) and of random search with weight sharing (Li & Talwalkar 2019) against the
co-adaptation bias of supernet rankings; successive halving spends that budget on more cells.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from enas_rnn.board import open_writer
from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.comparison import CellEntry, CompareConfig, cell_label, run_compare, submit_baselines, verdict
from enas_rnn.conf import PipelineAppConfig
from enas_rnn.errors import ConfigError
from enas_rnn.export import export_trained
from enas_rnn.genotype import Genotype
from enas_rnn.launch import Executor, Job, make_executor
from enas_rnn.rules import check_values
from enas_rnn.runfolder import Claim, RunFolder, identity_of, resumed_config
from enas_rnn.runs import vocab_size_of, write_json
from enas_rnn.search import describe
from enas_rnn.searchrun import SearchRunConfig, copy_search, search_job, search_outputs
from enas_rnn.selection import select_cells
from enas_rnn.spaces import space_from_config
from enas_rnn.stats import fmt_num, to_markdown
from enas_rnn.trained import load_trained, resolve_run
from enas_rnn.viz import draw_genotype

log = logging.getLogger(__name__)

APP = "enas-pipeline"
STAGES = ("search", "select", "compare", "export")
#: Keys a pipeline started from an existing search (search_from=) takes from that search's config.
SEARCH_KEYS = {"supernet": "model", "shared_train": "train", "space": "space", "controller": "controller",
               "search": "search", "screen": "screen", "seed": "seed"}


# --------------------------------------------------------------------------------------------- configs
def search_config(cfg: DictConfig) -> DictConfig:
    """The enas-search config of the pipeline's search stage."""
    return OmegaConf.merge(OmegaConf.structured(SearchRunConfig), {
        "data": cfg.data, "model": cfg.supernet, "train": cfg.shared_train, "space": cfg.space,
        "controller": cfg.controller, "search": cfg.search, "screen": cfg.screen, "seed": cfg.seed,
        "device": cfg.device, "experiment": cfg.get("experiment"),
    })


def compare_config(cfg: DictConfig) -> DictConfig:
    """The comparison stage's config (the winner against nn.LSTM)."""
    c = cfg.compare
    return OmegaConf.merge(OmegaConf.structured(CompareConfig), {
        "data": cfg.data, "model": cfg.model, "train": cfg.train, "seeds": list(c.seeds),
        "sizings": list(c.sizings), "param_tolerance": c.param_tolerance, "alpha": c.alpha, "plot": True,
        "baseline_cache": c.baseline_cache, "baselines": list(c.baselines), "device": cfg.device,
        "launcher": cfg.launcher, "experiment": cfg.get("experiment"),
    })


def with_search_from(cfg: DictConfig) -> DictConfig:
    """A pipeline started from a finished search takes that search's settings (so its record says what ran)."""
    if not cfg.get("search_from"):
        return cfg
    source = Path(cfg.search_from)
    if (source / "search").is_dir() and (RunFolder(source, APP).record() or {}).get("app") == APP:
        source = source / "search"  # an enas-pipeline folder: its search stage
    found = search_outputs(source)["config"]
    merged = OmegaConf.merge(cfg, {mine: found[theirs] for mine, theirs in SEARCH_KEYS.items()})
    merged.search_from = str(source.resolve())
    return merged


# --------------------------------------------------------------------------------------------- stages
def stage_search(cfg: DictConfig, run: Path, executor: Executor,
                 beside: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """The search stage: a copy of search_from=, or a search (a job of the executor), reused when finished.

    ``beside`` submits the jobs that may run while the search does (the baselines); it is called after the
    search is submitted, so the search takes the first slot (the next stages wait for it, not for them)."""
    folder = run / "search"
    if cfg.get("search_from") and not (folder / "run.json").is_file():
        copy_search(cfg.search_from, folder)
        log.info("search: copied the finished search %s into %s", cfg.search_from, folder)
    if RunFolder(folder, "enas-search").status == "finished":
        beside()
        return search_outputs(folder)["metrics"]
    config = OmegaConf.to_container(search_config(cfg), resolve=True, enum_to_str=True)
    handle = executor.submit(Job("search", folder, search_job, (config, str(folder))))
    beside()
    return handle.result()


def _accept(cfg: DictConfig) -> Any:
    """Which cells the selection may take: the search's own notion of a valid cell."""
    s = cfg.search
    checks = []
    if s.degenerate != "off":
        checks.append(lambda g: not g.is_degenerate(bool(s.require_memory)))
    if str(s.get("unbounded", "off")) != "off":
        checks.append(lambda g: not g.is_unbounded())
    return lambda g: all(c(g) for c in checks)


def stage_select(cfg: DictConfig, run: Path, executor: Executor) -> dict[str, Any]:
    """The selection stage (successive halving or topk), read back when finished."""
    folder = run / "select"
    done = folder / "selection.json"
    if done.is_file():
        return json.loads(done.read_text())
    ranking = search_outputs(run / "search")["ranking"]
    return select_cells(cfg.select, compare_config(cfg), ranking, run / "search", space_from_config(cfg.space),
                        _accept(cfg), run / "runs", folder, executor, vocab_size_of(cfg.data))


def stage_compare(cfg: DictConfig, run: Path, winner: Genotype, select: Mapping[str, Any],
                  executor: Executor) -> dict[str, Any]:
    """The winner against nn.LSTM; its same-size run continues the winner's selection run."""
    folder = run / "compare"
    if (folder / "comparison.json").is_file():
        return json.loads((folder / "comparison.json").read_text())
    first = [select["winner_run"]] if select.get("winner_run") else []
    return run_compare(compare_config(cfg), folder, [CellEntry(cell_label(winner), "winner", winner)], executor,
                       store=run / "runs", first=first)


def stage_export(cfg: DictConfig, run: Path, winner: Genotype, select: Mapping[str, Any]) -> dict[str, Any]:
    """The run the comparison's verdict is about (the winner at matched parameters, its best seed), exported."""
    folder = run / "export"
    done = folder / "export.json"
    if done.is_file():
        return json.loads(done.read_text())
    ckpt, _ = resolve_run(run / "compare")
    trained = load_trained(ckpt)
    n = len(select["candidates"]) if select["strategy"] == "halving" else select.get("k", len(select["candidates"]))
    trained.provenance = [
        f"Cell: found by enas-pipeline ({cfg.search.strategy} search of the {cfg.space.name} space, seed {cfg.seed}), "
        f"chosen among {n} cells by {select['strategy']} selection; genotype hash {winner.hash()}.",
        *trained.provenance[1:],
    ]
    res = export_trained(trained, folder, f"cell_{winner.hash()}", bool(cfg.export.whole_model))
    result = {"module": str(res.module), "weights": str(res.weights), "max_error": res.max_error,
              "checkpoint": str(ckpt), "run": ckpt.parent.parent.name}
    write_json(done, result)
    return result


# --------------------------------------------------------------------------------------------- the app
@contextmanager
def _timed(folder: RunFolder, stage: str) -> Iterator[None]:
    """Adds the stage's time to the pipeline's record, also when the stage is interrupted (times add up)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        folder.add_seconds(stage, time.perf_counter() - t0)


def run_pipeline(cfg: DictConfig, folder: str | Path, mode: str = "new", overrides: Sequence[str] = (),
                 log_file: Optional[str] = "pipeline.log", hydra_record: Optional[Mapping[str, str]] = None
                 ) -> dict[str, Any]:
    """Runs (or continues, or reads back) every stage in ``folder`` and writes summary.md / metrics.json."""
    if cfg.get("resume") and mode == "new":  # a config that names the pipeline to continue
        mode, folder = "resume", cfg.resume
    folder = Path(folder)
    run = RunFolder(folder, APP)
    if mode == "resume":
        cfg, _ = resumed_config(run, PipelineAppConfig, cfg, overrides, ("device", "launcher"))
    else:
        cfg = with_search_from(cfg)
    check_values(cfg, PipelineAppConfig)
    with run.session(identity_of(cfg), mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            log.info("nothing to do: %s holds a finished pipeline (read back, nothing changed)", folder)
            return json.loads((folder / "metrics.json").read_text())
        executor = make_executor(cfg.launcher, folder)
        try:
            metrics = _stages(cfg, folder, run, executor)
        except BaseException:
            executor.cancel()
            raise
        run.finish()
        log.info("verdict: %s", metrics["verdict"]["text"])
        log.info("done: wrote %s", folder / "summary.md")
        return metrics


def _stages(cfg: DictConfig, folder: Path, run: RunFolder, executor: Executor) -> dict[str, Any]:
    with _timed(run, "search"):
        def baselines() -> None:
            # The baseline runs depend only on the config: they train while the search runs (launcher=local).
            if not (folder / "compare" / "comparison.json").is_file():
                submit_baselines(compare_config(cfg), folder / "compare", executor, folder / "runs")

        search = stage_search(cfg, folder, executor, baselines)
    with _timed(run, "select"):
        select = stage_select(cfg, folder, executor)
    winner = Genotype.from_dict(select["winner_genotype"])
    with _timed(run, "compare"):
        compare = stage_compare(cfg, folder, winner, select, executor)
    with _timed(run, "export"):
        export = stage_export(cfg, folder, winner, select)
    return write_summary(cfg, folder, search, select, compare, export, winner, run.seconds())


# --------------------------------------------------------------------------------------------- summary
def _fmt(v: Any, fmt: str) -> str:
    return fmt_num(v, fmt, "–")


def plot_fidelity(select: Mapping[str, Any], path: Path) -> Optional[Figure]:
    """Supernet perplexity against the first rung's validation perplexity, one point per candidate (log axes)."""
    first = str(select["plan"][0]["steps"])
    pts = [(c["supernet_ppl"], c["valid_ppl"].get(first), c["fate"] == "winner") for c in select["candidates"]]
    pts = [(x, y, w) for x, y, w in pts if x is not None and y is not None and x > 0 and y > 0
           and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return None
    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter([p[0] for p in pts if not p[2]], [p[1] for p in pts if not p[2]], s=24, label="candidate")
    ax.scatter([p[0] for p in pts if p[2]], [p[1] for p in pts if p[2]], s=60, marker="*", c="C3", label="winner")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("supernet perplexity (derive)")
    ax.set_ylabel(f"validation perplexity after {first} steps")
    tau = select["fidelity"]["supernet"].get("tau")
    ax.set_title(f"supernet vs first rung: Kendall tau {'n/a' if tau is None else f'{tau:+.2f}'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _fidelity_rows(fid: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"signal": k, "against": v["against"], "n": v["n"], "Kendall tau": _fmt(v["tau"], "+.2f"),
             "p": _fmt(v["p"], ".3g"), "note": v.get("reason", "")} for k, v in fid.items()]


def write_summary(cfg: DictConfig, run: Path, search: dict, select: dict, compare: dict, export: dict,
                  winner: Genotype, times: Mapping[str, float]) -> dict[str, Any]:
    """summary.md (every stage, the picture, the fidelity, the verdict) and metrics.json."""
    draw_genotype(winner, run / "winner.png", title=f"winner {winner.hash()} ({cfg.space.name} space)")
    fig = plot_fidelity(select, run / "fidelity.png")
    if fig is not None:
        writer = open_writer(run, "pipeline")
        writer.add_figure("select/supernet_vs_first_rung", fig, 0)
        writer.close()
    v = compare.get("verdict") or verdict(compare, float(cfg.compare.alpha))
    info = describe(winner, bool(cfg.search.require_memory))
    steps = select["training_steps"]
    exported_from = export.get("run", "")
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
        "## 1. Search (`search/`)" + (f" - copied from {cfg.search_from}" if cfg.get("search_from") else ""),
        "",
        f"- {search['controller_steps']} controller steps, {search['shared_steps']} shared steps, "
        f"{search['children_evaluated']} children evaluated on shared weights, {search['diverged_children']} diverged",
        f"- degenerate cells ({search.get('degenerate_handling')}): {search.get('degenerate_proposals')} of "
        f"{search.get('proposals')} proposals ({100 * (search.get('degenerate_share') or 0):.1f} %; last epoch "
        f"{_fmt(None if search.get('degenerate_share_last_epoch') is None else 100 * search['degenerate_share_last_epoch'], '.1f')} %), "
        f"{search.get('shared_degenerate_redrawn')} redrawn in the shared phase",
        f"- best derived cell on shared weights: `{search['best_hash']}`, ppl {search['best_ppl']:.1f}",
        "",
        f"## 2. Selection (`select/`, {select['strategy']}: "
        + ", ".join(f"{p['cells']} x {p['steps']} steps" for p in select["plan"])
        + f"; {steps['candidates']:,} training steps)",
        "",
        (run / "select" / "selection.md").read_text().split("\n", 2)[-1].split("## Ranking fidelity")[0].strip(),
        "",
        "The supernet's best was " + ("kept" if select["supernet_best_kept"] else "**overturned**") + " by training.",
        "",
        "Ranking fidelity (Kendall tau of each signal against the validation perplexity at the next budget; "
        "> 0: it ranks like the later training):",
        "",
        to_markdown(_fidelity_rows(select["fidelity"]), ["signal", "against", "n", "Kendall tau", "p", "note"]).rstrip(),
        "",
        "![supernet vs first rung](fidelity.png)" if fig is not None else "",
        "",
        "## 3. Comparison with nn.LSTM (`compare/`)",
        "",
        (run / "compare" / "comparison.md").read_text().split("## Mean ± sd over seeds", 1)[-1].split("## Runs")[0].strip(),
        "",
        "## 4. Export (`export/`)",
        "",
        f"- `{Path(export['module']).name}` and `{Path(export['weights']).name}` (torch only), from run "
        f"`{exported_from}` - the {v.get('sizing') or 'same'}-size run the verdict is about (its best seed); "
        f"max |exported − trained| = {export['max_error']:.2g}",
        "",
        "## Cost",
        "",
        f"Wall time per stage, summed over every invocation ({cfg.launcher.name} launcher): "
        + ", ".join(f"{k} {times.get(k, 0.0) / 60:.1f} min" for k in STAGES)
        + f"; total {sum(times.get(k, 0.0) for k in STAGES) / 60:.1f} min.",
        "",
    ]
    for r in select["rungs"]:
        if r.get("searched_outran_references") is not None:
            lines.insert(lines.index("The supernet's best was " + ("kept" if select["supernet_best_kept"]
                                                                  else "**overturned**") + " by training."),
                         f"- rung {r['rung']} ({r['steps']} steps): the best searched cell "
                         + ("outran" if r["searched_outran_references"] else "did **not** outrun")
                         + " the references (" + ", ".join(f"{x['label']} {_fmt(x['valid_ppl'], '.1f')}"
                                                           for x in r["references"]) + ")")
    write_text_atomic(run / "summary.md", "\n".join(lines))
    metrics = {"verdict": v, "winner": winner.hash(), "winner_analysis": info, "search": search,
               "select": {k: select[k] for k in ("strategy", "plan", "training_steps", "rungs", "fidelity",
                                                 "fidelity_audit", "supernet_best_kept", "winner")},
               "candidates": select["candidates"], "references": select["references"],
               "fidelity": select["fidelity"], "compare_summary": compare["summary"], "export": export,
               "stage_seconds": {k: float(times.get(k, 0.0)) for k in STAGES},
               "launcher": cfg.launcher.name, "search_from": cfg.get("search_from"),
               "experiment": cfg.get("experiment"), "config": identity_of(cfg)}
    write_json(run / "metrics.json", metrics)
    return json.loads((run / "metrics.json").read_text())


__all__ = ["run_pipeline", "search_config", "compare_config", "write_summary", "APP", "ConfigError"]
