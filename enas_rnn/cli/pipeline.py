"""`enas-pipeline`: search -> shortlist retraining -> comparison with nn.LSTM -> export, in one folder.

    enas-pipeline experiment=small data.download=true
    enas-pipeline experiment=quick
    enas-pipeline resume=outputs/pipeline/<run>
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.pipeline import run_pipeline
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_pipeline(cfg, out)
        print(metrics["verdict"]["text"])
        print(f"wrote {(cfg.resume or out)}/summary.md")


if __name__ == "__main__":
    main()
