"""CUDA against CPU: the shared and fixed cells, a shared training step, export. Skipped without CUDA.

Run by ``scripts/gpu_check.sh`` (``pytest -m gpu``). Matmuls are compared with TF32 off (torch's
default for matmul), so CUDA and CPU agree to float32 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_app, write_tiny_corpus

from enas_rnn.cells import FixedCell, SharedCell
from enas_rnn.export import generate_source, load_module
from enas_rnn.genotype import get_named
from enas_rnn.runs import load_splits
from enas_rnn.spaces import make_space
from enas_rnn.supernet import build_supernet
from enas_rnn.train import LoopState, train_steps

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

E, H, B, T = 24, 32, 5, 9
CUDA = torch.device("cuda")


def _fwd_bwd(cell, x, hid, g=None):
    cell.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    h0 = hid[0].detach().clone().requires_grad_(True)
    out, (h, c) = cell(x, (h0, hid[1]), g) if g is not None else cell(x, (h0, hid[1]))
    w = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    loss = (out * w).sum() + (h**2).sum() + c.sum()
    if loss.requires_grad:  # a few lstm-space cells read neither x nor any weight
        loss.backward()
    grads = {n: p.grad for n, p in cell.named_parameters() if p.grad is not None}
    return out.detach(), h.detach(), x.grad, h0.grad, grads


def _close(cpu, gpu, atol=2e-5, rtol=1e-4):
    if isinstance(cpu, dict):
        assert cpu.keys() == gpu.keys()
        for k in cpu:
            _close(cpu[k], gpu[k], atol, rtol)
        return
    if cpu is None:
        assert gpu is None
        return
    torch.testing.assert_close(gpu.cpu(), cpu, atol=atol, rtol=rtol)


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_shared_cell_cuda_matches_cpu(space):
    sp = make_space(space, 8)
    cpu = SharedCell(sp, E, H, init_range=0.4)
    gpu = copy.deepcopy(cpu).to(CUDA)
    gen = torch.Generator().manual_seed(0)
    for seed in range(12):
        g = sp.sample(seed)
        x = torch.randn(T, B, E, generator=gen)
        hid = (torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen))
        ref = _fwd_bwd(cpu, x, hid, g)
        got = _fwd_bwd(gpu, x.to(CUDA), tuple(t.to(CUDA) for t in hid), g)
        for a, b in zip(ref, got):
            _close(a, b)


@pytest.mark.parametrize("name", ["lstm", "enas_paper"])
def test_fixed_cell_cuda_matches_cpu(name):
    g = get_named(name)
    cpu = FixedCell(g, E, H, init_range=0.4)
    gpu = copy.deepcopy(cpu).to(CUDA)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, E, generator=gen)
    hid = (torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen))
    for a, b in zip(_fwd_bwd(cpu, x, hid), _fwd_bwd(gpu, x.to(CUDA), tuple(t.to(CUDA) for t in hid))):
        _close(a, b)


def test_cells_run_under_cuda_autocast():
    for space in ("lstm", "enas"):
        cell = SharedCell(space, E, H, num_nodes=6).to(CUDA)
        g = make_space(space, 6).sample(2)
        x = torch.randn(T, B, E, device=CUDA, requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = cell(x, None, g)
        out.float().sum().backward()
        assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in cell.parameters() if p.grad is not None)


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_shared_training_step_cuda_matches_cpu(space, tmp_path):
    # One window of the search's shared step (SGD, weight decay, clipping) on both devices.
    root = write_tiny_corpus(tmp_path / "tiny")
    cfg = compose_app("search", ["experiment=smoke", f"space={space}", f"data.root={root}", "device=cpu",
                                 "train.weight_decay=0.01", "model.dropout_emb=0", "model.dropout_in=0",
                                 "model.dropout_out=0"])
    sp = make_space(space, int(cfg.space.num_nodes))
    g = sp.sample(4)
    results = []
    for device in (torch.device("cpu"), CUDA):
        torch.manual_seed(0)
        splits = load_splits(cfg.data, device)
        model = build_supernet(cfg.model, sp, len(splits.corpus.vocab)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        state = LoopState(lr=cfg.train.lr)
        train_steps(model, opt, splits.train, state, cfg.train, cfg.data, 2, lambda: {"genotype": g})
        results.append({n: p.detach().cpu() for n, p in model.named_parameters()})
    _close(results[0], results[1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["lstm", "enas_paper"])
def test_exported_module_on_cuda_computes_what_fixedcell_computes(name):
    g = get_named(name)
    cell = FixedCell(g, E, H, init_range=0.5).to(CUDA)
    mod = load_module(generate_source(g, cell.state_clip, "m_gpu"), "m_gpu")
    layer = mod.Layer(E, H, num_layers=1).to(CUDA)
    layer.cells[0].load_state_dict(cell.state_dict())
    x = torch.randn(T, B, E, device=CUDA)
    h0, c0 = torch.randn(1, B, H, device=CUDA), torch.randn(1, B, H, device=CUDA)
    with torch.no_grad():
        ref, (h_ref, c_ref) = cell(x, (h0[0], c0[0]))
        out, (h, c) = layer(x, (h0, c0))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h[0], h_ref, atol=1e-6, rtol=1e-5)
