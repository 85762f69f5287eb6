"""Device strings are checked before any work: what this machine lacks is one ConfigError naming what it has."""

from __future__ import annotations

import pytest
import torch

from enas_rnn.errors import ConfigError
from enas_rnn.runs import check_device, resolve_device, valid_devices


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a machine with ``gpus`` CUDA devices and MPS or not."""

    def make(gpus: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return make


def test_a_cpu_machine_accepts_auto_and_cpu_only(machine) -> None:
    machine(gpus=0)
    assert valid_devices() == ["auto", "cpu"]
    for ok in ("auto", "cpu"):
        check_device(ok)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device=mps but MPS .* not available here: valid values on this machine "
                                          r"are auto, cpu$"):
        check_device("mps")
    with pytest.raises(ConfigError, match=r"device=cuda:0 but CUDA is not available here: .* auto, cpu$"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match=r"invalid config value device='gpu': valid values on this machine are "
                                          r"auto, cpu$"):
        check_device("gpu")


def test_cuda_indices_are_checked_against_the_device_count(machine) -> None:
    machine(gpus=2)
    assert valid_devices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]
    for ok in ("cuda", "cuda:0", "cuda:1"):
        check_device(ok)
    with pytest.raises(ConfigError, match=r"device=cuda:2 but this machine has 2 CUDA devices: .* cuda:0, cuda:1$"):
        check_device("cuda:2")
    for bad in ("cuda:", "cuda:-1", "cuda1", "CUDA", "cpu:0", ""):
        with pytest.raises(ConfigError, match="valid values on this machine"):
            check_device(bad)


def test_mps_where_it_exists(machine) -> None:
    machine(gpus=0, mps=True)
    check_device("mps")
    assert valid_devices() == ["auto", "cpu", "mps"]


def test_check_device_has_no_side_effects(machine) -> None:
    machine(gpus=0)
    torch.set_flush_denormal(False)
    check_device("cpu")
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # only resolve_device sets the float mode
    resolve_device("cpu")
    assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
