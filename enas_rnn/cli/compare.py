"""`enas-compare`: retrain a cell and the vanilla nn.LSTM under one budget and compare them.

    enas-compare cell=enas_paper
    enas-compare cell=outputs/search/<run>/best_genotype.json extra_cells=[enas_paper] seeds=[0,1,2]
    enas-compare experiment=smoke cell=lstm
    enas-compare cell=enas_paper hydra.run.dir=outputs/compare/<run>   # resume an interrupted comparison
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compare import run_compare
from enas_rnn.cli.common import (
    CONF_DIR,
    friendly_errors,
    log,
    run_dir,
    start,
)
from enas_rnn.conf import CompareAppConfig, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_compare(cfg, out)
        for s in report["summary"]:
            log.info("%16s %8s  h=%-5s params=%s  test ppl %s  %s", s["model"], s["sizing"], s["hidden_size"],
                     s["num_params"], "–" if s["test_ppl_mean"] is None else f"{s['test_ppl_mean']:.2f}", s["verdict"])
        log.info("done: wrote %s", out / "comparison.md")
        print(json.dumps({"cell": report["cell"], "run_dir": str(out)}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(CompareAppConfig)
    _app()


if __name__ == "__main__":
    main()
