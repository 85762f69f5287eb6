"""A finished training run read back: its checkpoint, the model it trained, and where it came from.

``resolve_run`` finds the checkpoint to export in a run folder (an enas-train run, an enas-compare
comparison - the run its verdict is about - or an enas-pipeline); ``load_trained`` rebuilds the trained
model with FixedCell cores (an nn.LSTM baseline becomes the ``lstm`` genotype with nn.LSTM's weights
copied in, ``b_ih + b_hh`` folded into one bias, and no guard, so it reproduces torch.nn.LSTM) for
``enas_rnn.export``; ``provenance`` says in sentences where the cell and its weights come from, with the
perplexities they reached. Used by enas-export, enas-compress and the pipeline's export stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from enas_rnn.checkpoint import BEST, LAST, checkpoint_dir, load_checkpoint
from enas_rnn.export import ExportError, Trained
from enas_rnn.genotype import Genotype, get_named, load_genotype, node_ref
from enas_rnn.model import CoreKind, build_model
from enas_rnn.runfolder import RunFolder
from enas_rnn.spaces.lstm import copy_from_nn_lstm
from enas_rnn.trainrun import TrainRunConfig

__all__ = ["load_trained", "resolve_run", "provenance", "run_config_of"]


def run_config_of(payload: dict, path: Path) -> DictConfig:
    """The (typed) training config a checkpoint was written with; an ExportError when it is not one."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainRunConfig), payload["config"])
    except Exception as exc:  # omegaconf raises several types for a foreign config
        raise ExportError(f"{path}: its config is not an enas-train config ({str(exc).splitlines()[0]})") from None


def _genotype_mismatch(given: Genotype, saved: Genotype) -> str:
    """One phrase naming how two genotypes differ."""
    if given.space != saved.space:
        return f"the genotype is from the {given.space} space but the checkpoint holds a cell of the {saved.space} space"
    if given.num_nodes != saved.num_nodes:
        return f"the genotype has {given.num_nodes} nodes, the checkpoint's cell {saved.num_nodes}"
    for i, (a, b) in enumerate(zip(given.nodes, saved.nodes), 1):
        if a != b:
            return f"node {node_ref(i)} is {a.to_dict()} in the genotype but {b.to_dict()} in the checkpoint"
    return f"outputs {dict(given.outputs)} in the genotype but {dict(saved.outputs)} in the checkpoint"


def _load_strict(model: nn.Module, sd: dict[str, Tensor], what: str, source: str) -> None:
    """load_state_dict that names the missing, unexpected and misshapen weights instead of a wall of text."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (needs {list(own[k].shape)})" for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    if shapes:
        problems.append("shape " + ", ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise ExportError(f"{what} does not match the weights in {source}: " + "; ".join(problems))
    model.load_state_dict(sd)


def load_trained(checkpoint: str | Path, cell: Optional[str] = None) -> Trained:
    """Rebuilds the trained model of a checkpoint (``{"config", "genotype", "state_dicts": {"model"}}``).

    ``cell`` (a name or a genotype file) is checked against the checkpoint: a genotype from another
    space, with other nodes, or whose weights do not fit the checkpoint's is refused with the reason.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"checkpoint={checkpoint}: no such file (a run's weights are in <run>/checkpoints/{BEST})")
    payload = load_checkpoint(path)  # weights_only=True; CheckpointError when unreadable
    cfg = run_config_of(payload, path)
    sd = payload["state_dicts"].get("model") if isinstance(payload["state_dicts"], dict) else None
    if not sd or "embedding.weight" not in sd:
        raise ExportError(f"{path} holds no language-model weights (state_dicts.model); is it a search checkpoint?")
    vocab_size = int(sd["embedding.weight"].shape[0])
    given = load_genotype(cell) if cell else None
    if cfg.model.core == CoreKind.gru:
        raise ExportError(f"{path} holds a torch.nn.GRU (model.core=gru): no search space expresses a GRU, so it "
                          "cannot be exported as a cell; export an nn.LSTM or cell run")
    if cfg.model.core == CoreKind.lstm:
        return _from_baseline(cfg, sd, vocab_size, given, str(path), provenance(get_named("lstm"), cfg, payload, path))
    if payload.get("genotype") is None and given is None:
        raise ExportError(f"{path} records no genotype: pass cell=<name or genotype.json>")
    saved = Genotype.from_dict(payload["genotype"]) if payload.get("genotype") is not None else None
    genotype = saved if saved is not None else given
    assert genotype is not None
    if given is not None and saved is not None and given != saved:
        if given.canonical() != saved.canonical():
            raise ExportError(f"{cell} is not the cell {path} was trained with: {_genotype_mismatch(given, saved)}")
        # The same cell spelled differently: the weights follow the checkpoint's node numbering.
        genotype = saved
    clip = cfg.model.state_clip
    model = build_model(cfg.model, vocab_size, genotype)
    label = f"genotype {cell}" if cell else f"the checkpoint's genotype ({genotype.space} space)"
    _load_strict(model, sd, label, str(path))
    model.eval()
    return Trained(genotype, model, model, clip, bool(cfg.model.tie_weights), str(path), genotype.name,
                   provenance(genotype, cfg, payload, path))


