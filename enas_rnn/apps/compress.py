"""`enas-compress`: prune, share and prune+share a trained language model, retrain each, measure, export.

Input: an enas-train run folder (nn.LSTM or a cell; its ``checkpoints/best.pt``). For every variant of
``compress`` (:mod:`enas_rnn.compress`: pruning levels, k-means cluster counts, both combined) and an
uncompressed control, the trained model is compressed, evaluated, retrained for ``retrain.max_steps``
steps through the one LM loop (:func:`enas_rnn.train.fit`, masks and codebooks kept by
parametrisations) and evaluated on valid and test with its best-validation weights. The run folder::

    compression.md / compression.json   one row per variant: sparsity, clusters, stored bytes,
                                        valid/test perplexity (before and after retraining), delta
    compression.png                     test perplexity against sparsity, clusters and stored size
    variants/<name>/                    metrics.json and checkpoints/best.pt (an enas-train checkpoint)
    export/<module>.py + .safetensors   the chosen compressed model as a standalone module (enas-export)

A variant folder that holds a finished variant with the same settings is reused, so an interrupted run
continues with ``resume=<its folder>``. The exported module stores dense float32 tensors (it
needs nothing but torch); the compressed size is the ``stored_bytes`` column.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from enas_rnn.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    write_text_atomic,
)
from enas_rnn.compress import (
    Variant,
    apply_variant,
    cluster_counts,
    materialize,
    plan_variants,
    retrain_optimizer,
    sparsity,
    stored_bits,
)
from enas_rnn.conf import CompressAppConfig
from enas_rnn.errors import ConfigError, TrainingDiverged
from enas_rnn.export import export_trained
from enas_rnn.genotype import Genotype
from enas_rnn.model import CoreKind, build_lm, count_parameters
from enas_rnn.rules import check_values
from enas_rnn.runfolder import Claim, RunFolder, identity_of, resumed_config
from enas_rnn.runs import load_splits, resolve_device, strict
from enas_rnn.stats import fmt_num, to_markdown
from enas_rnn.train import LoopState, evaluate, fit, perplexity
from enas_rnn.trained import load_trained, resolve_run, run_config_of

log = logging.getLogger(__name__)

__all__ = ["validate_compress_app", "load_run", "run_variant", "choose_export", "render_markdown",
           "plot_compression", "run_compress"]


def validate_compress_app(cfg: DictConfig) -> None:
    """Every value of the compress app (the retraining's as ``retrain.*``)."""
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("run= is required: an enas-train run folder (nn.LSTM or a cell) with checkpoints/best.pt")
    check_values(cfg, CompressAppConfig)


def load_run(run: str | Path) -> tuple[Path, dict[str, Any], DictConfig]:
    """The run's best checkpoint, its payload and its (typed) training config."""
    ckpt, _ = resolve_run(run)
    payload = load_checkpoint(ckpt)
    return ckpt, payload, run_config_of(payload, ckpt)


def _identity(cfg: DictConfig, ckpt: Path, step: int, variant: Variant) -> dict[str, Any]:
    """What makes two variant runs the same (the progress bar does not)."""
    d = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["compress", "retrain", "batch_size", "seed"]),
                               resolve=True, enum_to_str=True)
    d["retrain"].pop("progress", None)
    for key in ("prune_levels", "clusters", "combined_levels", "combined_clusters"):
        d["compress"].pop(key)  # the variant says which of them this run is
    if variant.clusters is None:
        d["compress"].pop("codebook_lr_scale")  # no codebook to train
    return {**d, "checkpoint": str(ckpt.resolve()), "checkpoint_step": step,
            "variant": {"level": variant.level, "clusters": variant.clusters}}


