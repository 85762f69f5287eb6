"""`enas-train`: train a language model (nn.LSTM baseline or a genotype) from scratch on PTB.

    enas-train experiment=smoke
    enas-train model=cell cell=lstm experiment=small
    enas-train resume=outputs/train/2026-11-23_10-00-00
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.train import train_lm
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:

    with friendly_errors():
        metrics = train_lm(cfg, run_dir())
        summary = {k: metrics[k] for k in ("valid_ppl", "test_ppl", "num_params", "tokens_per_s", "wall_s", "steps")}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