def provenance(genotype: Genotype, cfg: DictConfig, payload: dict, path: Path) -> list[str]:
    """Where the exported cell and its weights come from, one sentence each (the module's docstring)."""
    if genotype.source and genotype.name:
        cell = f"Cell: the published cell {genotype.name} ({genotype.source})."
    elif cfg.model.core == CoreKind.lstm:
        cell = "Cell: the vanilla LSTM, trained as torch.nn.LSTM and exported as the lstm genotype."
    else:
        cell = f"Cell: genotype {genotype.hash()}, from {cfg.cell} (a cell found by an enas_rnn search or written by hand)."
    # The perplexity of these weights is added by enas_rnn.export (export.perplexity_provenance): it knows
    # which numbers describe which checkpoint (metrics.json is best.pt's, not last.pt's).
    return [cell, f"Weights: checkpoint {path} (step {payload.get('step')})."]


def _from_baseline(cfg: DictConfig, sd: dict[str, Tensor], vocab_size: int, given: Optional[Genotype], source: str,
                   about: list[str]) -> Trained:
    """An nn.LSTM checkpoint as the ``lstm`` genotype: nn.LSTM's weights copied in, no guard."""
    lstm_g = get_named("lstm")
    if given is not None and given.canonical() != lstm_g.canonical():
        raise ExportError(f"{source} holds a torch.nn.LSTM (model.core=lstm), which exports only as the lstm "
                          f"genotype; the given cell differs from it: {_genotype_mismatch(given, lstm_g)}")
    original = build_model(cfg.model, vocab_size)
    _load_strict(original, sd, "an nn.LSTM language model", source)
    original.eval()

    as_cell = OmegaConf.merge(cfg.model, {"core": CoreKind.cell.value, "state_clip": None})  # nn.LSTM has no guard
    model = build_model(as_cell, vocab_size, lstm_g)
    with torch.no_grad():
        model.embedding.weight.copy_(original.embedding.weight)
        model.decoder.weight.copy_(original.decoder.weight)
        model.decoder.bias.copy_(original.decoder.bias)
    for fixed, core in zip(model.cores, original.cores):
        copy_from_nn_lstm(fixed, core.lstm)
    model.eval()
    return Trained(lstm_g, model, original, None, bool(cfg.model.tie_weights), source, "nn_lstm", about)


def resolve_run(run: str | Path) -> tuple[Path, Optional[str]]:
    """The checkpoint to export from a run folder, and a suggested name.

    * enas-train run: ``checkpoints/best.pt`` (the best-validation weights);
    * enas-compare run: the run of the compared cell (``cell=``, not the baseline or extra cells) with
      the best validation perplexity over sizings and seeds; its ``checkpoints/best.pt``. Export an
      extra cell with ``run=<compare folder>/runs/<model>_<sizing>_seed<k>``.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise ExportError(f"run={run}: no such folder")
    app = (RunFolder(folder, "").record() or {}).get("app")
    if app == "enas-pipeline":  # an enas-pipeline folder: its comparison stage
        if not (folder / "compare" / "comparison.json").is_file():
            raise ExportError(f"{folder} is an enas-pipeline whose comparison has not finished: continue it with "
                              f"enas-pipeline resume={folder} (it exports the winner itself)")
        return resolve_run(folder / "compare")
    if (folder / "search_history.jsonl").is_file() or (folder / "best_genotype.json").is_file():
        raise ExportError(f"{folder} is an enas-search run: its weights belong to the shared supernet, not to one "
                          f"cell. Retrain the cell first (enas-train model=cell cell={folder / 'best_genotype.json'}), "
                          "or run the whole job with enas-pipeline, which exports the retrained winner")
    report_path = folder / "comparison.json"
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
            cell, runs = report["cell"], report["runs"]
        except (ValueError, KeyError) as exc:
            raise ExportError(f"{report_path} is unreadable ({exc}); re-run enas-compare in that folder") from None
        # The run the verdict is about: the cell at matched parameters when that sizing ran (else the same
        # size), and of its seeds the best validation perplexity.
        sizings = {r["sizing"] for r in runs if r["model"] == cell}
        sizing = "matched" if "matched" in sizings else "same"
        ok = [r for r in runs if r["model"] == cell and r["sizing"] == sizing and r.get("valid_ppl") is not None
              and math.isfinite(r["valid_ppl"]) and r.get("status") != "diverged"
              and not str(r.get("status", "")).startswith("same run as")]
        ok = ok or [r for r in runs if r["model"] == cell and r.get("valid_ppl") is not None
                    and math.isfinite(r["valid_ppl"]) and r.get("status") != "diverged"
                    and not str(r.get("status", "")).startswith("same run as")]
        if not ok:
            raise ExportError(f"{folder}: no finished, finite run of cell {cell} in comparison.json")
        best = min(ok, key=lambda r: r["valid_ppl"])
        ckpt = folder / best["run_dir"] / "checkpoints" / BEST
        if not ckpt.is_file():
            raise ExportError(f"{folder}: the best run of {cell} ({best['name']}) has no checkpoints/{BEST}")
        return ckpt, cell
    if app == "enas-search" or (folder / "search_history.jsonl").is_file():
        raise ExportError(f"{folder} is an enas-search run: its weights belong to the shared supernet, not to one "
                          f"cell. Retrain the cell first (enas-train model=cell cell={folder / 'best_genotype.json'}), "
                          "or run the whole job with enas-pipeline, which exports the retrained winner")
    ckpt = checkpoint_dir(folder) / BEST
    if ckpt.is_file():
        return ckpt, None
    if (checkpoint_dir(folder) / LAST).is_file():
        raise ExportError(f"{folder} has no checkpoints/{BEST} yet (no validation finished): let the run finish "
                          f"(enas-train resume={folder}), or pass checkpoint={checkpoint_dir(folder) / LAST} to export "
                          "its latest weights")
    raise ExportError(f"{folder} is neither an enas-train run (checkpoints/{BEST}), an enas-compare run "
                      "(comparison.json) nor an enas-pipeline folder")
