"""Shared fixtures: where the corpora are, a tiny synthetic corpus, and the real Hydra config."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

from enas_rnn.conf import compose_app as _compose_app
from enas_rnn.conf import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
DATA_ROOT = Path(os.environ.get("ENAS_RNN_DATA", REPO.parent / "shared" / "data"))

register_configs()
# Tests run tiny tensors: one thread avoids OpenMP spin-waiting, which made small ops ~40x slower
# on a loaded 2-core machine. Benchmarks (scripts/bench_*.py) keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ptb_root() -> Path:
    """The real PTB folder; tests that need it skip with the reason when it is absent."""
    root = DATA_ROOT / "ptb"
    if not all((root / f).is_file() for f in ("train.txt", "valid.txt", "test.txt")):
        pytest.skip(f"real PTB not found in {root}: set ENAS_RNN_DATA to a folder holding ptb/{{train,valid,test}}.txt")
    return root


def write_tiny_corpus(root: Path, seed: int = 0, lines: int = 400) -> Path:
    """A small learnable corpus (sentences from a tiny grammar), PTB format, in ``root``."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["the cat", "a dog", "the man", "she"], ["eats", "sees", "likes"], ["fish", "the ball", "it"]
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", lines), ("valid.txt", lines // 4), ("test.txt", lines // 4)):
        text = "".join(
            f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(['.', 'today .', 'N times .'])}\n"
            for _ in range(n)
        )
        (root / name).write_text(text)
    return root


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path / "tiny")


def compose_app(config_name: str, overrides: list[str]) -> DictConfig:
    """Builds the real config of an app (conf/<config_name>.yaml) with overrides, as Hydra would."""
    return _compose_app(config_name, overrides)


@pytest.fixture
def app_config() -> Callable[[str, list[str]], DictConfig]:
    return compose_app
