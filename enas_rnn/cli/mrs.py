"""`enas-mrs`: do training-free scores (MRS, hidden covariance) predict trained perplexity on PTB?

    enas-mrs experiment=smoke
    enas-mrs experiment=small space=lstm
    enas-mrs experiment=small space=enas search_run=outputs/search/<run>   # + shared-weight ppl
    enas-mrs experiment=small hydra.run.dir=outputs/mrs/<run>              # continue a study
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.mrs import run_study
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="mrs")
def main(cfg: DictConfig) -> None:
    with friendly_errors():

        out = run_dir()
        report = run_study(cfg, out)
        print(Path(report["summary"]).read_text())
        print(f"wrote {report['csv']}, {report['png']} and {report['summary']}")


if __name__ == "__main__":
    main()
