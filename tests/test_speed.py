"""Speed paths compute what the code at the branch point computed, up to float rounding.

The fused enas loop (a hand-written backward) is checked against the autograd loop it replaced
(copied below verbatim from the branch point, commit cf65292); the row-held supernet banks against
a dense bank trained by the same SGD step; plus the scratch-buffer pool and the layout change.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from enas_rnn.cells import SharedCell
from enas_rnn.genotype import Genotype, get_named
from enas_rnn.kernels import BufferPool, hoist
from enas_rnn.model import ModelConfig, build_model, linear_cross_entropy
from enas_rnn.spaces import make_space

E, H, B = 6, 8, 3  # E != H catches transposed weights


def branch_point_run_enas(plan: Any, weights: tuple[Any, ...], x: Tensor, hidden: tuple[Tensor, Tensor],
                          mask: Tensor | None, clip: float | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``enas_rnn.spaces.enas.run_enas`` at the branch point (plain autograd, StepGEMM); only the
    plan fields it read that the plan no longer holds are derived here (``kernels``, ``num_regs``)."""
    w_hw_x, w_hw_h, w_groups = weights
    T, B, E = x.shape
    h, c_dummy = hidden
    H = h.shape[-1]
    if clip is not None:
        h = F.hardtanh(h, -clip, clip)
    xp, w_rec, tape = hoist(x.reshape(T * B, E), w_hw_x, None, w_hw_h, T, B)
    bases = [hoist(None, None, None, w, T, B) for w in w_groups]
    regs: list[Any] = [None] * (len(plan.keys) + 2)
    act1 = None if plan.act1 is None else plan.act1.fn
    groups, loose = plan.groups, plan.loose
    inv_loose = 1.0 / len(loose)
    outs = []
    for t, xp_t in enumerate(xp):
        h_in = h if mask is None else h * mask
        if tape is not None:
            tape.append(h_in.detach())
        g_pre, c_pre = torch.addmm(xp_t, h_in, w_rec).view(B, 2, H).unbind(1)
        regs[1] = torch.lerp(h.to(c_pre.dtype), c_pre if act1 is None else act1(c_pre), torch.sigmoid(g_pre))
        for grp, (base, w, g_tape) in zip(groups, bases):
            kernels = tuple((None if op is None else op.fn, n) for op, n in grp.runs)
            s_p = regs[grp.parent]
            if g_tape is not None:
                g_tape.append(s_p.detach())
            k = len(grp.children)
            out = torch.addmm(base[t], s_p, w)
            if k == 1:
                g_pre, c_pre = out.view(B, 2, H).unbind(1)
                fn = kernels[0][0]
                regs[grp.children[0]] = torch.lerp(
                    s_p.to(c_pre.dtype), c_pre if fn is None else fn(c_pre), torch.sigmoid(g_pre)
                )
                continue
            g_pre, c_pre = out.view(B, 2, k, H).unbind(1)
            gate = torch.sigmoid(g_pre)
            s_b = s_p.to(c_pre.dtype).unsqueeze(1)
            if len(kernels) == 1:
                fn = kernels[0][0]
                parts = torch.lerp(s_b, c_pre if fn is None else fn(c_pre), gate).unbind(1)
            else:
                sizes = [n for _, n in kernels]
                parts = []
                for (fn, _), c_run, g_run in zip(kernels, c_pre.split(sizes, 1), gate.split(sizes, 1)):
                    parts.extend(torch.lerp(s_b, c_run if fn is None else fn(c_run), g_run).unbind(1))
            for r, v in zip(grp.children, parts):
                regs[r] = v
        if len(loose) == 1:
            h = regs[loose[0]]
        else:
            h = torch.stack([regs[r] for r in loose]).sum(0).mul_(inv_loose)
        outs.append(h)
    out = torch.stack(outs) if outs else x.new_empty(0, B, H)
    return out, (h, c_dummy)


def _run_both(cell: SharedCell, g: Genotype, x: Tensor, hid: tuple[Tensor, Tensor], mask: Tensor | None):
    """Outputs and gradients (x, h0, every used weight) of the fused loop and of the branch point's."""
    kind, plan = cell.kind, cell.plan(g)
    results = []
    for run in (kind.run, branch_point_run_enas):
        xs = x.detach().clone().requires_grad_(True)
        h0 = hid[0].detach().clone().requires_grad_(True)
        weights = kind.gather(plan, cell.banks(), cell.rows(plan.keys), E, H)
        leaves = [weights[0], weights[1], *weights[2]]
        out, (h_t, _) = run(plan, weights, xs, (h0, hid[1]), mask, cell.state_clip)
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        loss = (out * w).sum() + (h_t**2).sum()
        grads = torch.autograd.grad(loss, [xs, h0, *leaves])
        results.append((out.detach(), h_t.detach(), grads))
    return results


