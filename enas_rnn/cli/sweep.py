"""`enas-sweep`: synthetic-task runs (nth-element recall, sine regression) swept with Hydra multirun.

    enas-sweep task.seq_len=10 core=gru                      # one run
    enas-sweep -m core=lstm,gru,enas_paper task.seq_len=5,10,20 model.hidden_size=4,8,16
    enas-sweep -m ... resume=multirun/sweep/<date>            # again: finished jobs are reused
    enas-sweep -m experiment=smoke core=lstm,gru task.seq_len=5,10   # seconds

Each job writes metrics.json in multirun/sweep/<date>/<its overrides>/; the multirun ends with
summary.csv and heatmap_<metric>.png there (axes: summary.x / summary.y / summary.metric / summary.panel,
else the swept keys). `enas-summary <folder>` redraws them with other axes.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.sweep import run_sweep_job
from enas_rnn.cli.common import CONF_PATH, claim_mode, friendly_errors, hydra_record, log, log_name, run_dir, start


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="sweep")
def _app(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        mode = "job" if claim_mode(cfg) != "new" else "new"
        metrics = run_sweep_job(cfg, out, mode, log_name(), hydra_record(cfg))
        keys = ("status", "core", "task", "seq_len", "hidden_size", "train_size", f"test_{metrics['metric']}",
                "num_params", "steps", "wall_s")
        log.info("done (%s): test %s %s; wrote %s", metrics.get("status"), metrics["metric"],
                 metrics.get(f"test_{metrics['metric']}"), out / "metrics.json")
        print(json.dumps({**{k: metrics.get(k) for k in keys}, "run_dir": str(out)}))


def main() -> None:
    """Console entry point: checks that need no Hydra, then the Hydra app."""
    start("enas-sweep")
    _app()


if __name__ == "__main__":
    main()
