"""`enas-export`: a trained cell as a standalone torch module and a safetensors weights file.

    enas-export run=outputs/train/<run> out=exported
    enas-export run=outputs/compare/<run> out=exported            # the compared cell's best-valid run
    enas-export cell=enas_paper checkpoint=<run>/checkpoints/best.pt out=exported whole_model=true
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.export import run_export
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    with friendly_errors():

        res = run_export(cfg, run_dir())
        print(f"wrote {res.module} and {res.weights} ({res.genotype.space} cell {res.genotype.hash()}, "
              f"from {res.source}; max |exported - trained| = {res.max_error:.2g})")


if __name__ == "__main__":
    main()
