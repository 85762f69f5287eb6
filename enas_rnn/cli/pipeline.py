"""`enas-pipeline`: search -> selection -> comparison with nn.LSTM -> export, in one folder.

    enas-pipeline experiment=small data.download=true
    enas-pipeline experiment=small launcher=local          # independent trainings in parallel processes
    enas-pipeline experiment=small search_from=<finished search or pipeline folder> select.strategy=topk
    enas-pipeline resume=outputs/pipeline/<run>
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.pipeline import run_pipeline
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

APP = "enas-pipeline"


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="pipeline")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_pipeline(cfg, out, claim_mode(cfg), cli_overrides(), log_name(), hydra_record(cfg))
        final_line({"verdict": metrics["verdict"], "winner": metrics["winner"], "seed": cfg.seed, "run_dir": str(out)})


def main() -> None:
    """Console entry point: the checks that can refuse the command, then the Hydra app."""
    start(APP)
    _app()


if __name__ == "__main__":
    main()
