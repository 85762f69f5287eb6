#!/usr/bin/env python
"""The prepared GPU check (``scripts/gpu_check.sh`` calls this): one JSON of results.

Parts, each under its own time limit so the whole fits in 8 minutes on one CUDA GPU:

1. ``pytest -m gpu tests/test_gpu.py`` - CUDA against CPU for the shared and fixed cells, a shared
   training step, export on CUDA;
2. ``scripts/bench_cell.py --device cuda --compile`` - the cells alone, eager and (FixedCell(lstm))
   ``torch.compile``d, against cuDNN's nn.LSTM;
3. ``scripts/bench_shared.py --device cuda`` - the search's shared and controller steps at the
   bench's three configs against an nn.LSTM LM;
4. a paper-size search (enas space, 12 nodes, H = E = 1000, B = 64, T = 35) for a fixed number of
   steps through ``enas-search`` itself, and the time a full search (150 epochs of 400 shared and
   2000 controller steps, ENAS-pytorch's schedule) would take at the measured rates.

Without CUDA it says so and exits 0. ``--smoke`` runs every part on the CPU at toy sizes (to test
this script, not to measure anything).

    scripts/gpu_check.sh            # writes $OUT/gpu_check.json (or outputs/gpu_check/)
    python scripts/gpu_check.py --out /tmp/g --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(cmd: list[str], timeout: float, cwd: Path = REPO, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a command with a time limit; returns its exit status, time and output tails."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")) + f"\n[timed out after {timeout} s]"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "stdout": out, "stderr_tail": err[-3000:]}


def last_json(text: str) -> Any:
    """The last top-level JSON object printed on stdout (benches and enas-search print one)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start + 1
    for s in (start, text.find("{")):
        if s < 0:
            continue
        try:
            return json.loads(text[s:])
        except json.JSONDecodeError:
            continue
    for line in reversed(text.splitlines()):  # enas-search prints its metrics on one line
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def find_ptb() -> Path | None:
    cands = []
    if os.environ.get("ENAS_RNN_DATA"):
        cands.append(Path(os.environ["ENAS_RNN_DATA"]) / "ptb")
    cands += [REPO / "data" / "ptb", REPO.parent / "shared" / "data" / "ptb"]
    for p in cands:
        if all((p / f).is_file() for f in ("train.txt", "valid.txt", "test.txt")):
            return p
    return None


