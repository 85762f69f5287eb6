"""`enas-compress`: magnitude pruning, k-means weight sharing and both on a trained model, each retrained.

    enas-compress run=outputs/train/<run>
    enas-compress run=<run> compress.prune_levels=[0.5,0.9] compress.clusters=[16] retrain.max_steps=300
    enas-compress run=<run> export=prune80_share16 hydra.run.dir=<an earlier compress folder>   # reuse variants
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compress import run_compress
from enas_rnn.cli.common import CONF_DIR, friendly_errors, log, run_dir, start
from enas_rnn.conf import CompressAppConfig, register_configs
from enas_rnn.runs import folder_lock

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compress")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        with folder_lock(out, "enas-compress run"):
            report = run_compress(cfg, out)
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
    start(CompressAppConfig)
    _app()


if __name__ == "__main__":
    main()