def run_variant(cfg: DictConfig, variant: Variant, model0: torch.nn.Module, splits: Any, data_cfg: DictConfig,
                ckpt: Path, payload: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Compresses a copy of ``model0``, retrains it, evaluates it and saves it into ``folder``."""
    identity = _identity(cfg, ckpt, int(payload.get("step") or 0), variant)
    metrics_path = folder / "metrics.json"
    with RunFolder(folder, VARIANT_APP).session(identity, "job", log_file=None) as claim:
        if claim == Claim.reuse:
            old = json.loads(metrics_path.read_text())
            return old if old.get("status") == "diverged" else {**old, "status": "reused"}
        row = _run_variant(cfg, variant, model0, splits, data_cfg, payload, folder, identity)
        RunFolder(folder, VARIANT_APP).finish()
        return row


def _run_variant(cfg: DictConfig, variant: Variant, model0: torch.nn.Module, splits: Any, data_cfg: DictConfig,
                 payload: dict[str, Any], folder: Path, identity: dict[str, Any]) -> dict[str, Any]:
    metrics_path = folder / "metrics.json"
    seed_everything(cfg.seed)
    model = copy.deepcopy(model0)
    applied = apply_variant(model, variant, cfg.compress.scope, cfg.compress.kmeans_iters)
    ev = cfg.retrain.eval_batches
    before = evaluate(model, splits.valid, data_cfg.bptt, ev)
    optimizer = retrain_optimizer(model, cfg.retrain.lr, cfg.retrain.weight_decay, cfg.compress.codebook_lr_scale)
    state = LoopState(lr=cfg.retrain.lr)
    state.bptt_gen.manual_seed(cfg.seed)
    best: dict[str, Any] = {}

    def keep_best(st: LoopState, is_best: bool) -> None:
        if is_best:
            best["state"] = copy.deepcopy(model.state_dict())

    row: dict[str, Any] = {"variant": variant.name, "method": variant.method, "level": variant.level,
                           "clusters": variant.clusters, "valid_ppl_before": perplexity(before)}
    try:
        fit(model, optimizer, splits.train, splits.valid, state, cfg.retrain, data_cfg, save=keep_best)
    except TrainingDiverged as exc:
        row.update(status="diverged", error=str(exc), valid_ppl=math.inf, test_ppl=math.inf, config=identity)
        write_text_atomic(metrics_path, json.dumps(strict(row), indent=2))
        return row
    if "state" in best:
        model.load_state_dict(best["state"])
    materialize(model)
    names = list(applied)
    counts = cluster_counts(model, names) if variant.clusters is not None else {}
    # The best validation of the loop is these weights' (materialising changes no value): no second pass.
    valid_loss = state.best_valid_loss if "state" in best else evaluate(model, splits.valid, data_cfg.bptt, ev)
    test_loss = evaluate(model, splits.test, data_cfg.bptt, ev)
    bits = stored_bits(model, {n: a.clusters for n, a in applied.items()}, cfg.compress.index_bits)
    save_checkpoint(folder / "checkpoints" / "best.pt", {
        "config": payload["config"], "genotype": payload.get("genotype"), "step": state.step,
        "state_dicts": {"model": model.state_dict()}, "compression": row | {"matrices": names}})
    row.update(
        status="trained", steps=state.step, skipped_steps=state.skipped,
        sparsity=sparsity(model, names) if names else 0.0,
        clusters_found=sorted(set(counts.values())) if counts else None,
        compressed_matrices=names, compressed_params=sum(a.numel for a in applied.values()),
        stored_bits=bits, stored_bytes=math.ceil(bits / 8), valid_ppl=perplexity(valid_loss),
        test_ppl=perplexity(test_loss), train_seconds=state.train_seconds, history=state.history, config=identity)
    write_text_atomic(metrics_path, json.dumps(strict(row), indent=2))
    return {**row, "status": "trained"}


def choose_export(cfg: DictConfig, rows: list[dict[str, Any]], original_valid: float) -> Optional[dict[str, Any]]:
    """The variant to export: a named one, or (``best``) the smallest stored size among compressed
    variants whose valid perplexity is within ``export_tolerance`` of the reference's (else the lowest
    valid perplexity among them); None for ``export=none``. The reference is the retrained dense
    control when there is one (same retraining, no compression), else the original model."""
    choice = str(cfg.export)
    ok = [r for r in rows if r.get("status") in ("trained", "reused") and math.isfinite(r.get("valid_ppl") or math.inf)]
    if choice == "none":
        return None
    if choice != "best":
        named = [r for r in ok if r["variant"] == choice]
        if not named:
            raise ConfigError(f"invalid config value export={choice!r}: valid values are best, none or a finished "
                              f"variant ({', '.join(r['variant'] for r in ok)})")
        return named[0]
    compressed = [r for r in ok if r["method"] != "none"]
    if not compressed:
        return None
    control = [r for r in ok if r["method"] == "none"]
    reference = control[0]["valid_ppl"] if control else original_valid
    within = [r for r in compressed if r["valid_ppl"] <= (1 + cfg.export_tolerance) * reference]
    if within:
        return min(within, key=lambda r: (r["stored_bytes"], r["valid_ppl"]))
    log.warning("no variant is within %.0f%% of the reference valid perplexity; exporting the best one",
                100 * cfg.export_tolerance)
    return min(compressed, key=lambda r: r["valid_ppl"])


def _exported_stats(path: Path) -> dict[str, Any]:
    """Zeros and distinct values per 2-D+ tensor of an exported safetensors file (what a reader gets)."""
    out = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if t.dim() >= 2 and "bias" not in key:
                out[key] = {"zeros": float((t == 0).float().mean()), "distinct_nonzero": int(torch.unique(t[t != 0]).numel())}
    return out


# ====================================================================================================================
# Report
# ====================================================================================================================


def render_markdown(report: dict[str, Any]) -> str:
    """compression.md: setup, the size formula, one row per variant."""
    o, s = report["original"], report["setup"]
    lines = [
        f"# Compression of {s['run']}",
        "",
        f"Model: {s['model']} · {o['num_params']:,} parameters · {o['stored_bytes']:,} bytes as float32 · "
        f"compressed matrices ({s['scope']}): {', '.join(s['matrices'])}.",
        f"Retraining per variant: {s['retrain_steps']} SGD steps, lr {s['lr']}, batch {s['batch_size']}, "
        f"clip {s['clip']}, best-validation weights; evaluation on {s['eval']}.",
        "",
        "Stored size: per compressed matrix the smaller of dense (n x b bits) and sparse ((nonzeros + fillers) x "
        f"(b + {s['index_bits']}) bits, relative {s['index_bits']}-bit indices with a filler entry per gap over "
        f"2^{s['index_bits']}), with b = 32 (float32) or ceil(log2 k) (k shared values) plus a k x 32-bit codebook; "
        "biases and uncompressed tensors at 32 bits (Han et al. 2016 without Huffman coding).",
        "",
    ]
    control = next((r for r in report["variants"] if r["method"] == "none" and r.get("test_ppl") is not None), None)
    rows = [{"variant": "original", "method": "-", "sparsity": "0.0%", "clusters": "", "stored bytes": f"{o['stored_bytes']:,}",
             "ratio": "1.0x", "valid ppl before": "", "valid ppl": fmt_num(o["valid_ppl"], ".2f"),
             "test ppl": fmt_num(o["test_ppl"], ".2f"), "Δ test ppl": "", "Δ vs retrained": "", "status": "trained run"}]
    for r in report["variants"]:
        rows.append({
            "variant": r["variant"], "method": r["method"],
            "sparsity": fmt_num(100 * r["sparsity"], ".1f") + "%" if r.get("sparsity") is not None else "",
            "clusters": "" if r["clusters"] is None else str(r["clusters"]),
            "stored bytes": f"{r['stored_bytes']:,}" if r.get("stored_bytes") else "",
            "ratio": f"{o['stored_bytes'] / r['stored_bytes']:.1f}x" if r.get("stored_bytes") else "",
            "valid ppl before": fmt_num(r.get("valid_ppl_before"), ".2f"), "valid ppl": fmt_num(r.get("valid_ppl"), ".2f"),
            "test ppl": fmt_num(r.get("test_ppl"), ".2f"),
            "Δ test ppl": fmt_num((r.get("test_ppl") or math.nan) - o["test_ppl"], "+.2f"),
            "Δ vs retrained": fmt_num((r.get("test_ppl") or math.nan) - control["test_ppl"], "+.2f") if control else "",
            "status": r["status"]})
    lines += [to_markdown(rows, list(rows[0])).rstrip(), ""]
    lines.append("`valid ppl before`: right after compressing, before retraining. `retrained`: the uncompressed "
                 "model retrained for the same budget (what retraining alone changes); `Δ vs retrained` compares "
                 "each variant with it, `Δ test ppl` with the original.")
    if report.get("export"):
        e = report["export"]
        lines += ["", f"Exported: `{e['variant']}` as `{e['module']}` (+ `.safetensors`, dense float32 tensors holding "
                      f"the zeros and shared values; max |exported - model| = {e['max_error']:.2g})."]
    return "\n".join(lines) + "\n"


def plot_compression(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Test perplexity against pruned share, against clusters, and against stored size."""
    o = report["original"]
    rows = [r for r in report["variants"] if math.isfinite(r.get("test_ppl") or math.inf)]
    if not rows:
        return None
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    control = [r for r in rows if r["method"] == "none"]

    def refs(ax: Any) -> None:
        ax.axhline(o["test_ppl"], color="k", linewidth=1, label="original")
        if control:
            ax.axhline(control[0]["test_ppl"], color="grey", linestyle="--", linewidth=1, label="retrained, dense")

    prune = sorted((r for r in rows if r["method"] == "prune"), key=lambda r: r["level"])
    if prune:
        axes[0].plot([100 * r["sparsity"] for r in prune], [r["test_ppl"] for r in prune], "o-", label="pruned")
        axes[0].plot([100 * r["level"] for r in prune], [r["valid_ppl_before"] for r in prune], "x:", alpha=0.6,
                     label="before retraining (valid)")
    for k in sorted({r["clusters"] for r in rows if r["method"] == "prune+share"}):
        both = sorted((r for r in rows if r["method"] == "prune+share" and r["clusters"] == k), key=lambda r: r["level"])
        axes[0].plot([100 * r["sparsity"] for r in both], [r["test_ppl"] for r in both], "s--", label=f"pruned + {k} clusters")
    refs(axes[0])
    axes[0].set_xlabel("pruned share of the compressed matrices (%)")
    share = sorted((r for r in rows if r["method"] == "share"), key=lambda r: r["clusters"])
    if share:
        axes[1].plot([r["clusters"] for r in share], [r["test_ppl"] for r in share], "o-", label="shared")
        axes[1].plot([r["clusters"] for r in share], [r["valid_ppl_before"] for r in share], "x:", alpha=0.6,
                     label="before retraining (valid)")
    refs(axes[1])
    axes[1].set_xlabel("clusters per matrix (k)")
    for method, marker in (("none", "D"), ("prune", "o"), ("share", "^"), ("prune+share", "s")):
        pts = [r for r in rows if r["method"] == method]
        if pts:
            axes[2].scatter([r["stored_bytes"] / 1e6 for r in pts], [r["test_ppl"] for r in pts], marker=marker, label=method)
    axes[2].scatter([o["stored_bytes"] / 1e6], [o["test_ppl"]], marker="*", s=120, color="k", label="original")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("stored size (MB)")
    for ax in axes:
        ax.set_ylabel("test perplexity")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"compression of {report['setup']['model']} ({report['setup']['retrain_steps']} retraining steps each)",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


