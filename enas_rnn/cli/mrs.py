"""`enas-mrs`: do training-free scores (MRS, hidden covariance) predict trained perplexity on PTB?

    enas-mrs experiment=smoke
    enas-mrs experiment=small space=lstm
    enas-mrs experiment=small space=enas search_run=outputs/search/<run>   # + shared-weight ppl
    enas-mrs experiment=small launcher=local                               # cells trained side by side
    enas-mrs resume=outputs/mrs/<run>                                      # continue a study
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.mrs import run_study
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


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="mrs")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_study(cfg, out, claim_mode(cfg), cli_overrides(), log_name(), hydra_record(cfg))
        log.info("done: %d cells; wrote %s, %s and %s", report["cells"], report["csv"], report["png"], report["summary"])
        print(json.dumps({"cells": report["cells"], "run_dir": str(out)}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start("enas-mrs")
    _app()


if __name__ == "__main__":
    main()
