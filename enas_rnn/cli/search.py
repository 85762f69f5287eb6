"""`enas-search`: ENAS or random search with weight sharing, then derive the best cells.

    enas-search experiment=smoke
    enas-search space=enas search=random
    enas-search -m seed=0,1 space=lstm,enas
    enas-search resume=outputs/search/2026-11-23_10-00-00
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.search import run_search
from enas_rnn.cli.common import (
    CONF_DIR,
    cli_overrides,
    friendly_errors,
    log,
    run_dir,
    start,
)
from enas_rnn.conf import SearchAppConfig, register_configs
from enas_rnn.runs import strict

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="search")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_search(cfg, out, overrides=cli_overrides())
        where = Path(cfg.get("resume") or out)
        log.info("done: best cell %s, shared-weight ppl %.1f; wrote %s", metrics["best_hash"], metrics["best_ppl"],
                 where / "best_genotype.json")
        print(json.dumps(strict({**metrics, "seed": cfg.seed, "run_dir": str(where)})))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(SearchAppConfig)
    _app()


if __name__ == "__main__":
    main()
