"""`enas-export`: a trained cell as a standalone torch module and a safetensors weights file.

    enas-export run=outputs/train/<run>                              # writes <run>/export/
    enas-export run=outputs/compare/<run> out=exported               # the run the comparison's verdict is about
    enas-export run=outputs/pipeline/<run>                           # the pipeline's winner (as its export stage)
    enas-export cell=enas_paper checkpoint=<run>/checkpoints/best.pt out=exported whole_model=true
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.export import run_export
from enas_rnn.cli.common import CONF_PATH, friendly_errors, log, start


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="export")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        res = run_export(cfg)
        log.info("done: wrote %s and %s (%s cell %s, from %s; max |exported - trained| = %.2g)", res.module,
                 res.weights, res.genotype.space, res.genotype.hash(), res.source, res.max_error)
        print(json.dumps({"module": str(res.module), "weights": str(res.weights), "max_error": res.max_error}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start("enas-export")
    _app()


if __name__ == "__main__":
    main()
