"""Genotype: validation, JSON round trip, canonical form and hash, named cells."""

from __future__ import annotations

import json
import pickle
import random

import pytest

from enas_rnn.genotype import (
    NAMED,
    Genotype,
    GenotypeError,
    get_named,
    load_genotype,
    node_ref,
    parse_node_ref,
)
from enas_rnn.kernels import ACTIVATIONS
from enas_rnn.spaces import ENASNode, ENASSpace, LSTMNode, Operand, make_space

LSTM_JSON = {
    "space": "lstm",
    "nodes": [
        {"op": "mul", "inputs": [["xh", "sigmoid"], ["xh", "tanh"]]},
        {"op": "mul", "inputs": [["c", "identity"], ["xh", "sigmoid"]]},
        {"op": "add", "inputs": [["n1", "identity"], ["n2", "identity"]]},
        {"op": "mul", "inputs": [["n3", "tanh"], ["xh", "sigmoid"]]},
    ],
    "outputs": {"h": "n4", "c": "n3"},
}


def lstm_dict(**changes) -> dict:
    d = json.loads(json.dumps(LSTM_JSON))
    d.update(changes)
    return d


# ----------------------------------------------------------------------------- named cells
def test_named_lstm_is_exactly_the_vanilla_lstm():
    g = get_named("lstm")
    core = {k: v for k, v in g.to_dict().items() if k not in ("name", "source")}
    assert core == LSTM_JSON
    assert g.name == "lstm"
    assert g.live_nodes() == (1, 2, 3, 4)


def test_named_enas_paper_matches_published_cell():
    g = get_named("enas_paper")
    assert g.space == "enas" and g.num_nodes == 12
    assert "melodyguan/enas" in g.source and "Pham et al. 2018" in g.source
    # Pham et al. 2018: only tanh and ReLU, and h_t averages 6 loose ends.
    assert {n.act for n in g.nodes} == {"tanh", "relu"}
    assert len(ENASSpace.loose_ends(g)) == 6
    # Decoding the official fixed_arc (act ids 0 tanh, 1 relu, 2 identity, 3 sigmoid; 0-based prev).
    arc = [int(v) for v in "0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1".split()]
    acts = {0: "tanh", 1: "relu", 2: "identity", 3: "sigmoid"}
    expected = [ENASNode("xh", acts[arc[0]])]
    for k in range(1, len(arc), 2):
        expected.append(ENASNode(node_ref(arc[k] + 1), acts[arc[k + 1]]))
    assert g.nodes == tuple(expected)


def test_get_named_unknown_lists_valid_names():
    with pytest.raises(GenotypeError) as e:
        get_named("gru")
    for name in NAMED:
        assert name in str(e.value)


# ----------------------------------------------------------------------------- JSON round trip
def test_dict_and_json_round_trip(tmp_path):
    for g in NAMED.values():
        assert Genotype.from_dict(g.to_dict()) == g
        assert Genotype.from_json(g.to_json()) == g
        path = tmp_path / f"{g.name}.json"
        text = g.to_json(path)
        assert json.loads(path.read_text()) == json.loads(text)
        back = Genotype.from_json(path)
        assert back == g and back.name == g.name and back.source == g.source
        assert Genotype.from_json(str(path)) == g


def test_name_and_source_ignored_by_equality_and_hash():
    a = Genotype.from_dict(lstm_dict(name="a", source="x"))
    b = Genotype.from_dict(lstm_dict())
    assert a == b and hash(a) == hash(b) and a.hash() == b.hash()
    assert len({a, b}) == 1


def test_genotype_is_frozen_hashable_and_picklable():
    g = get_named("lstm")
    with pytest.raises(AttributeError):
        g.space = "enas"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(g)) == g
    assert g.outputs["h"] == "n4" and dict(g.outputs) == {"h": "n4", "c": "n3"}
    assert isinstance(g.nodes, tuple) and isinstance(g.nodes[0], LSTMNode)
    assert g.nodes[0].inputs[0] == Operand("xh", "sigmoid")


