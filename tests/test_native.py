"""The C++ enas loop (``enas_rnn/native``) computes what the PyTorch loop computes, and without it the
cell falls back to that loop with one clear warning.

H = 37 so that every fused pass runs full vectors (16 or 8 floats) and a tail; the branch-point
comparison in tests/test_speed.py uses H = 8 (tails only) and, in float32, runs the native loop too.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from enas_rnn import native
from enas_rnn.cells import FixedCell, SharedCell
from enas_rnn.genotype import Genotype, get_named
from enas_rnn.model import linear_cross_entropy
from enas_rnn.spaces import enas as enas_mod
from enas_rnn.spaces import lstm as lstm_mod
from enas_rnn.spaces import make_space

E, H, B = 11, 37, 4

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native enas loop not built here: {native.reason()}"
)


def _forward_backward(cell: SharedCell, g: Genotype, x: Tensor, h0: Tensor, mask: Tensor | None,
                      use_native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Tensor, tuple[Tensor, ...]]:
    with monkeypatch.context() as m:
        if not use_native:
            m.setattr(enas_mod, "_use_native", lambda t: False)
        kind, plan = cell.kind, cell.plan(g)
        xs = x.detach().clone().requires_grad_(True)
        h = h0.detach().clone().requires_grad_(True)
        weights = kind.gather(plan, cell.banks(), cell.rows(plan.keys), E, H)
        leaves = [weights[0], weights[1], *weights[2]]
        out, (h_t, _) = kind.run(plan, weights, xs, (h, torch.zeros_like(h)), mask, cell.state_clip)
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        grads = torch.autograd.grad((out * w).sum() + (h_t ** 2).sum(), [xs, h, *leaves])
    return out.detach(), grads


@needs_native
@pytest.mark.parametrize("clip", [None, 25.0, 0.2])  # 0.2: the guard's clamps act
def test_native_loop_matches_pytorch_loop(clip: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # init_range 0.1: contractive cells, so rounding differences are not amplified step after step
    # (with 0.8 and no guard some cells are chaotic at H = 37 and 1e-7 grows 10x per step).
    torch.manual_seed(0)
    sp = make_space("enas", 8)
    cell = SharedCell(sp, E, H, state_clip=clip, init_range=0.1)
    gen = torch.Generator().manual_seed(0)
    genotypes = [sp.sample(seed) for seed in range(12)]
    if clip == 25.0:
        genotypes.append(get_named("enas_paper"))  # 12 nodes: 6 groups, runs of two activations
    for i, g in enumerate(genotypes):
        if g.num_nodes != 8:
            cell = SharedCell(make_space("enas", g.num_nodes), E, H, state_clip=clip, init_range=0.1)
        x = torch.randn(6, B, E, generator=gen) * 2
        h0 = torch.randn(B, H, generator=gen)
        mask = (torch.rand(B, H, generator=gen) > 0.3).float() / 0.7 if i % 3 == 0 else None
        out_n, grads_n = _forward_backward(cell, g, x, h0, mask, True, monkeypatch)
        out_p, grads_p = _forward_backward(cell, g, x, h0, mask, False, monkeypatch)
        torch.testing.assert_close(out_n, out_p, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads_n, grads_p):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@needs_native
def test_native_loop_without_autograd_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    g = get_named("enas_paper")
    cell = SharedCell("enas", E, H, num_nodes=12)
    x = torch.randn(5, B, E)
    with torch.no_grad():
        out_n, (h_n, _) = cell(x, None, g)
        monkeypatch.setattr(enas_mod, "_use_native", lambda t: False)
        out_p, (h_p, _) = cell(x, None, g)
    torch.testing.assert_close(out_n, out_p, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_n, h_p, atol=1e-6, rtol=1e-5)


@needs_native
def test_native_loop_is_deterministic() -> None:
    g = get_named("enas_paper")
    cell = SharedCell("enas", E, H, num_nodes=12)
    x = torch.randn(4, B, E, requires_grad=True)
    runs = []
    for _ in range(2):
        out, _ = cell(x, None, g)
        (gx,) = torch.autograd.grad(out.square().sum(), [x])
        runs.append((out.detach(), gx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@needs_native
def test_native_loop_rejects_a_wrong_buffer_with_a_message() -> None:
    plan = make_space("enas", 4).compile(make_space("enas", 4).sample(0), None)
    groups, act1, loose, clip = plan.native_meta()
    ws = [torch.randn(H, 2 * k * H) for k in plan.sizes]
    with pytest.raises(RuntimeError, match="out has shape"):
        native.ops().loop_forward(torch.randn(3, B, 2 * H), torch.randn(B, H), None, torch.randn(H, 2 * H), ws,
                                  groups, act1, loose, clip, None, None, [], torch.empty(2, B, H))


def test_without_a_compiler_the_cell_warns_once_and_runs_the_pytorch_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'enas_rnn_native': g++: not found")

    monkeypatch.setattr(native, "_state", {"tried": False, "ok": False, "reason": None})
    monkeypatch.setattr(native, "_build", no_compiler)
    monkeypatch.delenv("ENAS_RNN_NATIVE", raising=False)
    cell = FixedCell(get_named("enas_paper"), E, H)
    x = torch.randn(3, B, E, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="g\\+\\+: not found.*PyTorch code instead"):
        out, _ = cell(x, None)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        cell(x, None)
    assert not native.available() and "g++: not found" in (native.reason() or "")


def test_env_switch_disables_the_native_loop_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_state", {"tried": False, "ok": False, "reason": None})
    monkeypatch.setenv("ENAS_RNN_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()
    assert native.reason() == "disabled by ENAS_RNN_NATIVE=0"
    with pytest.raises(RuntimeError, match="not available: disabled"):
        native.ops()


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # A build killed midway leaves its lock file; torch's loader would wait for it forever.
    import os

    import torch.utils.cpp_extension as cpp

    calls: list[str] = []
    monkeypatch.setattr(cpp, "load", lambda **kw: calls.append(kw["build_directory"]))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = native._build_dir() / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    native._build()
    assert lock.exists() and calls == [str(lock.parent)]  # fresh: another process may be building
    os.utime(lock, (0, 0))
    native._build()
    assert not lock.exists()


# ============================================================================ the lstm space
def _assert_near(a: Tensor, b: Tensor, tol: float) -> None:
    """|a - b| <= tol |b| in norm: rounding may move a single element across a relu/clamp boundary
    (its gradient then flips between 0 and g), which an elementwise check would call a failure."""
    err, ref = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    assert err <= tol * ref + 1e-6, f"relative error {err / max(ref, 1e-12):.2e} > {tol:.0e}"


def _lstm_forward_backward(cell: SharedCell, g: Genotype, x: Tensor, h0: Tensor, c0: Tensor, mask: Tensor | None,
                           use_native: bool, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        if not use_native:
            m.setattr(lstm_mod, "_use_native", lambda plan, t: False)
        kind, plan = cell.kind, cell.plan(g)
        xs = x.detach().clone().requires_grad_(True)
        h = h0.detach().clone().requires_grad_(True)
        c = c0.detach().clone().requires_grad_(True)
        weights = kind.gather(plan, cell.banks(), cell.rows(plan.keys), E, H)
        out, (h_t, c_t) = kind.run(plan, weights, xs, (h, c), mask, cell.state_clip)
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        loss = (out * w).sum() + (h_t ** 2).sum() + (c_t * 0.3).sum()
        grads = torch.autograd.grad(loss, [xs, h, c, *weights])
    return out.detach(), c_t.detach(), grads


@needs_native
@pytest.mark.parametrize("clip", [None, 25.0, 0.2])
def test_native_lstm_loop_matches_autograd_loop(clip: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    sp = make_space("lstm", 6)
    cells = {n: SharedCell(make_space("lstm", n), E, H, state_clip=clip, init_range=0.1) for n in (4, 6)}
    gen = torch.Generator().manual_seed(0)
    genotypes = [get_named("lstm")] + [sp.sample(seed) for seed in range(15)]
    compared = 0
    for i, g in enumerate(genotypes):
        cell = cells[g.num_nodes]
        if not cell.plan(g).keys:
            continue  # a cell that never reads xh keeps the autograd loop
        x = torch.randn(5, B, E, generator=gen)
        h0, c0 = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen) * 0.5
        mask = (torch.rand(B, H, generator=gen) > 0.3).float() / 0.7 if i % 3 == 0 else None
        out_n, c_n, grads_n = _lstm_forward_backward(cell, g, x, h0, c0, mask, True, monkeypatch)
        out_p, c_p, grads_p = _lstm_forward_backward(cell, g, x, h0, c0, mask, False, monkeypatch)
        if not all(torch.isfinite(t).all() for t in (out_p, c_p, *grads_p)):
            continue  # without the guard some cells overflow in both loops: nothing to compare
        compared += 1
        _assert_near(out_n, out_p, 1e-5)
        _assert_near(c_n, c_p, 1e-5)
        for a, b in zip(grads_n, grads_p):
            _assert_near(a, b, 1e-4)
    assert compared >= 12


@needs_native
def test_native_lstm_loop_without_autograd_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    sp = make_space("lstm", 6)
    cell = SharedCell(sp, E, H, init_range=0.1)
    x = torch.randn(4, B, E)
    for seed in range(6):
        g = sp.sample(seed)
        with torch.no_grad():
            out_n, (h_n, c_n) = cell(x, None, g)
            with monkeypatch.context() as m:
                m.setattr(lstm_mod, "_use_native", lambda plan, t: False)
                out_p, (h_p, c_p) = cell(x, None, g)
        torch.testing.assert_close(out_n, out_p, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c_n, c_p, atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("V", [37, 64])  # 37: the vector loops' scalar tail runs
def test_native_softmax_xent_matches_log_softmax(V: int) -> None:
    torch.manual_seed(0)
    logits = torch.randn(9, V) * 4
    y = torch.randint(V, (9,))
    ref = -torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    for normalize in (True, False):
        buf = logits.clone()
        loss = native.ops().softmax_xent_(buf, y, normalize)
        assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-6)
        expect = torch.softmax(logits, 1) if normalize else torch.exp(logits - logits.amax(1, keepdim=True))
        assert torch.allclose(buf, expect, rtol=1e-6, atol=1e-7)
    bad = logits.clone()
    bad[2, 5], bad[4, V - 1] = float("nan"), float("inf")  # a non-finite loss: the step gets skipped
    for loss in (native.ops().xent_rows(bad, y), native.ops().softmax_xent_(bad.clone(), y, True)):
        assert not torch.isfinite(loss[[2, 4]]).any() and torch.isfinite(loss[[0, 1, 3]]).all()
    assert torch.allclose(native.ops().xent_rows(logits, y), ref, rtol=1e-6, atol=1e-6)  # read-only
    assert torch.allclose(native.ops().xent_rows(logits[:, :-1], y.clamp(max=V - 2)),  # strided rows
                          -torch.log_softmax(logits[:, :-1], 1).gather(1, y.clamp(max=V - 2)[:, None]).squeeze(1),
                          rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="out of range"):
        native.ops().softmax_xent_(logits.clone(), torch.full((9,), V), True)


def test_linear_cross_entropy_without_native_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "available", lambda: False)  # the PyTorch ops' path
    torch.manual_seed(1)
    x, w, b = torch.randn(13, H, requires_grad=True), torch.randn(29, H, requires_grad=True), torch.randn(29)
    y = torch.randint(29, (13,))
    got, ref = linear_cross_entropy(x, w, b, y), F.cross_entropy(F.linear(x, w, b), y)
    assert torch.allclose(got, ref, rtol=1e-6)
    for g, r in zip(torch.autograd.grad(got, [x, w]), torch.autograd.grad(ref, [x, w])):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize("space", ["enas", "lstm"])
def test_native_loops_do_not_depend_on_the_thread_count(space: str) -> None:
    # H = 200, B = 100: large enough that a step's elementwise passes split their batch rows over the
    # threads (enas_loop.cpp's kParallelFloats), with a vector tail at every row's end (200 = 12 x 16 + 8).
    # Outputs and every gradient must be bitwise the same at 1 and 2 threads (the GEMMs included).
    Es, Hs, Bs = 24, 200, 100
    torch.manual_seed(0)
    sp = make_space(space, 12 if space == "enas" else 8)
    cell = SharedCell(sp, Es, Hs, state_clip=25.0, init_range=0.1)
    named = get_named("enas_paper" if space == "enas" else "lstm")
    genotypes = [named] + [g for g in (sp.sample(seed) for seed in range(8)) if cell.plan(g).keys][:3]
    gen = torch.Generator().manual_seed(1)
    cases = []
    for i, g in enumerate(genotypes):
        x, h0, c0 = torch.randn(4, Bs, Es, generator=gen), torch.randn(Bs, Hs, generator=gen), torch.randn(Bs, Hs, generator=gen)
        mask = (torch.rand(Bs, Hs, generator=gen) > 0.3).float() / 0.7 if i % 2 else None
        cases.append((g, x, h0, c0 if space == "lstm" else torch.zeros_like(h0), mask))

    def run(g: Genotype, x: Tensor, h0: Tensor, c0: Tensor, mask: Tensor | None) -> list[Tensor]:
        kind, plan = cell.kind, cell.plan(g)
        xs, h, c = (t.clone().requires_grad_(True) for t in (x, h0, c0))
        weights = kind.gather(plan, cell.banks(), cell.rows(plan.keys), Es, Hs)
        leaves = [weights[0], weights[1], *weights[2]] if space == "enas" else list(weights)
        out, (h_t, c_t) = kind.run(plan, weights, xs, (h, c), mask, cell.state_clip)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + (h_t ** 2).sum() + (c_t * 0.3).sum()
        wrt = [xs, h, *leaves] + ([c] if space == "lstm" else [])
        with torch.no_grad():  # the loop without autograd (its own code path: no states kept)
            out_ng = kind.run(plan, weights, x, (h0, c0), mask, cell.state_clip)[0]
        return [out.detach(), out_ng, *torch.autograd.grad(loss, wrt)]

    before = torch.get_num_threads()
    try:
        got = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            got[n] = [run(*case) for case in cases]
    finally:
        torch.set_num_threads(before)
    for one, two in zip(got[1], got[2]):
        assert len(one) == len(two) and all(torch.isfinite(a).all() and torch.equal(a, b) for a, b in zip(one, two))
