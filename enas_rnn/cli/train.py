"""`enas-train`: train one language model (nn.LSTM or a cell) from scratch on PTB.

    enas-train experiment=smoke
    enas-train model=cell cell=lstm experiment=small
    enas-train resume=outputs/train/2026-11-23_10-00-00
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.train import train_lm
from enas_rnn.cli.common import (
    CONF_DIR,
    cli_overrides,
    friendly_errors,
    log,
    run_dir,
    start,
)
from enas_rnn.conf import TrainAppConfig, register_configs
from enas_rnn.runs import strict

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = train_lm(cfg, out, overrides=cli_overrides())
        where = Path(cfg.get("resume") or out)
        summary = {k: metrics[k] for k in ("valid_ppl", "test_ppl", "num_params", "tokens_per_s", "wall_s", "steps")}
        summary.update(seed=cfg.seed, run_dir=str(where))
        log.info("done: valid ppl %.2f, test ppl %.2f, %s parameters; wrote %s", metrics["valid_ppl"],
                 metrics["test_ppl"], f"{metrics['num_params']:,}", where / "metrics.json")
        print(json.dumps(strict(summary)))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(TrainAppConfig)
    _app()


if __name__ == "__main__":
    main()