def synthetic_ptb(root: Path, vocab: int = 10_000, words: int = 400_000, seed: int = 0) -> Path:
    """A PTB-shaped corpus (a 10k vocabulary, Zipf-distributed words) when the real one is absent:
    timings depend on the sizes, not on the words."""
    rng = random.Random(seed)
    names = [f"w{i}" for i in range(vocab - 1)]
    weights = [1.0 / (i + 1) for i in range(len(names))]
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", words), ("valid.txt", words // 10), ("test.txt", words // 10)):
        toks = rng.choices(names, weights, k=n)
        lines = [" ".join(toks[i:i + 20]) for i in range(0, n, 20)]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def gpu_tests(out_dir: Path, timeout: float, smoke: bool) -> dict[str, Any]:
    xml = out_dir / "gpu_tests.xml"
    args = [PY, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", f"--junitxml={xml}", "-p", "no:cacheprovider"]
    r = run(args, timeout)
    counts = {}
    if xml.is_file():
        head = xml.read_text()[:2000]
        for key in ("tests", "failures", "errors", "skipped"):
            m = re.search(rf'{key}="(\d+)"', head)
            counts[key] = int(m.group(1)) if m else None
    return {"rc": r["rc"], "seconds": r["seconds"], **counts, "summary": r["stdout"].strip().splitlines()[-1:],
            "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def bench(script: str, extra: list[str], timeout: float) -> dict[str, Any]:
    r = run([PY, f"scripts/{script}", *extra], timeout)
    return {"rc": r["rc"], "seconds": r["seconds"], "cmd": r["cmd"], "report": last_json(r["stdout"]),
            "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def paper_search(data: Path, device: str, steps: tuple[int, int], timeout: float, smoke: bool) -> dict[str, Any]:
    shared, controller = steps
    size = 32 if smoke else 1000
    batch = 8 if smoke else 64
    with tempfile.TemporaryDirectory(prefix="gpu_check_search_") as tmp:
        overrides = [
            "space=enas", "space.num_nodes=12", f"model.emb_size={size}", f"model.hidden_size={size}",
            f"data.batch_size={batch}", "data.bptt=35", f"data.root={data}", "search.epochs=1",
            f"search.shared_steps={shared}", f"search.controller_steps={controller}", "search.derive_samples=4",
            "search.derive_batches=2", "train.progress=false", f"device={device}", f"hydra.run.dir={tmp}/run",
        ]
        r = run([PY, "-m", "enas_rnn.cli.search", *overrides], timeout)
        metrics = last_json(r["stdout"])
    return {"rc": r["rc"], "seconds": r["seconds"], "cmd": r["cmd"], "metrics": metrics,
            "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def projection(shared_report: Any, config: str) -> dict[str, Any] | None:
    """Hours of a full search (ENAS-pytorch's schedule) at the bench's measured step times."""
    try:
        res = shared_report["results"]
        t_s = res[f"{config} shared step"]["median_ms"] / 1e3
        t_c = res[f"{config} controller step"]["median_ms"] / 1e3
    except (KeyError, TypeError):
        return None
    epochs, n_s, n_c = 150, 400, 2000
    hours = epochs * (n_s * t_s + n_c * t_c) / 3600
    return {"schedule": f"{epochs} epochs x ({n_s} shared + {n_c} controller steps), derive not counted",
            "shared_step_s": t_s, "controller_step_s": t_c, "hours": round(hours, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--smoke", action="store_true", help="every part on the CPU at toy sizes (tests this script)")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch  # noqa: PLC0415 - after argparse: --help works without torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check.")
        return 0
    device = "cpu" if args.smoke else "cuda"
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "smoke": args.smoke,
    }
    if not args.smoke:
        props = torch.cuda.get_device_properties(0)
        report["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    ptb = find_ptb()
    tmp = tempfile.TemporaryDirectory(prefix="gpu_check_data_")
    data = ptb if ptb is not None else synthetic_ptb(Path(tmp.name) / "ptb", words=40_000 if args.smoke else 400_000)
    report["data"] = str(ptb) if ptb is not None else "synthetic 10k-word corpus (PTB not found)"
    env_data = ["--data", str(data)]
    print(f"gpu_check on {report['device']} -> {out_dir}", flush=True)

    # Time limits (s): 110 + 130 + 110 + 100 = 450, under 8 minutes with start-up.
    report["gpu_tests"] = gpu_tests(out_dir, 110, args.smoke)
    print(f"  gpu tests: rc={report['gpu_tests']['rc']} {report['gpu_tests'].get('summary')}", flush=True)
    cell_args = ["--device", device, "--repeats", "5" if args.smoke else "50", "--warmup", "2" if args.smoke else "10"]
    if args.smoke:
        cell_args += ["--hidden", "32", "--input", "32", "--batch", "4", "--bptt", "5"]
    else:
        cell_args += ["--compile"]
    report["bench_cell"] = bench("bench_cell.py", cell_args, 130)
    print(f"  bench_cell: rc={report['bench_cell']['rc']}", flush=True)
    shared_args = ["--device", device, *env_data, "--repeats", "2" if args.smoke else "10", "--warmup", "1" if args.smoke else "3"]
    if args.smoke:
        shared_args += ["--configs", "lstm-256", "--bptt", "5"]
    report["bench_shared"] = bench("bench_shared.py", shared_args, 110)
    print(f"  bench_shared: rc={report['bench_shared']['rc']}", flush=True)
    report["paper_search"] = paper_search(data, device, (3, 3) if args.smoke else (60, 60), 100, args.smoke)
    print(f"  paper-size search: rc={report['paper_search']['rc']}", flush=True)
    report["full_search_projection"] = projection(report["bench_shared"]["report"], "enas-1000")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} ({report['seconds']} s)")
    failed = [k for k in ("gpu_tests", "bench_cell", "bench_shared", "paper_search") if report[k]["rc"] != 0]
    if failed:
        print(f"gpu_check: parts that failed: {', '.join(failed)} (see their stderr_tail in the JSON)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