@pytest.mark.parametrize("clip", [None, 25.0, 0.7])  # 0.7: the guard's clamps act
def test_fused_enas_loop_matches_branch_point(clip):
    sp = make_space("enas", 8)
    cell = SharedCell(sp, E, H, state_clip=clip, init_range=0.8)
    gen = torch.Generator().manual_seed(0)
    for seed in range(30):
        g = sp.sample(seed)
        x = torch.randn(7, B, E, generator=gen) * 2
        hid = (torch.randn(B, H, generator=gen), torch.zeros(B, H))
        mask = (torch.rand(B, H, generator=gen) > 0.3).float() / 0.7 if seed % 3 == 0 else None
        (out, h, grads), (out_r, h_r, grads_r) = _run_both(cell, g, x, hid, mask)
        torch.testing.assert_close(out, out_r, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(h, h_r, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads, grads_r):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fused_enas_loop_float64_is_exact_to_rounding():
    # The paper cell: 6 groups, runs of two activations, 6 loose ends; float64 leaves only rounding.
    g = get_named("enas_paper")
    cell = SharedCell("enas", E, H, num_nodes=12, init_range=0.5).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, B, E, generator=gen, dtype=torch.float64)
    hid = (torch.randn(B, H, generator=gen, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64))
    (out, h, grads), (out_r, h_r, grads_r) = _run_both(cell, g, x, hid, None)
    torch.testing.assert_close(out, out_r, atol=1e-13, rtol=1e-12)
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_fused_enas_loop_without_autograd_matches():
    sp = make_space("enas", 8)
    cell = SharedCell(sp, E, H)
    x = torch.randn(5, B, E)
    for seed in range(10):
        g = sp.sample(seed)
        with torch.no_grad():
            out_ng, (h_ng, _) = cell(x, None, g)
        out, (h, _) = cell(x.requires_grad_(True), None, g)
        torch.testing.assert_close(out_ng, out.detach(), atol=0, rtol=0)
        torch.testing.assert_close(h_ng, h.detach(), atol=0, rtol=0)