def test_node_refs():
    assert node_ref(3) == "n3" and parse_node_ref("n12") == 12
    assert parse_node_ref("xh") is None and parse_node_ref("n0") is None


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda d: d["nodes"][2]["inputs"].__setitem__(0, ["n3", "identity"]), ["node n3", "'n3'", "xh, c, n1, n2"]),
        (lambda d: d["nodes"][0]["inputs"].__setitem__(1, ["n1", "tanh"]), ["node n1", "'n1'", "xh, c"]),
        (lambda d: d["nodes"][1]["inputs"].__setitem__(1, ["xh", "gelu"]), ["node n2", "'gelu'", "identity, tanh, sigmoid, relu"]),
        (lambda d: d["nodes"][3].__setitem__("op", "sub"), ["node n4", "'sub'", "add, mul"]),
        (lambda d: d["outputs"].__setitem__("h", "n9"), ["outputs", "'n9'", "n1, n2, n3, n4"]),
        (lambda d: d["outputs"].pop("c"), ["outputs", "['h']"]),
        (lambda d: d["nodes"][1].pop("op"), ["node n2", "missing", "op"]),
        (lambda d: d["nodes"][1].__setitem__("inputs", [["xh", "tanh"]]), ["node n2", "exactly 2"]),
        (lambda d: d.pop("outputs"), ["outputs"]),
        (lambda d: d.__setitem__("space", "gru"), ["'gru'", "enas, lstm"]),
        (lambda d: d.pop("nodes"), ["missing", "nodes"]),
        (lambda d: d.__setitem__("nodes", []), ["no nodes"]),
        (lambda d: d.__setitem__("colour", "red"), ["unknown key", "colour"]),
    ],
)
def test_lstm_validation_errors_name_node_value_and_options(mutate, fragments):
    d = lstm_dict()
    mutate(d)
    with pytest.raises(GenotypeError) as e:
        Genotype.from_dict(d)
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


@pytest.mark.parametrize(
    "nodes, fragments",
    [
        ([{"input": "n1", "act": "tanh"}], ["node n1", "'n1'", "must read 'xh'"]),
        ([{"input": "c", "act": "tanh"}], ["node n1", "'c'", "xh"]),
        ([{"input": "xh", "act": "tanh"}, {"input": "xh", "act": "relu"}], ["node n2", "'xh'", "valid inputs: n1"]),
        ([{"input": "xh", "act": "tanh"}, {"input": "n2", "act": "relu"}], ["node n2", "'n2'", "n1"]),
        ([{"input": "xh", "act": "swish"}], ["node n1", "'swish'", "identity, tanh, sigmoid, relu"]),
        ([{"input": "xh"}], ["node n1", "missing", "act"]),
    ],
)
def test_enas_validation_errors(nodes, fragments):
    with pytest.raises(GenotypeError) as e:
        Genotype.from_dict({"space": "enas", "nodes": nodes})
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


def test_enas_rejects_outputs_and_lstm_nodes():
    with pytest.raises(GenotypeError, match="no outputs"):
        Genotype.from_dict({"space": "enas", "nodes": [{"input": "xh", "act": "tanh"}], "outputs": {"h": "n1"}})
    with pytest.raises(GenotypeError, match="node n1"):
        Genotype("enas", (LSTMNode("add", (Operand("xh", "tanh"), Operand("xh", "tanh"))),))


def test_genotype_error_is_value_error():
    assert issubclass(GenotypeError, ValueError)


# ----------------------------------------------------------------------------- structure
def test_live_nodes_and_dead_nodes():
    g = make_space("lstm", 8).pad(get_named("lstm"))
    assert g.num_nodes == 8 and g.live_nodes() == (1, 2, 3, 4)
    canon = g.canonical()
    assert canon.num_nodes == 4 and canon == get_named("lstm").canonical()
    assert g.hash() == get_named("lstm").hash()


def test_depends_on_input():
    assert get_named("lstm").depends_on_input() and get_named("enas_paper").depends_on_input()
    only_c = Genotype.from_dict(
        {"space": "lstm", "nodes": [{"op": "mul", "inputs": [["c", "tanh"], ["c", "sigmoid"]]}],
         "outputs": {"h": "n1", "c": "n1"}}
    )
    assert not only_c.depends_on_input()
    # h reads only c, but c reads xh: h depends on x from the second step on.
    via_c = Genotype.from_dict(
        {"space": "lstm",
         "nodes": [{"op": "add", "inputs": [["c", "identity"], ["xh", "tanh"]]},
                   {"op": "mul", "inputs": [["c", "tanh"], ["c", "sigmoid"]]}],
         "outputs": {"h": "n2", "c": "n1"}}
    )
    assert via_c.depends_on_input()


# ----------------------------------------------------------------------------- canonical / hash
def test_hash_is_stable_and_short():
    # Pinned: a change here changes every stored cell id; do it only on purpose.
    assert get_named("lstm").hash() == "f0849106a2f8"
    assert get_named("enas_paper").hash() == "f1ed1bb63217"
    h = get_named("lstm").hash()
    assert len(h) == 12 and int(h, 16) >= 0


def test_commuted_operands_are_one_cell():
    d = lstm_dict()
    for node in d["nodes"]:
        node["inputs"].reverse()
    swapped = Genotype.from_dict(d)
    assert swapped != get_named("lstm")  # different spelling ...
    assert swapped.canonical() == get_named("lstm").canonical()  # ... same cell
    assert swapped.hash() == get_named("lstm").hash()
    assert swapped.same_cell(get_named("lstm"))


