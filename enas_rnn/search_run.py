"""Wiring for one search run (`enas-search`): supernet + strategy -> alternating loop -> derive.

A search folder holds::

    best_genotype.json      the derived cell (a genotype file: enas-train cell=<this file>)
    best_genotype.png       its picture
    top_genotypes.json      the top-k derived cells with their shared-weight perplexities
    search_history.jsonl    one line per evaluated child (step, hash, genotype, ppl, reward, ...)
    metrics.json            summary numbers
    checkpoints/last.pt     written at the end of every epoch; resume=<folder> continues
    tb/                     TensorBoard events
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from enas_rnn.checkpoint import (
    LAST,
    checkpoint_dir,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_text_atomic,
)
from enas_rnn.conf import SearchAppConfig, validate_common
from enas_rnn.errors import CheckpointError, ConfigError
from enas_rnn.genotype import Genotype
from enas_rnn.model import RNNLM
from enas_rnn.runner import load_splits, resolve_device, _flat_hparams, _to_device
from enas_rnn.search import (
    STRATEGIES,
    SearchState,
    make_strategy,
    reward_from_ppl,
    top_k_indices,
)
from enas_rnn.spaces import make_space
from enas_rnn.train import LoopState, StepResult, evaluate, perplexity, train_steps

Hook = Callable[[str, int], None]  # (event, counter): lets tests interrupt a run at a chosen point
Screener = Callable[[Sequence[Genotype]], list[float]]  # training-free scores, higher is better


def validate_search(cfg: Any) -> None:
    """Value checks of the search app (types are checked by the schema)."""
    validate_common(cfg)
    s = cfg.search
    if s.strategy not in STRATEGIES:
        raise ConfigError(f"invalid config value search.strategy={s.strategy!r}: valid values are {', '.join(STRATEGIES)}")
    for key in ("epochs", "controller_steps", "children_per_step", "reward_batches", "derive_samples", "derive_batches", "top_k"):
        if s[key] < (0 if key == "controller_steps" else 1):
            raise ConfigError(f"invalid config value search.{key}={s[key]!r}: valid values are integers >= 1")
    if not 0 <= s.baseline_decay < 1:
        raise ConfigError(f"invalid config value search.baseline_decay={s.baseline_decay!r}: valid values are in [0, 1)")
    if cfg.model.num_layers != 1:
        raise ConfigError("the search supernet has one recurrent layer: set model.num_layers=1")
    sc = cfg.screen
    if sc.name not in ("none", "mrs", "hidden_cov"):
        raise ConfigError(f"invalid config value screen.name={sc.name!r}: valid values are none, mrs, hidden_cov")
    if sc.screened_reward not in ("skip", "min"):
        raise ConfigError(f"invalid config value screen.screened_reward={sc.screened_reward!r}: valid values are skip, min")
    if sc.name != "none" and not 1 <= sc.keep <= sc.candidates:
        raise ConfigError(f"screen.keep={sc.keep} must be between 1 and screen.candidates={sc.candidates}")


def make_screener(cfg: Any, space: Any, vocab_size: int, valid: torch.Tensor) -> Optional[Screener]:
    """The training-free scorer of the screen config (None when screening is off)."""
    if cfg.screen.name == "none":
        return None
    from enas_rnn.mrs import make_lm_screener  # the scoring code lives with the scores

    return make_lm_screener(cfg, space, vocab_size, valid)


def run_search(cfg: DictConfig, run_dir: str | Path, hook: Optional[Hook] = None) -> dict[str, Any]:
    """Runs (or, with ``cfg.resume``, continues) a search and derives the best cell."""
    wall_t0 = time.perf_counter()
    payload = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        payload = load_checkpoint(checkpoint_dir(run_dir) / LAST)
        # The saved config is the run's identity; only the progress bar follows the new command.
        show = cfg.train.progress
        cfg = OmegaConf.merge(OmegaConf.structured(SearchAppConfig), payload["config"])
        cfg.train.progress = show
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    validate_search(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data, device)
    vocab_size = len(splits.corpus.vocab)
    space = make_space(cfg.space.name, cfg.space.num_nodes)

    from enas_rnn.cells import SharedCell

    shared = SharedCell(space, cfg.model.emb_size, cfg.model.hidden_size, state_clip=cfg.model.state_clip, dropout_h=cfg.model.dropout_h)
    model = RNNLM(vocab_size, [shared], cfg.model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    strategy = make_strategy(cfg.search.strategy, space, cfg.controller, cfg.search, cfg.screen, gen)
    if hasattr(strategy, "controller"):
        strategy.controller.to(device)
    screener = make_screener(cfg, space, vocab_size, splits.valid)

    loop = LoopState(lr=cfg.train.lr)
    loop.bptt_gen.manual_seed(cfg.seed)
    st = SearchState()
    wall_before = 0.0
    if payload is not None:
        try:
            model.load_state_dict(payload["state_dicts"]["model"])
            optimizer.load_state_dict(payload["state_dicts"]["optimizer"])
            strategy.load_state_dict(payload["state_dicts"]["strategy"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint in {run_dir} does not match its config ({exc}): start a new search") from None
        loop = LoopState.from_dict(payload["loop"])
        loop.hidden = _to_device(payload.get("hidden"), device)
        st = SearchState(**payload["search"])
        gen.set_state(payload["generator"])
        set_rng_state(payload["rng"])
        wall_before = payload.get("wall_s", 0.0)

    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    history_path = run_dir / "search_history.jsonl"
    # Rewrite the history from the checkpoint: lines of an interrupted epoch are dropped and redone.
    write_text_atomic(history_path, "".join(json.dumps(r) + "\n" for r in st.records))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=loop.step if payload is not None else None)
    s = cfg.search
    per_epoch = (s.shared_steps or 0) + s.controller_steps
    bar = tqdm(total=s.epochs * per_epoch, initial=st.epoch * per_epoch, disable=not cfg.train.progress, unit="step", leave=False)
    best_ppl = min((r["ppl"] for r in st.records), default=math.inf)

    def shared_step_hook(ls: LoopState, res: StepResult) -> None:
        bar.update(1)
        if ls.step % cfg.train.log_every == 0 and res.ok:
            writer.add_scalar("shared/train_ppl", perplexity(res.loss), ls.step)
            writer.add_scalar("shared/lr", ls.lr, ls.step)
            writer.add_scalar("shared/tokens_per_s", ls.tokens / max(ls.train_seconds, 1e-9), ls.step)
        if not res.ok:
            writer.add_scalar("shared/skipped_steps", ls.skipped, ls.step)
        if hook is not None:
            hook("shared_step", ls.step)

    with open(history_path, "a") as history_file:
        while st.epoch < s.epochs:
            # --- shared phase: train w, one sampled child per window ---------------------------
            bar.set_description(f"epoch {st.epoch} shared | best ppl {best_ppl:.1f}")
            child = lambda: {"genotype": strategy.sample_for_training()}  # noqa: E731
            remaining = s.shared_steps
            while remaining is None or remaining > 0:
                before = loop.step
                ended = train_steps(model, optimizer, splits.train, loop, cfg.train, cfg.data, remaining, child, shared_step_hook)
                if remaining is None:
                    break
                remaining -= loop.step - before
                if not ended and loop.step == before:
                    break
            # --- controller phase --------------------------------------------------------------
            bar.set_description(f"epoch {st.epoch} controller | best ppl {best_ppl:.1f}")
            for _ in range(s.controller_steps):
                n = cfg.screen.candidates if screener is not None else s.children_per_step
                genotypes, handle = strategy.propose(n)
                scores = screener(genotypes) if screener is not None else None
                keep = top_k_indices(scores, cfg.screen.keep) if scores is not None else list(range(n))
                ppls = []
                for i in keep:
                    loss = evaluate(model, splits.valid, cfg.data.bptt, s.reward_batches, st.valid_pos, genotype=genotypes[i])
                    ppls.append(perplexity(loss) if math.isfinite(loss) else math.inf)
                rewards = [reward_from_ppl(p, s.reward_c, s.nonfinite_reward) for p in ppls]
                stats = strategy.update(genotypes, handle, keep, rewards)
                st.valid_pos += s.reward_batches * cfg.data.bptt
                if st.valid_pos >= splits.valid.size(0) - 1:
                    st.valid_pos = 0
                for j, i in enumerate(keep):
                    g = genotypes[i]
                    rec = {
                        "step": st.controller_step, "epoch": st.epoch, "shared_step": loop.step,
                        "hash": g.hash(), "genotype": g.to_dict(), "ppl": ppls[j], "reward": stats.rewards[j],
                        "baseline": stats.baseline, "advantage": stats.advantages[j], "entropy": stats.entropies[j],
                        "diverged": not math.isfinite(ppls[j]),
                    }
                    if scores is not None:
                        rec["screen_score"] = scores[i]
                        rec["screen_rank"] = sorted(scores, reverse=True).index(scores[i])
                    st.records.append(rec)
                    history_file.write(json.dumps(rec) + "\n")
                    best_ppl = min(best_ppl, ppls[j])
                k = st.controller_step
                finite = [p for p in ppls if math.isfinite(p)]
                if finite:
                    writer.add_scalar("controller/child_valid_ppl", sum(finite) / len(finite), k)
                writer.add_scalar("controller/reward", sum(stats.rewards) / len(stats.rewards), k)
                writer.add_scalar("controller/baseline", stats.baseline, k)
                writer.add_scalar("controller/advantage", sum(stats.advantages) / len(stats.advantages), k)
                writer.add_scalar("controller/entropy", sum(stats.entropies) / len(stats.entropies), k)
                writer.add_scalar("controller/loss", stats.loss, k)
                if scores is not None:
                    writer.add_scalar("screen/score_kept", sum(scores[i] for i in keep) / len(keep), k)
                    writer.add_scalar("screen/score_all", sum(scores) / len(scores), k)
                st.controller_step += 1
                bar.update(1)
                if hook is not None:
                    hook("controller_step", st.controller_step)
            # --- end of epoch: lr decay, best cell so far, checkpoint -------------------------
            st.epoch += 1
            if st.epoch >= cfg.train.decay_start:
                loop.lr *= cfg.train.lr_decay
            epoch_recs = [r for r in st.records if r["epoch"] == st.epoch - 1 and math.isfinite(r["ppl"])]
            if epoch_recs:
                best = min(epoch_recs, key=lambda r: r["ppl"])
                _log_cell(writer, "search/epoch_best_cell", Genotype.from_dict(best["genotype"]), best["ppl"], st.epoch)
            history_file.flush()
            save_checkpoint(
                checkpoint_dir(run_dir) / LAST,
                {
                    "config": cfg_dict,
                    "step": loop.step,
                    "state_dicts": {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "strategy": strategy.state_dict()},
                    "loop": loop.to_dict(),
                    "hidden": loop.hidden,
                    "search": {"epoch": st.epoch, "controller_step": st.controller_step, "valid_pos": st.valid_pos, "records": st.records},
                    "generator": gen.get_state(),
                    "rng": rng_state(),
                    "wall_s": wall_before + time.perf_counter() - wall_t0,
                },
            )
            if hook is not None:
                hook("epoch", st.epoch)
    bar.close()

    top = derive(model, strategy, splits.valid, cfg, s.derive_samples)
    best_g = Genotype.from_dict(top[0]["genotype"])
    write_text_atomic(run_dir / "best_genotype.json", best_g.to_json() + "\n")
    write_text_atomic(run_dir / "top_genotypes.json", json.dumps(top[: s.top_k], indent=2))
    from enas_rnn.viz import draw_genotype

    fig = draw_genotype(best_g, run_dir / "best_genotype.png", title=f"best cell: derive ppl {top[0]['ppl']:.1f}")
    writer.add_figure("search/best_cell", fig, st.controller_step)
    writer.add_text("search/best_genotype", "```\n" + json.dumps(best_g.to_dict(), indent=1) + "\n```", st.controller_step)

    metrics = {
        "strategy": s.strategy,
        "space": cfg.space.name,
        "best_ppl": top[0]["ppl"],
        "best_hash": top[0]["hash"],
        "epochs": st.epoch,
        "controller_steps": st.controller_step,
        "shared_steps": loop.step,
        "children_evaluated": len(st.records),
        "diverged_children": sum(r["diverged"] for r in st.records),
        "skipped_shared_steps": loop.skipped,
        "tokens_per_s": loop.tokens / loop.train_seconds if loop.train_seconds > 0 else 0.0,
        "wall_s": wall_before + time.perf_counter() - wall_t0,
        "device": str(device),
    }
    writer.add_hparams(_flat_hparams(cfg_dict), {"hparam/best_ppl": metrics["best_ppl"]}, run_name=".")
    writer.close()
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def derive(model: RNNLM, strategy: Any, valid: torch.Tensor, cfg: Any, n: int) -> list[dict[str, Any]]:
    """Samples n cells, evaluates each distinct one on the *same* first ``derive_batches``
    validation windows with the shared weights, and ranks them (best first).

    Every candidate sees the same windows, unlike ENAS-pytorch's derive, which compared cells on
    different single batches."""
    genotypes, _ = strategy.propose(n)
    seen: dict[str, dict[str, Any]] = {}
    for g in genotypes:
        h = g.hash()
        if h in seen:
            seen[h]["count"] += 1
            continue
        loss = evaluate(model, valid, cfg.data.bptt, cfg.search.derive_batches, 0, genotype=g)
        ppl = perplexity(loss) if math.isfinite(loss) else math.inf
        # Keep the spelling that was evaluated: on shared weights, node numbers and operand slots
        # pick weight rows, so the canonical respelling of a cell is a different supernet child.
        seen[h] = {"hash": h, "ppl": ppl, "count": 1, "genotype": g.to_dict()}
    ranked = sorted(seen.values(), key=lambda r: (r["ppl"], r["hash"]))
    for rank, r in enumerate(ranked):
        r["rank"] = rank + 1
    return ranked


def load_supernet(run_dir: str | Path, device: str = "cpu") -> tuple[RNNLM, DictConfig, Any]:
    """The shared model of a search run (its last checkpoint), its config and its data splits,
    e.g. to evaluate other cells on the same weights (scripts/cross_eval.py)."""
    from enas_rnn.cells import SharedCell

    payload = load_checkpoint(checkpoint_dir(run_dir) / LAST, map_location=device)
    cfg = OmegaConf.merge(OmegaConf.structured(SearchAppConfig), payload["config"])
    splits = load_splits(cfg.data, torch.device(device))
    space = make_space(cfg.space.name, cfg.space.num_nodes)
    shared = SharedCell(space, cfg.model.emb_size, cfg.model.hidden_size, state_clip=cfg.model.state_clip, dropout_h=cfg.model.dropout_h)
    model = RNNLM(len(splits.corpus.vocab), [shared], cfg.model).to(device)
    model.load_state_dict(payload["state_dicts"]["model"])
    return model, cfg, splits


def _log_cell(writer: Any, tag: str, g: Genotype, ppl: float, step: int) -> None:
    from enas_rnn.viz import draw_genotype
    import matplotlib.pyplot as plt

    fig = draw_genotype(g, None, title=f"{tag.split('/')[-1]}: ppl {ppl:.1f}")
    writer.add_figure(tag, fig, step)
    plt.close(fig)
    writer.add_text(tag + "_json", "```\n" + json.dumps(g.to_dict()) + "\n```", step)
