"""`enas-train`: train one language model (nn.LSTM, nn.GRU or a cell) from scratch on PTB.

    enas-train experiment=smoke
    enas-train model=cell cell=lstm experiment=small
    enas-train resume=outputs/train/<run>
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
from enas_rnn.trainrun import genotype_of, train_lm

APP = "enas-train"


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out, mode = run_dir(), claim_mode(cfg)
        genotype = None if mode == "resume" else genotype_of(cfg)
        metrics = train_lm(cfg, out, genotype, mode=mode, overrides=cli_overrides(), log_file=log_name(),
                           hydra_record=hydra_record(cfg))
        summary = {k: metrics.get(k) for k in ("valid_ppl", "test_ppl", "num_params", "tokens_per_s", "wall_s", "steps")}
        summary.update(seed=cfg.seed, run_dir=str(out))
        final_line(summary)


def main() -> None:
    """Console entry point: the checks that can refuse the command, then the Hydra app."""
    start(APP)
    _app()


if __name__ == "__main__":
    main()