def test_backward_twice_on_a_retained_graph_fails_loudly():
    # The fused backward consumes its saved coefficients in place: a second pass must not run silently.
    cell = SharedCell("enas", E, H, num_nodes=4)
    out, _ = cell(torch.randn(3, B, E), None, make_space("enas", 4).sample(0))
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# ============================================================================ row-held banks
def _dense_reference(cell: SharedCell) -> dict[str, Tensor]:
    """The cell's banks as the branch point held them: one dense leaf per bank."""
    return {name: cell.bank(name).detach().clone().requires_grad_(True) for name in cell.row_dims}


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_sgd_step_on_rows_matches_dense_bank_except_decay_of_unused_rows(space):
    sp = make_space(space, 6)
    cell = SharedCell(sp, E, H, init_range=0.5)
    g = sp.sample(3 if space == "enas" else 5)
    plan = cell.plan(g)
    x = torch.randn(6, B, E)
    lr, wd = 0.5, 0.1
    # Branch point: dense banks gathered with index_select; SGD decays and updates every row.
    dense = _dense_reference(cell)
    rows = torch.tensor(cell.rows(plan.keys))
    w = cell.kind.gather(plan, dense, rows, E, H)
    out, _ = cell.kind.run(plan, w, x, cell.init_hidden(B), None, cell.state_clip)
    out.sum().backward()
    ref_opt = torch.optim.SGD(list(dense.values()), lr=lr, weight_decay=wd)
    ref_opt.step()
    # Now: one parameter per row; rows the child did not use get no gradient at all.
    opt = torch.optim.SGD(cell.parameters(), lr=lr, weight_decay=wd)
    before = {name: cell.bank(name).detach().clone() for name in cell.row_dims}
    out2, _ = cell(x, None, g)
    out2.sum().backward()
    used = set(cell.rows(plan.keys))
    for name, dim in cell.row_dims.items():
        if dim is None:
            continue
        for r, p in enumerate(getattr(cell, name)):
            assert (p.grad is not None) == (r in used), (name, r)
    opt.step()
    for name, dim in cell.row_dims.items():
        after = cell.bank(name).detach()
        if dim is None:
            torch.testing.assert_close(after, dense[name].detach(), atol=1e-6, rtol=1e-5)
            continue
        for r in range(after.shape[dim]):
            want = dense[name].detach().select(dim, r) if r in used else before[name].select(dim, r)
            torch.testing.assert_close(after.select(dim, r), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_row_banks_draw_the_dense_initialisation(space):
    # Banks are drawn whole, in layout order: a seed gives the weights the dense layout gave.
    torch.manual_seed(7)
    cell = SharedCell(space, E, H, num_nodes=5)
    torch.manual_seed(7)
    r = 1.0 / H**0.5
    for name, (shape, _) in cell.kind.bank_layout(E, H, cell.kind.shared_num_rows(5)).items():
        want = torch.empty(shape).uniform_(-r, r)
        assert torch.equal(cell.bank(name), want), name


def test_dense_checkpoint_loads_into_row_banks():
    cell = SharedCell("enas", E, H, num_nodes=5)
    dense_sd = {k: v for k, v in cell.state_dict().items() if k.split(".")[0] not in ("w_edge",)}
    dense_sd["w_edge"] = cell.bank("w_edge").detach().clone()  # the branch point's key and layout
    other = SharedCell("enas", E, H, num_nodes=5)
    other.load_state_dict(dense_sd)
    assert torch.equal(other.bank("w_edge"), cell.bank("w_edge"))
    assert "w_edge.9" in other.state_dict() and "w_edge" not in other.state_dict()


# ============================================================================ scratch buffers
def test_pool_reuses_only_unreferenced_buffers():
    pool = BufferPool(min_bytes=0)
    a = pool.empty((4, 5), torch.float32, torch.device("cpu"))
    b = pool.empty((4, 5), torch.float32, torch.device("cpu"))
    assert a.data_ptr() != b.data_ptr()  # a is still referenced
    ptr = a.data_ptr()
    del a
    c = pool.empty((2, 10), torch.float32, torch.device("cpu"))
    assert c.data_ptr() == ptr  # a's storage came back
    view = c[1:]
    del c
    d = pool.empty((20,), torch.float32, torch.device("cpu"))
    assert d.data_ptr() != ptr  # a view keeps it busy
    del view, d
    small = pool.empty((3,), torch.float32, torch.device("cpu"))  # best fit: a 20-float buffer, not a new one
    assert small.numel() == 3 and len(pool._bufs) == 3


def test_pool_keeps_saved_buffers_of_a_live_graph():
    # Sizes above the pool's 1 MiB floor, so the kept states really come from the pool.
    cell = SharedCell("enas", 16, 256, num_nodes=4)
    g = make_space("enas", 4).sample(1)
    x = torch.randn(8, 64, 16, requires_grad=True)
    out1, _ = cell(x, None, g)
    out2, _ = cell(x, None, g)  # while out1's graph holds its buffers, these are fresh ones
    out1.sum().backward()
    grad1 = x.grad.clone()
    x.grad = None
    out2.sum().backward()
    torch.testing.assert_close(x.grad, grad1, atol=0, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_cross_entropy_matches_the_two_ops(bias: bool) -> None:
    torch.manual_seed(0)
    N, V = 37, 53
    x = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True) if bias else None
    y = torch.randint(V, (N,))
    params = [x, w] + ([b] if bias else [])
    got = linear_cross_entropy(x, w, b, y)
    ref = F.cross_entropy(F.linear(x, w, b), y)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(torch.autograd.grad(got * 2.5, params), torch.autograd.grad(ref * 2.5, params)):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(x, w, b, y), ref, rtol=1e-6, atol=1e-6)
    x64, w64 = x.detach().double(), w.detach().double()  # other dtypes: the two ops themselves
    b64 = None if b is None else b.detach().double()
    assert linear_cross_entropy(x64, w64, b64, y).item() == F.cross_entropy(F.linear(x64, w64, b64), y).item()


def test_lm_loss_with_tied_weights_matches_the_logits_path() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(emb_size=H, hidden_size=H, dropout_in=0.0), 40)
    tokens, target = torch.randint(40, (5, B)), torch.randint(40, (5, B))
    hidden = model.init_hidden(B)
    loss, _ = model.loss(tokens, target, hidden)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits, _ = model(tokens, hidden)
    ref = F.cross_entropy(logits.reshape(-1, 40), target.reshape(-1))
    refs = torch.autograd.grad(ref, list(model.parameters()))
    assert torch.allclose(loss, ref, rtol=1e-6)
    for g, r in zip(grads, refs):  # the tied embedding gets both its input and its output gradient
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_backward_twice_fails_loudly() -> None:
    x, w = torch.randn(4, H, requires_grad=True), torch.randn(9, H)
    loss = linear_cross_entropy(x, w, None, torch.tensor([0, 3, 8, 1]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
