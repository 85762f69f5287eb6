"""`enas-search`: ENAS or random search with weight sharing, then derive the best cells.

    enas-search experiment=smoke
    enas-search space=enas search=random
    enas-search -m seed=0,1 space=lstm,enas
    enas-search resume=outputs/search/<run>
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.cli.common import (
    CONF_PATH,
    claim_mode,
    cli_overrides,
    final_line,
    friendly_errors,
    hydra_record,
    log_name,
    run_dir,
    start,
)
from enas_rnn.searchrun import run_search

APP = "enas-search"


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="search")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_search(cfg, out, mode=claim_mode(cfg), overrides=cli_overrides(), log_file=log_name(),
                             hydra_record=hydra_record(cfg))
        final_line({**metrics, "seed": cfg.seed, "run_dir": str(out)})


def main() -> None:
    """Console entry point: the checks that can refuse the command, then the Hydra app."""
    start(APP)
    _app()


if __name__ == "__main__":
    main()
