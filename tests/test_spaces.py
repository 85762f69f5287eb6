"""Search spaces: decisions, decode/encode, sampling, size, registry and config."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
import torch

from enas_rnn.genotype import Genotype, GenotypeError, get_named
from enas_rnn.kernels import ACTIVATIONS
from enas_rnn.spaces import (
    DECISION_KINDS,
    SPACES,
    Decision,
    ENASSpace,
    LSTMSpace,
    SpaceConfig,
    make_space,
    space_from_config,
)


def test_lstm_decisions():
    sp = LSTMSpace(8)
    ds = sp.decisions()
    assert len(ds) == 8 * 5 + 2
    assert {d.kind for d in ds} <= set(DECISION_KINDS)
    for i in range(1, 9):
        src_a, act_a, src_b, act_b, op = ds[(i - 1) * 5 : i * 5]
        # inputs xh, c plus the i-1 earlier nodes
        assert src_a.kind == src_b.kind == "source" and src_a.num_choices == src_b.num_choices == 2 + (i - 1)
        assert src_a.options[:2] == ("xh", "c")
        assert act_a.kind == act_b.kind == "act" and act_a.num_choices == len(ACTIVATIONS)
        assert op.kind == "op" and op.num_choices == 2
    out_h, out_c = ds[-2:]
    assert out_h.kind == out_c.kind == "output" and out_h.num_choices == out_c.num_choices == 8
    assert [d.name for d in ds[:5]] == ["n1.src_a", "n1.act_a", "n1.src_b", "n1.act_b", "n1.op"]


def test_enas_decisions():
    sp = ENASSpace(8)
    ds = sp.decisions()
    assert len(ds) == 1 + 2 * 7
    assert ds[0].kind == "act" and ds[0].name == "n1.act"
    for l in range(2, 9):
        src, act = ds[1 + 2 * (l - 2)], ds[2 + 2 * (l - 2)]
        assert src.kind == "source" and src.num_choices == l - 1
        assert act.kind == "act" and act.num_choices == 4


@pytest.mark.parametrize("name", ["lstm", "enas"])
def test_decode_encode_round_trip(name):
    sp = make_space(name, 8)
    rng = random.Random(1)
    for _ in range(200):
        choices = [rng.randrange(d.num_choices) for d in sp.decisions()]
        g = sp.decode(choices)
        assert isinstance(g, Genotype) and g.space == name and g.num_nodes == 8
        assert sp.encode(g) == choices
        assert sp.decode(sp.encode(g)) == g


def test_vanilla_lstm_is_a_point_of_the_lstm_space():
    for n in (4, 5, 8):
        sp = LSTMSpace(n)
        choices = sp.encode(get_named("lstm"))
        g = sp.decode(choices)
        assert g.num_nodes == n and g.canonical() == get_named("lstm").canonical()
        assert g.live_nodes() == (1, 2, 3, 4)
    with pytest.raises(GenotypeError, match="only 3"):
        LSTMSpace(3).encode(get_named("lstm"))


def test_enas_paper_encodes_in_a_12_node_space():
    g = get_named("enas_paper")
    sp = ENASSpace(12)
    assert sp.decode(sp.encode(g)) == g
    with pytest.raises(GenotypeError, match="space.num_nodes=12"):
        ENASSpace(8).encode(g)
    with pytest.raises(GenotypeError, match="'enas' genotype"):
        LSTMSpace(8).encode(g)


def test_sample_is_seeded_for_both_generator_kinds():
    sp = LSTMSpace(8)
    assert sp.sample(random.Random(3)) == sp.sample(random.Random(3))
    assert sp.sample(3) == sp.sample(random.Random(3))
    g1 = sp.sample(torch.Generator().manual_seed(5))
    g2 = sp.sample(torch.Generator().manual_seed(5))
    assert g1 == g2
    assert len({sp.sample(s).hash() for s in range(20)}) > 15


def test_sample_is_uniform_over_each_decision():
    sp = ENASSpace(4)
    rng = random.Random(0)
    counts = Counter(tuple(sp.encode(sp.sample(rng))) for _ in range(4000))
    per_decision = [Counter(c[k] for c in counts.elements()) for k in range(len(sp.decisions()))]
    for d, cnt in zip(sp.decisions(), per_decision):
        assert set(cnt) == set(range(d.num_choices))
        expected = 4000 / d.num_choices
        assert all(abs(v - expected) < 0.15 * expected for v in cnt.values()), (d.name, cnt)


def test_size_counts_decision_sequences():
    sp = ENASSpace(3)  # 4 * (1*4) * (2*4)
    assert sp.size() == 128
    seqs = itertools.product(*(range(d.num_choices) for d in sp.decisions()))
    assert len({sp.decode(s) for s in seqs}) == sp.size()
    lstm = LSTMSpace(8)
    per_node = [(2 + i) ** 2 * 4 ** 2 * 2 for i in range(8)]
    assert lstm.size() == math.prod(per_node) * 8 * 8


def test_decode_rejects_bad_choices():
    sp = LSTMSpace(2)
    with pytest.raises(ValueError, match="takes 12 choices"):
        sp.decode([0] * 3)
    bad = [0] * 12
    bad[0] = 2  # node 1 has only sources xh, c
    with pytest.raises(ValueError, match="n1.src_a"):
        sp.decode(bad)


def test_registry_and_errors():
    assert set(SPACES) == {"lstm", "enas"}
    assert isinstance(make_space("lstm"), LSTMSpace) and make_space("lstm").num_nodes == 8
    assert make_space("enas", 12).num_nodes == 12
    with pytest.raises(ValueError) as e:
        make_space("gru")
    assert "enas" in str(e.value) and "lstm" in str(e.value)
    with pytest.raises(ValueError):
        LSTMSpace(0)
    with pytest.raises(ValueError, match="kind"):
        Decision("x", 2, "colour")
    assert LSTMSpace(8) == make_space("lstm", 8) and LSTMSpace(8) != LSTMSpace(4)


def test_space_config_is_a_structured_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(SpaceConfig)
    assert cfg.name == "lstm" and cfg.num_nodes == 8
    cfg.num_nodes = 12
    cfg.name = "enas"
    sp = space_from_config(cfg)
    assert isinstance(sp, ENASSpace) and sp.num_nodes == 12
    assert space_from_config(SpaceConfig()).num_nodes == 8


# ---------------------------------------------------------------------------- space.template=memory
def test_memory_template_decisions():
    sp = make_space("lstm", 8, "memory")
    ds = sp.decisions()
    assert len(ds) == 31 and len(LSTMSpace(8).decisions()) == 42
    names = [d.name for d in ds]
    assert names[:5] == ["n1.act_a", "n1.act_b", "n1.op", "n2.src_g", "n2.act_g"]
    assert names[5] == "n4.src_a" and names[-1] == "out.h" and "out.c" not in names
    # n1 = i * g reads two maps of xh; the gate G is squashed and reads xh or n1
    assert ds[3].options == ("xh", "n1") and ds[4].options == ("sigmoid", "tanh")
    assert ds[5].options == ("xh", "c", "n1", "n2", "n3")  # later nodes may read c_t = n3
    assert sp.size() == math.prod(d.num_choices for d in ds)


def test_memory_template_cells_carry_c_through_an_identity_path():
    sp = make_space("lstm", 8, "memory")
    rng = random.Random(0)
    for _ in range(200):
        choices = [rng.randrange(d.num_choices) for d in sp.decisions()]
        g = sp.decode(choices)
        assert g.space == "lstm" and g.num_nodes == 8 and g.outputs["c"] == "n3"
        assert g.nodes[1].op == "mul" and g.nodes[1].inputs[0] == ("c", "identity")
        assert g.nodes[1].inputs[1].act in ("sigmoid", "tanh") and all(o.source == "xh" for o in g.nodes[0].inputs)
        assert g.nodes[2].to_dict() == {"op": "add", "inputs": [["n1", "identity"], ["n2", "identity"]]}
        assert sp.encode(g) == choices and sp.decode(sp.encode(g)) == g
        assert LSTMSpace(8).decode(LSTMSpace(8).encode(g)) == g  # an ordinary lstm genotype


def test_vanilla_lstm_is_a_point_of_the_memory_template():
    for n in (4, 8):
        sp = make_space("lstm", n, "memory")
        g = get_named("lstm")
        assert sp.decode(sp.encode(g)) == sp.pad(g)
        assert sp.decode(sp.encode(g)).canonical() == g.canonical()


def test_memory_template_encode_says_why_a_cell_does_not_fit():
    sp = make_space("lstm", 8, "memory")
    lstm = get_named("lstm").to_dict()
    swapped = {**lstm, "nodes": [lstm["nodes"][0], {"op": "mul", "inputs": [["xh", "sigmoid"], ["c", "identity"]]},
                                 *lstm["nodes"][2:]]}
    with pytest.raises(GenotypeError, match=r"template=memory: node n2 must be identity\(c\) \* G"):
        sp.encode(Genotype.from_dict(swapped))
    other_c = {**lstm, "outputs": {"h": "n4", "c": "n4"}}
    with pytest.raises(GenotypeError, match="c_t must be n3"):
        sp.encode(Genotype.from_dict(other_c))
    no_sum = {**lstm, "nodes": [*lstm["nodes"][:2], {"op": "mul", "inputs": [["n1", "identity"], ["n2", "identity"]]},
                                lstm["nodes"][3]]}
    with pytest.raises(GenotypeError, match=r"node n3 must be identity\(n1\) \+ identity\(n2\)"):
        sp.encode(Genotype.from_dict(no_sum))


def test_memory_template_constrained_decoding_and_analyses():
    sp = make_space("lstm", 8, "memory")
    rng = random.Random(3)
    for _ in range(100):
        choices = [rng.randrange(d.num_choices) for d in sp.decisions()]
        assert all(sp.allowed(choices[:k]) is None for k in range(len(choices) - 1))  # only out.h is free
        mask = sp.allowed(choices[:-1], require_bounded=True)
        outcomes = [not (g.is_degenerate() or g.is_unbounded())
                    for g in (sp.decode(choices[:-1] + [h]) for h in range(8))]
        assert mask == (None if all(outcomes) or not any(outcomes) else outcomes)
    # the controller is generic over decisions
    from enas_rnn.controller import Controller

    ctl = Controller(sp)
    cells = ctl.sample(100, torch.Generator().manual_seed(0), lambda p: sp.allowed(p, require_bounded=True)).genotypes
    assert all(g.outputs["c"] == "n3" for g in cells)
    valid = [not (g.is_degenerate() or g.is_unbounded()) for g in cells]
    assert 5 < sum(valid) < 100  # a cell comes out invalid only when no h_t makes its nodes valid (then redrawn)
    for g, ok in zip(cells, valid):
        choices = sp.encode(g)
        assert ok or not any(not (c.is_degenerate() or c.is_unbounded())
                             for c in (sp.decode(choices[:-1] + [h]) for h in range(8)))


# ---------------------------------------------------------------------------- space.template=gates
def test_gates_template_decisions_and_cells():
    sp = make_space("lstm", 8, "gates")
    ds = sp.decisions()
    assert len(ds) == 23 and [d.name for d in ds][-3:] == ["n5.src_i", "n6.src_f", "n8.src_o"]
    assert ds[-1].options == ("xh", "c", "n1", "n2", "n3", "n4")  # gates read xh, c or a free node
    assert not any(d.kind == "output" for d in ds) and sp.size() == math.prod(d.num_choices for d in ds)
    rng = random.Random(0)
    for _ in range(300):
        choices = [rng.randrange(d.num_choices) for d in sp.decisions()]
        g = sp.decode(choices)
        assert g.outputs == {"h": "n8", "c": "n7"}
        assert g.nodes[4].inputs[1] == ("xh", "tanh") and g.nodes[4].inputs[0].act == "sigmoid"  # i * g
        assert g.nodes[5].inputs[0] == ("c", "identity") and g.nodes[5].inputs[1].act == "sigmoid"  # c * f
        assert g.nodes[6].to_dict() == {"op": "add", "inputs": [["n5", "identity"], ["n6", "identity"]]}
        assert g.nodes[7].inputs[0] == ("n7", "tanh") and g.nodes[7].inputs[1].act == "sigmoid"  # o * tanh(c_t)
        assert not g.is_degenerate() and g.analysis().growth == "linear"  # never needs the masks
        assert sp.allowed(choices[:-1], require_bounded=True) is None
        # encode renumbers the free nodes the gates read as n1..; the cell is the same
        again = sp.decode(sp.encode(g))
        assert again.canonical() == g.canonical() and sp.encode(again) == sp.encode(g)
        assert LSTMSpace(8).decode(LSTMSpace(8).encode(g)) == g  # an ordinary lstm genotype


def test_vanilla_lstm_is_a_point_of_the_gates_template():
    for n in (4, 8):
        sp = make_space("lstm", n, "gates")
        g = get_named("lstm")
        assert sp.encode(g) == [0] * (5 * (n - 4)) + [0, 0, 0]  # the gates read xh; the free nodes are dead
        assert sp.decode(sp.encode(g)).canonical() == g.canonical()


def test_gates_template_encode_says_why_a_cell_does_not_fit():
    sp = make_space("lstm", 8, "gates")
    lstm = get_named("lstm").to_dict()
    relu_out = {**lstm, "nodes": [*lstm["nodes"][:3], {"op": "mul", "inputs": [["n3", "relu"], ["xh", "sigmoid"]]}]}
    with pytest.raises(GenotypeError, match=r"template=gates: h_t = n4 must be tanh\(c_t\) \* sigmoid\(S_o\)"):
        sp.encode(Genotype.from_dict(relu_out))
    no_forget = {**lstm, "nodes": [lstm["nodes"][0], {"op": "mul", "inputs": [["c", "tanh"], ["xh", "sigmoid"]]},
                                   *lstm["nodes"][2:]]}
    with pytest.raises(GenotypeError, match=r"c_t = n3 must add sigmoid\(S_i\) \* tanh\(xh\)"):
        sp.encode(Genotype.from_dict(no_forget))
    # a gate computed by a chain of free nodes longer than the space has room for
    chain = [{"op": "add", "inputs": [["xh", "tanh"], ["xh", "relu"]]}]
    chain += [{"op": "mul", "inputs": [[f"n{k}", "tanh"], ["xh", "relu"]]} for k in range(1, 5)]
    skeleton = [{"op": "mul", "inputs": [["n5", "sigmoid"], ["xh", "tanh"]]},
                {"op": "mul", "inputs": [["c", "identity"], ["xh", "sigmoid"]]},
                {"op": "add", "inputs": [["n6", "identity"], ["n7", "identity"]]},
                {"op": "mul", "inputs": [["n8", "tanh"], ["xh", "sigmoid"]]}]
    long = Genotype.from_dict({"space": "lstm", "nodes": chain + skeleton, "outputs": {"h": "n9", "c": "n8"}})
    with pytest.raises(GenotypeError, match="the gates read 5 free nodes; 8 nodes leave room for 4"):
        sp.encode(long)
    assert make_space("lstm", 9, "gates").decode(make_space("lstm", 9, "gates").encode(long)).canonical() \
        == long.canonical()


def test_template_in_config_identity_and_errors():
    from omegaconf import OmegaConf

    from enas_rnn.errors import ConfigError

    a, b = make_space("lstm", 8, "memory"), make_space("lstm", 8)
    assert a != b and hash(a) != hash(b) and a == LSTMSpace(8, "memory") and "memory" in repr(a)
    assert make_space("lstm", 8) == make_space("lstm") and b.template == "none"
    cfg = OmegaConf.structured(SpaceConfig)
    assert cfg.template == "none"
    cfg.template = "memory"
    assert space_from_config(cfg) == a
    with pytest.raises(ConfigError, match=r"space.template='memory': valid values for the enas space are none"):
        make_space("enas", 8, "memory")
    with pytest.raises(ConfigError, match="space.template='carry'.*none, memory"):
        make_space("lstm", 8, "carry")
    with pytest.raises(ConfigError, match="num_nodes >= 3"):
        make_space("lstm", 2, "memory")
    with pytest.raises(ConfigError, match="template 'gates' fixes the last four nodes.*num_nodes >= 4"):
        make_space("lstm", 3, "gates")
