"""`enas-compress`: magnitude pruning, k-means weight sharing and both on a trained model, each retrained.

    enas-compress run=outputs/train/<run>
    enas-compress run=<run> compress.prune_levels=[0.5,0.9] compress.clusters=[16] retrain.max_steps=300
    enas-compress run=<run> export=prune80_share16 hydra.run.dir=<an earlier compress folder>   # reuse variants
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from enas_rnn.apps.compress import run_compress
from enas_rnn.cli.common import CONF_DIR, friendly_errors, run_dir
from enas_rnn.conf import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compress")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_dir()
        report = run_compress(cfg, out)
        o = report["original"]
        print(f"{'original':>18}  {o['stored_bytes']:>11,} B  test ppl {o['test_ppl']:.2f}")
        for r in report["variants"]:
            size = f"{r['stored_bytes']:>11,} B" if r.get("stored_bytes") else " " * 13
            print(f"{r['variant']:>18}  {size}  test ppl {r.get('test_ppl', float('nan')):.2f}  ({r['status']})")
        if report.get("export"):
            print(f"exported {report['export']['variant']} -> {out / report['export']['module']}")
        print(f"wrote {out / 'compression.md'}")


if __name__ == "__main__":
    main()
