"""`enas-mrs`: do training-free scores (MRS, hidden covariance) predict trained perplexity on PTB?

    enas-mrs experiment=smoke
    enas-mrs experiment=small space=lstm
    enas-mrs experiment=small space=enas search_run=outputs/search/<run>   # + shared-weight ppl
    enas-mrs experiment=small hydra.run.dir=outputs/mrs/<run>              # continue a study
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.mrs import run_study
from enas_rnn.cli.common import (
    CONF_DIR,
    friendly_errors,
    log,
    run_dir,
    start,
)
from enas_rnn.conf import MRSAppConfig, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="mrs")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_study(cfg, out)
        log.info("done: %d cells; wrote %s, %s and %s", report["cells"], report["csv"], report["png"], report["summary"])
        print(json.dumps({"cells": report["cells"], "run_dir": str(out)}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(MRSAppConfig)
    _app()


if __name__ == "__main__":
    main()
