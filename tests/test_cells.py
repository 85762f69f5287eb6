"""Cells: nn.LSTM equivalence, a naive reference, shared/fixed identity, the guard, speed paths."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from enas_rnn.cells import CellConfig, FixedCell, SharedCell, build_cell
from enas_rnn.genotype import Genotype, GenotypeError, get_named
from enas_rnn.spaces import ENASSpace, make_space
from enas_rnn.spaces.lstm import copy_from_nn_lstm, nn_lstm_gates

E, H, B = 6, 8, 3  # E != H catches transposed weights


def _x(T: int = 10, seed: int = 0, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, E, generator=g).requires_grad_(requires_grad)


def _nn_lstm(seed: int = 0) -> nn.LSTM:
    torch.manual_seed(seed)
    lstm = nn.LSTM(E, H)
    with torch.no_grad():  # non-zero, distinct biases so the summed bias is tested
        lstm.bias_ih_l0.uniform_(-0.5, 0.5)
        lstm.bias_hh_l0.uniform_(-0.5, 0.5)
    return lstm


# ============================================================================ naive reference
def _ref_act(act: str, v: torch.Tensor, clip: float | None) -> torch.Tensor:
    if act == "tanh":
        return torch.tanh(v)
    if act == "sigmoid":
        return torch.sigmoid(v)
    if act == "relu":
        return v.clamp(0, clip) if clip is not None else torch.relu(v)
    return v.clamp(-clip, clip) if clip is not None else v


def reference(cell, g: Genotype, x: torch.Tensor, hidden) -> tuple[torch.Tensor, tuple]:
    """Slow, literal reading of the genotype on the cell's weight banks (every node, every step)."""
    h, c = hidden
    clip = cell.state_clip
    outs = []
    if g.space == "lstm":
        for t in range(x.shape[0]):
            vals = {"c": c}
            for i, node in enumerate(g.nodes, start=1):
                ops = []
                for s, o in enumerate(node.inputs):
                    if o.source == "xh":
                        (r,) = cell.rows([(i, s)]) if (i, s) in _live_keys(g) else (None,)
                        if r is None:  # dead node: no weights in a FixedCell; value unused
                            ops.append(torch.zeros_like(h))
                            continue
                        v = x[t] @ cell.bank("w_x")[:, r] + h @ cell.bank("w_h")[:, r] + cell.bank("bias")[r]
                    else:
                        v = vals[o.source]
                    ops.append(_ref_act(o.act, v, clip))
                vals[f"n{i}"] = ops[0] + ops[1] if node.op == "add" else ops[0] * ops[1]
            h, c = vals[g.outputs["h"]], vals[g.outputs["c"]]
            outs.append(h)
        return torch.stack(outs), (h, c)
    if clip is not None:
        h = h.clamp(-clip, clip)
    for t in range(x.shape[0]):
        pre = x[t] @ cell.w_hw_x.reshape(E, 2 * H) + h @ cell.w_hw_h.reshape(H, 2 * H)
        gate, cand = pre[:, :H], pre[:, H:]
        s = {1: h + torch.sigmoid(gate) * (_ref_act(g.nodes[0].act, cand, clip) - h)}
        for l in range(2, g.num_nodes + 1):
            j = int(g.nodes[l - 1].input[1:])
            (r,) = cell.rows([(l, j)])
            pre = s[j] @ cell.bank("w_edge")[:, :, r, :].reshape(H, 2 * H)
            gate, cand = pre[:, :H], pre[:, H:]
            s[l] = s[j] + torch.sigmoid(gate) * (_ref_act(g.nodes[l - 1].act, cand, clip) - s[j])
        h = torch.stack([s[i] for i in ENASSpace.loose_ends(g)]).mean(0)
        outs.append(h)
    return torch.stack(outs), (h, c)


def _live_keys(g: Genotype) -> set[tuple[int, int]]:
    return {(i, s) for i in g.live_nodes() for s, o in enumerate(g.nodes[i - 1].inputs) if o.source == "xh"}


def _hidden(seed: int = 1, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, generator=gen) * scale, torch.randn(B, H, generator=gen) * scale


