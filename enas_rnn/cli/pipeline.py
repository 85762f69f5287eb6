"""`enas-pipeline`: search -> shortlist retraining -> comparison with nn.LSTM -> export, in one folder.

    enas-pipeline experiment=small data.download=true
    enas-pipeline experiment=quick
    enas-pipeline resume=outputs/pipeline/<run>
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.pipeline import run_pipeline
from enas_rnn.cli.common import (
    CONF_DIR,
    cli_overrides,
    friendly_errors,
    log,
    run_dir,
    start,
)
from enas_rnn.conf import PipelineAppConfig, register_configs
from enas_rnn.runs import strict

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_pipeline(cfg, out, overrides=cli_overrides())
        where = Path(cfg.get("resume") or out)
        log.info("verdict: %s", metrics["verdict"]["text"])
        log.info("done: wrote %s", where / "summary.md")
        print(json.dumps(strict({"verdict": metrics["verdict"], "winner": metrics["winner"], "seed": cfg.seed,
                                 "run_dir": str(where)})))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(PipelineAppConfig)
    _app()


if __name__ == "__main__":
    main()