# ====================================================================================================================
# The app
# ====================================================================================================================


APP = "enas-compress"
VARIANT_APP = "enas-compress variant"


def run_compress(cfg: DictConfig, run_dir: str | Path, mode: str = "job", overrides: Sequence[str] = (),
                 log_file: Optional[str] = "compress.log", hydra_record: Optional[dict[str, str]] = None
                 ) -> dict[str, Any]:
    """Every variant of ``cfg.compress`` (and the control) from ``cfg.run``; writes the table, plot and export."""
    run_dir = Path(run_dir)
    run = RunFolder(run_dir, APP)
    if mode == "resume":
        cfg, _ = resumed_config(run, CompressAppConfig, cfg, overrides, ("device", "plot"))
    validate_compress_app(cfg)
    with run.session(identity_of(cfg), mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            return json.loads((run_dir / "compression.json").read_text())
        report = _run_compress(cfg, run_dir)
        run.finish()
        return report


def _run_compress(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    ckpt, payload, run_cfg = load_run(cfg.run)
    device = resolve_device(cfg.device)
    data_cfg = run_cfg.data.copy()
    if cfg.batch_size is not None:
        data_cfg.batch_size = int(cfg.batch_size)
    splits = load_splits(data_cfg, device)
    genotype0 = Genotype.from_dict(payload["genotype"]) if payload.get("genotype") else None
    model0 = build_lm(run_cfg.model, len(splits.corpus.vocab), genotype0)
    try:
        model0.load_state_dict(payload["state_dicts"]["model"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"{ckpt} does not match the model its config builds ({str(exc).splitlines()[0]}); "
                          "is the corpus the one the run was trained on?") from None
    model0.to(device)
    ev = cfg.retrain.eval_batches
    num_params = count_parameters(model0)
    original = {"valid_ppl": perplexity(evaluate(model0, splits.valid, data_cfg.bptt, ev)),
                "test_ppl": perplexity(evaluate(model0, splits.test, data_cfg.bptt, ev)),
                "num_params": num_params, "stored_bytes": 4 * num_params}
    variants = plan_variants(cfg.compress, bool(cfg.control))
    rows = []
    for k, v in enumerate(variants, 1):
        log.info("[%d/%d] %s", k, len(variants), v.name)
        r = run_variant(cfg, v, model0, splits, data_cfg, ckpt, payload, run_dir / "variants" / v.name)
        log.info("[%d/%d] %s: %s, sparsity %s, %s bytes, valid ppl %.2f -> %.2f, test ppl %.2f", k, len(variants),
                 v.name, r["status"], r.get("sparsity"), r.get("stored_bytes"), r.get("valid_ppl_before", math.nan),
                 r.get("valid_ppl", math.nan), r.get("test_ppl", math.nan))
        rows.append({k2: v2 for k2, v2 in r.items() if k2 not in ("history", "config")})
    core = CoreKind(run_cfg.model.core)
    genotype = Genotype.from_dict(payload["genotype"]) if payload.get("genotype") else None
    model_label = {CoreKind.lstm: "nn.LSTM", CoreKind.gru: "nn.GRU"}.get(core) or \
        f"cell {genotype.name or genotype.hash()[:8] if genotype else ''}".strip()
    matrices = next((r["compressed_matrices"] for r in rows if r.get("compressed_matrices")), [])
    report: dict[str, Any] = {
        "setup": {"run": str(cfg.run), "checkpoint": str(ckpt), "model": model_label, "scope": cfg.compress.scope,
                  "matrices": matrices, "index_bits": cfg.compress.index_bits, "retrain_steps": cfg.retrain.max_steps,
                  "lr": cfg.retrain.lr, "clip": cfg.retrain.clip, "batch_size": data_cfg.batch_size,
                  "eval": "the whole valid/test splits" if ev is None else f"the first {ev} windows of valid/test",
                  "device": str(device)},
        "original": original,
        "variants": rows,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    chosen = choose_export(cfg, rows, original["valid_ppl"])
    if chosen is not None and core == CoreKind.gru:
        log.warning("an nn.GRU model cannot be exported as a cell (no search space expresses it); not exported")
        chosen = None
    if chosen is not None:
        vckpt = run_dir / "variants" / chosen["variant"] / "checkpoints" / "best.pt"
        trained = load_trained(vckpt)
        base = trained.name or "model"
        res = export_trained(trained, run_dir / "export", f"{base}_{chosen['variant']}", bool(cfg.export_whole_model))
        report["export"] = {"variant": chosen["variant"], "module": str(res.module.relative_to(run_dir)),
                            "weights": str(res.weights.relative_to(run_dir)), "max_error": res.max_error,
                            "tensors": _exported_stats(res.weights)}
    write_text_atomic(run_dir / "compression.json", json.dumps(strict(report), indent=2, allow_nan=False))
    write_text_atomic(run_dir / "compression.md", render_markdown(report))
    if cfg.plot:
        plot_compression(report, run_dir / "compression.png")
    return report
