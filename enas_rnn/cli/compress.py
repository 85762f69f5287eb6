"""`enas-compress`: magnitude pruning, k-means weight sharing and both on a trained model, each retrained.

    enas-compress run=outputs/train/<run>
    enas-compress run=<run> compress.prune_levels=[0.5,0.9] compress.clusters=[16] retrain.max_steps=300
    enas-compress resume=<an earlier compress folder>        # continue: its finished variants are kept
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compress import run_compress
from enas_rnn.cli.common import (
    CONF_PATH,
    claim_mode,
    cli_overrides,
    friendly_errors,
    hydra_record,
    log,
    log_name,
    run_dir,
    start,
)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="compress")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_compress(cfg, out, claim_mode(cfg), cli_overrides(), log_name(), hydra_record(cfg))
        o = report["original"]
        log.info("%18s  %11s B  test ppl %.2f", "original", f"{o['stored_bytes']:,}", o["test_ppl"])
        for r in report["variants"]:
            size = f"{r['stored_bytes']:,}" if r.get("stored_bytes") else ""
            log.info("%18s  %11s B  test ppl %.2f  (%s)", r["variant"], size, r.get("test_ppl", float("nan")), r["status"])
        if report.get("export"):
            log.info("exported %s -> %s", report["export"]["variant"], out / report["export"]["module"])
        log.info("done: wrote %s", out / "compression.md")
        print(json.dumps({"run_dir": str(out), "export": report.get("export")}, default=str))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start("enas-compress")
    _app()


if __name__ == "__main__":
    main()
