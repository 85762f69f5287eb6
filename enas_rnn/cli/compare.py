"""`enas-compare`: retrain a cell and the vanilla nn.LSTM under one budget and compare them.

    enas-compare cell=enas_paper
    enas-compare cell=outputs/search/<run>/best_genotype.json extra_cells=[enas_paper] seeds=[0,1,2]
    enas-compare experiment=smoke cell=lstm launcher=local
    enas-compare resume=outputs/compare/<run>        # continue an interrupted comparison
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compare import run_compare_app
from enas_rnn.cli.common import (
    CONF_PATH,
    claim_mode,
    cli_overrides,
    final_line,
    friendly_errors,
    hydra_record,
    log,
    log_name,
    run_dir,
    start,
)

APP = "enas-compare"


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="compare")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_compare_app(cfg, out, claim_mode(cfg), cli_overrides(), log_name(), hydra_record(cfg))
        for s in report["summary"]:
            log.info("%16s %8s  h=%-5s params=%s  test ppl %s  %s", s["model"], s["sizing"], s["hidden_size"],
                     s["num_params"], "–" if s["test_ppl_mean"] is None else f"{s['test_ppl_mean']:.2f}", s["verdict"])
        log.info("done: wrote %s", out / "comparison.md")
        final_line({"cell": report["cell"], "verdict": (report.get("verdict") or {}).get("text"), "run_dir": str(out)})


def main() -> None:
    """Console entry point: the checks that can refuse the command, then the Hydra app."""
    start(APP)
    _app()


if __name__ == "__main__":
    main()
