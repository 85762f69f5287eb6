"""`enas-compare`: retrain a cell and the vanilla nn.LSTM under one budget and compare them.

    enas-compare cell=enas_paper
    enas-compare cell=outputs/search/<run>/best_genotype.json extra_cells=[enas_paper] seeds=[0,1,2]
    enas-compare experiment=smoke cell=lstm
    enas-compare cell=enas_paper hydra.run.dir=outputs/compare/<run>   # resume an interrupted comparison
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compare import run_compare
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    with friendly_errors():

        out = run_dir()
        report = run_compare(cfg, out)
        for s in report["summary"]:
            print(f"{s['model']:>16} {s['sizing']:>8}  h={s['hidden_size']:<5} params={s['num_params']}  "
                  f"test ppl {s['test_ppl_mean']:.2f}  {s['verdict']}")
        print(f"wrote {out / 'comparison.md'}")


if __name__ == "__main__":
    main()
