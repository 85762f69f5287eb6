"""`enas-search`: ENAS or random search with weight sharing, then derive the best cell.

    enas-search experiment=smoke
    enas-search space=enas search=random
    enas-search -m seed=0,1 space=lstm,enas
    enas-search resume=outputs/search/2026-11-23_10-00-00
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.search import run_search
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="search")
def main(cfg: DictConfig) -> None:

    with friendly_errors():
        metrics = run_search(cfg, run_dir())
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