def test_renumbered_nodes_are_one_cell():
    # n1 and n2 are independent: swapping their numbers spells the same LSTM.
    d = lstm_dict()
    d["nodes"][0], d["nodes"][1] = d["nodes"][1], d["nodes"][0]
    assert Genotype.from_dict(d).hash() == get_named("lstm").hash()


def test_different_cells_have_different_hashes():
    d = lstm_dict()
    d["nodes"][3]["inputs"][0] = ["n3", "relu"]
    assert Genotype.from_dict(d).hash() != get_named("lstm").hash()
    d = lstm_dict(outputs={"h": "n3", "c": "n4"})
    assert Genotype.from_dict(d).hash() != get_named("lstm").hash()


def _respell(g: Genotype, rng: random.Random) -> Genotype:
    """Same cell, another spelling: random topological renumbering (+ swapped operands)."""
    n = g.num_nodes
    preds = {i: {parse_node_ref(s) for s in g.node_sources(i)} - {None} for i in range(1, n + 1)}
    order, done = [], set()
    while len(order) < n:
        ready = [i for i in range(1, n + 1) if i not in done and preds[i] <= done]
        pick = rng.choice(ready)
        order.append(pick)
        done.add(pick)
    new = {node_ref(old): node_ref(k + 1) for k, old in enumerate(order)}
    nodes = []
    for old in order:
        node = g.nodes[old - 1]
        if isinstance(node, LSTMNode):
            ops = [Operand(new.get(o.source, o.source), o.act) for o in node.inputs]
            if rng.random() < 0.5:
                ops.reverse()
            nodes.append(LSTMNode(node.op, (ops[0], ops[1])))
        else:
            nodes.append(ENASNode(new.get(node.input, node.input), node.act))
    outputs = {k: new[v] for k, v in g.outputs.items()}
    return Genotype(g.space, tuple(nodes), outputs)


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_canonical_is_invariant_to_respelling(space):
    sp = make_space(space, 8)
    rng = random.Random(0)
    for seed in range(150):
        g = sp.sample(seed)
        other = _respell(g, rng)
        assert other.canonical() == g.canonical(), seed
        assert other.hash() == g.hash()
        assert g.canonical().canonical() == g.canonical()  # idempotent


def test_canonical_separates_sampled_cells():
    # Hash collisions between different canonical cells would merge distinct cells.
    seen: dict[str, Genotype] = {}
    for seed in range(300):
        c = make_space("lstm", 6).sample(seed).canonical()
        prev = seen.setdefault(c.hash(), c)
        assert prev == c


def test_canonical_lstm_drops_dead_nodes_only():
    g = make_space("lstm", 8).sample(7)
    c = g.canonical()
    assert c.num_nodes == len(g.live_nodes())
    assert c.live_nodes() == tuple(range(1, c.num_nodes + 1))


def test_enas_canonical_keeps_all_nodes_and_loose_ends():
    g = get_named("enas_paper")
    c = g.canonical()
    assert c.num_nodes == g.num_nodes and len(ENASSpace.loose_ends(c)) == len(ENASSpace.loose_ends(g))
    assert sorted(n.act for n in c.nodes) == sorted(n.act for n in g.nodes)


# ----------------------------------------------------------------------------- loading
def test_load_genotype_by_name_and_path(tmp_path):
    assert load_genotype("lstm") is get_named("lstm")
    path = tmp_path / "cell.json"
    get_named("enas_paper").to_json(path)
    assert load_genotype(path) == get_named("enas_paper")
    assert load_genotype(str(path)) == get_named("enas_paper")


def test_genotype_file_with_a_bom_loads(tmp_path):
    # A byte-order mark before the JSON (Windows editors write one): json.loads alone refuses it.
    path = tmp_path / "cell.json"
    path.write_bytes(b"\xef\xbb\xbf" + get_named("enas_paper").to_json().encode("utf-8"))
    assert load_genotype(path) == get_named("enas_paper")
    assert Genotype.from_json(str(path)) == get_named("enas_paper")
    assert Genotype.from_json("\ufeff" + get_named("lstm").to_json()) == get_named("lstm")


def test_load_genotype_errors_name_the_file(tmp_path):
    with pytest.raises(GenotypeError) as e:
        load_genotype(tmp_path / "missing.json")
    assert "missing.json" in str(e.value) and "lstm" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GenotypeError) as e:
        load_genotype(bad)
    assert "bad.json" in str(e.value) and "malformed JSON" in str(e.value)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(lstm_dict(space="gru")))
    with pytest.raises(GenotypeError) as e:
        load_genotype(wrong)
    assert "wrong.json" in str(e.value) and "'gru'" in str(e.value)


def test_activations_constant():
    assert ACTIVATIONS == ("identity", "tanh", "sigmoid", "relu")