# ============================================================================ nn.LSTM equivalence
def _row_grad(cell, name: str, r: int) -> torch.Tensor:
    """Gradient of row r of a bank: a slice of a FixedCell's bank, a SharedCell's row parameter."""
    bank = getattr(cell, name)
    if isinstance(bank, torch.Tensor):
        return bank.grad.select(cell.row_dims[name], r)
    return bank[r].grad


def _check_lstm_equivalence(cell, lstm: nn.LSTM, genotype: Genotype | None = None) -> None:
    genotype = genotype or get_named("lstm")
    x = _x(T=25)
    x2 = x.detach().clone().requires_grad_(True)
    h0, c0 = (t.requires_grad_(True) for t in _hidden())
    h0b, c0b = (t.detach().clone().requires_grad_(True) for t in (h0, c0))

    out_ref, (h_ref, c_ref) = lstm(x, (h0[None], c0[None]))
    out, (h, c) = cell(x2, (h0b, c0b), genotype)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref[0], atol=1e-5, rtol=0)

    # Same loss through every output and both final states.
    w = torch.randn_like(out)
    ((out_ref * w).sum() + h_ref.sum() + (c_ref**2).sum()).backward()
    ((out * w).sum() + h.sum() + (c**2).sum()).backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(h0b.grad, h0.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(c0b.grad, c0.grad, atol=1e-5, rtol=0)
    gates = nn_lstm_gates(genotype)
    for k, key in enumerate(gates[name] for name in "ifgo"):  # nn.LSTM's gate order
        (r,) = cell.rows([key])
        rows = slice(k * H, (k + 1) * H)
        torch.testing.assert_close(_row_grad(cell, "w_x", r).t(), lstm.weight_ih_l0.grad[rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(_row_grad(cell, "w_h", r).t(), lstm.weight_hh_l0.grad[rows], atol=1e-5, rtol=0)
        torch.testing.assert_close(_row_grad(cell, "bias", r), lstm.bias_ih_l0.grad[rows], atol=1e-5, rtol=0)


def test_fixed_cell_reproduces_nn_lstm_with_guard_on():
    lstm = _nn_lstm()
    cell = FixedCell(get_named("lstm"), E, H)  # default guard: state_clip=25
    assert cell.state_clip == 25.0
    copy_from_nn_lstm(cell, lstm)
    _check_lstm_equivalence(cell, lstm)


def test_shared_cell_reproduces_nn_lstm():
    lstm = _nn_lstm(3)
    cell = SharedCell("lstm", E, H, num_nodes=8)
    copy_from_nn_lstm(cell, lstm)
    _check_lstm_equivalence(cell, lstm)


def test_the_gates_templates_lstm_reproduces_nn_lstm():
    """template=gates spells the LSTM on the last four nodes: the same function as nn.LSTM, fixed and shared."""
    g = make_space("lstm", 8, "gates").decode([0] * 23)
    assert g.canonical() == get_named("lstm").canonical() and g.outputs == {"h": "n8", "c": "n7"}
    assert nn_lstm_gates(g) == {"o": (8, 1), "f": (6, 1), "i": (5, 0), "g": (5, 1)}
    lstm = _nn_lstm(4)
    fixed = FixedCell(g, E, H)
    copy_from_nn_lstm(fixed, lstm)
    _check_lstm_equivalence(fixed, lstm, g)
    lstm = _nn_lstm(4)  # fresh gradients
    shared = SharedCell("lstm", E, H, num_nodes=8)
    copy_from_nn_lstm(shared, lstm, g)
    _check_lstm_equivalence(shared, lstm, g)


def test_fixed_lstm_params_differ_from_nn_lstm_by_the_redundant_bias():
    cell = FixedCell(get_named("lstm"), E, H)
    n_lstm = sum(p.numel() for p in nn.LSTM(E, H).parameters())
    assert n_lstm - cell.num_parameters() == 4 * H


def test_copy_from_nn_lstm_rejects_other_cells():
    with pytest.raises(ValueError, match="lstm-space"):
        copy_from_nn_lstm(SharedCell("enas", E, H), nn.LSTM(E, H))
    with pytest.raises(ValueError, match="size mismatch"):
        copy_from_nn_lstm(FixedCell(get_named("lstm"), E, H), nn.LSTM(E, H + 1))
    with pytest.raises(ValueError, match="1-layer"):
        copy_from_nn_lstm(FixedCell(get_named("lstm"), E, H), nn.LSTM(E, H, num_layers=2))
    peephole = make_space("lstm", 8, "gates").decode([0] * 20 + [1, 0, 0])  # i reads c_(t-1)
    with pytest.raises(ValueError, match="needs a vanilla-LSTM genotype"):
        copy_from_nn_lstm(FixedCell(peephole, E, H), nn.LSTM(E, H))


# ============================================================================ reference semantics
@pytest.mark.parametrize("space", ["lstm", "enas"])
@pytest.mark.parametrize("clip", [None, 0.7])  # a small clip makes the guard act
def test_cells_match_naive_reference(space, clip):
    sp = make_space(space, 6)
    # float64: without a guard, mul chains amplify float32 rounding of differently ordered sums.
    shared = SharedCell(sp, E, H, state_clip=clip, init_range=0.6).double()
    x = _x(T=5).double()
    for seed in range(40):
        g = sp.sample(seed)
        hid = tuple(t.double() for t in _hidden(seed, scale=2.0))
        out, (h, c) = shared(x, hid, g)
        out_ref, (h_ref, _) = reference(shared, g, x, hid)
        torch.testing.assert_close(out, out_ref, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(h, h_ref, atol=1e-9, rtol=1e-9)
        if space == "enas":
            assert c is hid[1]  # the dummy c passes through


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_gradients_match_naive_reference(space):
    # Checks the deferred weight gradient (_StepGEMM) and every gather against plain autograd.
    sp = make_space(space, 6)
    cell = SharedCell(sp, E, H, state_clip=1.5, init_range=0.5).double()
    for seed in range(12):
        g = sp.sample(seed)
        x = _x(T=5, seed=seed).double()
        hid = tuple(t.double().requires_grad_(True) for t in _hidden(seed))
        out, (h, _) = cell(x, hid, g)
        if not out.requires_grad:
            continue
        w = torch.randn_like(out)
        params = [x, hid[0], *cell.parameters()]
        grads = torch.autograd.grad((out * w).sum() + h.sum(), params, allow_unused=True)
        out_r, (h_r, _) = reference(cell, g, x, hid)
        grads_r = torch.autograd.grad((out_r * w).sum() + h_r.sum(), params, allow_unused=True)
        for a, b in zip(grads, grads_r):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any())
                continue
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_enas_paper_runs_and_matches_reference():
    g = get_named("enas_paper")
    shared = SharedCell("enas", E, H, num_nodes=12)
    x = _x(T=4)
    out, _ = shared(x, None, g)
    out_ref, _ = reference(shared, g, x, shared.init_hidden(B))
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(GenotypeError, match="12 nodes"):
        SharedCell("enas", E, H, num_nodes=8)(x, None, g)


# ============================================================================ shared vs fixed
@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_fixed_from_shared_is_identical(space):
    sp = make_space(space, 8)
    shared = SharedCell(sp, E, H)
    x = _x(T=6)
    for seed in range(60):
        g = sp.sample(seed)
        hid = _hidden(seed)
        fixed = FixedCell.from_shared(shared, g)
        out_s, (h_s, c_s) = shared(x, hid, g)
        out_f, (h_f, c_f) = fixed(x, hid)
        torch.testing.assert_close(out_f, out_s, atol=1e-6, rtol=0)
        torch.testing.assert_close(h_f, h_s, atol=1e-6, rtol=0)
        torch.testing.assert_close(c_f, c_s, atol=1e-6, rtol=0)
        if out_s.requires_grad:
            gx_s = torch.autograd.grad(out_s.sum(), x)[0]
            gx_f = torch.autograd.grad(out_f.sum(), x)[0]
            torch.testing.assert_close(gx_f, gx_s, atol=1e-6, rtol=0)


def test_fixed_cell_holds_only_live_weights():
    for seed in range(30):
        g = make_space("lstm", 8).sample(seed)
        k = len(_live_keys(g))
        assert FixedCell(g, E, H).num_parameters() == k * (E * H + H * H + H)
    for seed in range(10):
        g = make_space("enas", 8).sample(seed)
        assert FixedCell(g, E, H).num_parameters() == 2 * H * (E + H) + 7 * 2 * H * H
    shared = SharedCell("lstm", E, H, num_nodes=8)
    assert shared.num_parameters() == 16 * (E * H + H * H + H)
    assert SharedCell("enas", E, H, num_nodes=8).num_parameters() == 2 * H * (E + H) + 28 * 2 * H * H


# ============================================================================ many random cells
@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_hundreds_of_random_genotypes_run_forward_and_backward(space):
    sp = make_space(space, 8)
    cell = SharedCell(sp, 8, 8)
    x = torch.randn(3, 2, 8, requires_grad=True)
    ran = 0
    for seed in range(300):
        g = sp.sample(seed)
        cell.zero_grad(set_to_none=True)
        out, (h, c) = cell(x, None, g)
        assert out.shape == (3, 2, 8) and h.shape == c.shape == (2, 8)
        loss = out.sum() + h.sum()
        if loss.requires_grad:  # a few lstm-space cells never read x or any weight
            loss.backward()
            ran += 1
            assert all(torch.isfinite(p.grad).all() for p in cell.parameters() if p.grad is not None)
        assert torch.isfinite(out).all()
    assert ran > 250


# ============================================================================ stability guard
def _mul_relu_chain(n: int = 8) -> Genotype:
    """Worst case: relu/mul chain fed back through c: n_k = relu(n_{k-1}) * relu(W xh)."""
    nodes = [
        {"op": "mul", "inputs": [["xh", "relu"], ["xh", "relu"]]},
        {"op": "add", "inputs": [["n1", "relu"], ["c", "identity"]]},
    ]
    nodes += [{"op": "mul", "inputs": [[f"n{i}", "relu"], ["xh", "relu"]]} for i in range(2, n)]
    return Genotype.from_dict({"space": "lstm", "nodes": nodes, "outputs": {"h": f"n{n}", "c": f"n{n}"}})


def _square_chain(n: int = 8) -> Genotype:
    """n_k = n_{k-1} * n_{k-1}: overflows float32 within one step without a guard."""
    nodes = [{"op": "mul", "inputs": [["xh", "relu"], ["xh", "identity"]]}]
    nodes += [{"op": "mul", "inputs": [[f"n{i}", "identity"], [f"n{i}", "relu"]]} for i in range(1, n)]
    return Genotype.from_dict({"space": "lstm", "nodes": nodes, "outputs": {"h": f"n{n}", "c": f"n{n}"}})


@pytest.mark.parametrize("make", [_mul_relu_chain, _square_chain])
def test_guard_keeps_worst_case_lstm_cells_finite(make):
    g = make()
    torch.manual_seed(0)
    # Large, positive weights and inputs: every relu passes, so every chain grows.
    x = torch.rand(200, 2, E).requires_grad_(True)
    cell = FixedCell(g, E, H, init_range=3.0)
    with torch.no_grad():
        for p in cell.parameters():
            p.abs_()
    out, (h, c) = cell(x, None)
    assert torch.isfinite(out).all() and torch.isfinite(c).all()
    assert out.abs().max() <= 25.0**2  # operands in [-clip, clip] => node values in [-clip^2, clip^2]
    (out.sum() + c.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in cell.parameters())
    # Without the guard the same cell overflows: the guard is what keeps it finite.
    bare = FixedCell(g, E, H, state_clip=None, init_range=3.0)
    bare.load_state_dict(cell.state_dict())
    with torch.no_grad():
        out_bare, _ = bare(x, None)
    assert not torch.isfinite(out_bare).all()


def test_guard_keeps_worst_case_enas_cell_finite():
    nodes = [{"input": "xh", "act": "relu"}] + [{"input": f"n{i}", "act": "identity"} for i in range(1, 8)]
    g = Genotype.from_dict({"space": "enas", "nodes": nodes})
    torch.manual_seed(0)
    x = (torch.randn(200, 2, E) * 10).requires_grad_(True)
    cell = FixedCell(g, E, H, init_range=5.0)
    hid = (torch.full((2, H), 1e6), torch.zeros(2, H))  # even a huge incoming state is clamped
    out, (h, _) = cell(x, hid)
    assert torch.isfinite(out).all() and out.abs().max() <= 25.0  # enas states stay in [-clip, clip]
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in cell.parameters())
    bare = FixedCell(g, E, H, state_clip=None, init_range=5.0)
    bare.load_state_dict(cell.state_dict())
    with torch.no_grad():
        assert not torch.isfinite(bare(x, hid)[0]).all()


def test_guard_clamps_only_where_needed_for_lstm():
    # Interval analysis: the vanilla LSTM needs exactly one clamp per step, on c_{t-1}.
    plan = FixedCell(get_named("lstm"), E, H).plan()
    assert sum(1 for fn, *_ in plan.program if "hardtanh" in repr(fn)) == 1
    bare = FixedCell(get_named("lstm"), E, H, state_clip=None).plan()
    assert not any("hardtanh" in repr(fn) for fn, *_ in bare.program)


# ============================================================================ interface details
def test_init_hidden_and_interface():
    for cell in (FixedCell(get_named("lstm"), E, H), SharedCell("enas", E, H)):
        h, c = cell.init_hidden(4)
        assert h.shape == c.shape == (4, H) and h.dtype == next(cell.parameters()).dtype
        assert cell.input_size == E and cell.hidden_size == H
    cell = FixedCell(get_named("lstm"), E, H).double()
    out, (h, c) = cell(_x(T=3).double(), None)
    assert out.dtype == torch.float64 and cell.init_hidden(2)[0].dtype == torch.float64


def test_zero_length_sequence():
    cell = FixedCell(get_named("lstm"), E, H)
    hid = cell.init_hidden(B)
    out, (h, c) = cell(torch.zeros(0, B, E), hid)
    assert out.shape == (0, B, H) and h is hid[0]


def test_hidden_carries_across_calls_like_one_long_sequence():
    cell = SharedCell("lstm", E, H)
    g = make_space("lstm", 8).sample(4)
    x = _x(T=8, requires_grad=False)
    out_all, _ = cell(x, None, g)
    out_a, hid = cell(x[:5], None, g)
    out_b, _ = cell(x[5:], hid, g)
    torch.testing.assert_close(torch.cat([out_a, out_b]), out_all)


def test_no_grad_path_matches_autograd_path():
    for g, n in ((make_space("lstm", 8).sample(2), 8), (get_named("enas_paper"), 12)):
        cell = SharedCell(g.space, E, H, num_nodes=n)
        x = _x(T=5)
        out, _ = cell(x, None, g)
        with torch.no_grad():
            out_ng, _ = cell(x, None, g)
        torch.testing.assert_close(out_ng, out.detach())


def test_dropout_h_is_training_only_and_one_mask_per_sequence(monkeypatch):
    cell = FixedCell(get_named("lstm"), E, H, dropout_h=0.5)
    x = _x(T=6, requires_grad=False)
    cell.eval()
    out_eval, _ = cell(x, None)
    cell.train()
    calls = []
    orig = type(cell)._mask

    def spy(self, h):
        m = orig(self, h)
        calls.append(m)
        return m

    monkeypatch.setattr(type(cell), "_mask", spy)
    torch.manual_seed(0)
    out_train, _ = cell(x, None)
    assert len(calls) == 1 and calls[0].shape == (B, H)  # one mask for the whole sequence
    assert set(calls[0].unique().tolist()) <= {0.0, 2.0}
    assert not torch.allclose(out_train, out_eval)
    cell.eval()
    torch.testing.assert_close(cell(x, None)[0], out_eval)


def test_errors_are_clear():
    x = _x(T=2)
    shared = SharedCell("lstm", E, H, num_nodes=4)
    with pytest.raises(ValueError, match="needs the genotype"):
        shared(x, None)
    with pytest.raises(GenotypeError, match="'enas' genotype"):
        shared(x, None, get_named("enas_paper"))
    with pytest.raises(GenotypeError, match="holds weights for 4"):
        shared(x, None, make_space("lstm", 8).sample(0))
    fixed = FixedCell(get_named("lstm"), E, H)
    with pytest.raises(GenotypeError, match="only its own genotype"):
        fixed(x, None, make_space("lstm", 4).sample(1))
    fixed(x, None, get_named("lstm"))  # its own genotype is fine
    with pytest.raises(ValueError, match=r"\[T, B, 6\]"):
        fixed(torch.zeros(2, 3, E + 1), None)
    with pytest.raises(ValueError, match="space.name=.gru."):
        SharedCell("gru", E, H)
    with pytest.raises(ValueError, match="state_clip"):
        FixedCell(get_named("lstm"), E, H, state_clip=0.0)


def test_plans_are_cached_per_genotype():
    cell = SharedCell("lstm", E, H)
    g = make_space("lstm", 8).sample(9)
    assert cell.plan(g) is cell.plan(Genotype.from_dict(g.to_dict()))


def test_cell_config_and_build_cell():
    cfg = CellConfig(state_clip=None)
    cell = build_cell(E, H, cfg, space=make_space("lstm", 8))
    assert isinstance(cell, SharedCell) and cell.state_clip is None and cell.num_nodes == 8
    fixed = build_cell(E, H, CellConfig(dropout_h=0.1), genotype=get_named("lstm"))
    assert isinstance(fixed, FixedCell) and fixed.dropout_h == 0.1 and fixed.state_clip == 25.0
    with pytest.raises(ValueError, match="exactly one"):
        build_cell(E, H, cfg)


def test_state_dict_round_trip_and_weights_only_load(tmp_path):
    cell = FixedCell(get_named("enas_paper"), E, H)
    path = tmp_path / "cell.pt"
    torch.save(cell.state_dict(), path)
    other = FixedCell(get_named("enas_paper"), E, H)
    other.load_state_dict(torch.load(path, weights_only=True))
    x = _x(T=3)
    torch.testing.assert_close(other(x, None)[0], cell(x, None)[0])
    assert torch.equal(other.w_edge, cell.w_edge)


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_runs_under_cpu_autocast(space):
    # Mixed precision: step GEMMs in bfloat16, weights and their gradients in float32.
    cell = SharedCell(space, E, H, num_nodes=6)
    g = make_space(space, 6).sample(1 if space == "enas" else 3)
    x = _x(T=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = cell(x, None, g)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    for p in cell.parameters():
        assert p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())


@pytest.mark.skipif(
    not __import__("os").environ.get("ENAS_TEST_COMPILE"), reason="torch.compile takes ~30 s; set ENAS_TEST_COMPILE=1"
)
def test_compiled_fixed_cell_matches_eager():
    lstm = _nn_lstm()
    eager = FixedCell(get_named("lstm"), E, H)
    compiled = FixedCell(get_named("lstm"), E, H, compile=True)
    copy_from_nn_lstm(eager, lstm)
    copy_from_nn_lstm(compiled, lstm)
    x = _x(T=6)
    torch.testing.assert_close(compiled(x, None)[0], eager(x, None)[0], atol=1e-6, rtol=0)


def test_training_steps_do_not_leak_tensors() -> None:
    """The deferred weight-gradient tape must not form a reference cycle with the graph
    (a cycle through autograd's C++ nodes is never collected: memory grew ~30 MB/s in a search)."""
    torch.manual_seed(0)
    space = make_space("lstm", 6)
    cell = SharedCell(space, 8, 8)
    gen = torch.Generator().manual_seed(0)
    pool = [space.sample(gen) for _ in range(4)]  # a fixed pool: the plan/index caches saturate

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    def steps(n: int) -> None:
        for i in range(n):
            x = torch.randn(5, 3, 8, requires_grad=True)
            out, _ = cell(x, None, genotype=pool[i % 4])
            if out.requires_grad:
                out.sum().backward()
            out, _ = cell(x, None, genotype=pool[(i + 1) % 4])  # forward only, graph dropped

    steps(8)
    before = live_tensors()
    steps(20)
    assert live_tensors() - before < 10
