"""`enas-export`: a trained cell as a standalone torch module and a safetensors weights file.

    enas-export run=outputs/train/<run>                              # writes <run>/export/
    enas-export run=outputs/compare/<run> out=exported               # the compared cell's best-valid run
    enas-export cell=enas_paper checkpoint=<run>/checkpoints/best.pt out=exported whole_model=true
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.export import run_export
from enas_rnn.cli.common import (
    CONF_DIR,
    friendly_errors,
    log,
    start,
)
from enas_rnn.conf import ExportAppConfig, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        res = run_export(cfg)
        log.info("done: wrote %s and %s (%s cell %s, from %s; max |exported - trained| = %.2g)", res.module,
                 res.weights, res.genotype.space, res.genotype.hash(), res.source, res.max_error)
        print(json.dumps({"module": str(res.module), "weights": str(res.weights), "max_error": res.max_error}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(ExportAppConfig)
    _app()


if __name__ == "__main__":
    main()
