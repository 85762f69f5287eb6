"""`enas-sweep`: synthetic-task runs (nth-element recall, sine regression) swept with Hydra multirun.

    enas-sweep task.seq_len=10 core=gru                      # one run
    enas-sweep -m core=lstm,gru,enas_paper task.seq_len=5,10,20 model.hidden_size=4,8,16 name=nth
    enas-sweep -m ... name=nth                                # again: finished jobs are skipped
    enas-sweep -m sweep_experiment=smoke core=lstm,gru task.seq_len=5,10   # seconds

Each job writes metrics.json in multirun/sweep/<name>/<its overrides>/; the multirun ends with
summary.csv and heatmap_<metric>.png there (axes: summary.x / summary.y / summary.metric / summary.panel,
else the swept keys). `enas-summary <folder>` redraws them with other axes.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from enas_rnn.apps.sweep import run_sweep_job
from enas_rnn.cli.common import CONF_DIR, friendly_errors, log, run_dir, start
from enas_rnn.conf import SweepAppConfig, register_configs
from enas_rnn.summary import sanitize_dirname

register_configs()
# Job folders are named after their overrides (hydra.sweep.subdir in conf/sweep.yaml), made safe here.
OmegaConf.register_new_resolver("enas_dirname", sanitize_dirname, replace=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sweep")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        metrics = run_sweep_job(cfg, out)
        keys = ("status", "core", "task", "seq_len", "hidden_size", "train_size", f"test_{metrics['metric']}",
                "num_params", "steps", "wall_s")
        log.info("done (%s): test %s %s; wrote %s", metrics.get("status"), metrics["metric"],
                 metrics.get(f"test_{metrics['metric']}"), out / "metrics.json")
        print(json.dumps({**{k: metrics.get(k) for k in keys}, "run_dir": str(out)}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start(SweepAppConfig)
    _app()


if __name__ == "__main__":
    main()
