"""circuits.graph and circuits.viewer on small graphs built by hand, results worked out by hand."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from types import NoneType
from typing import Any

import numpy as np
import pytest

from circuits.graph import AttributionGraph, Edge, Node, pearson_r
from circuits.viewer import Example, FeatureExamples, cumulative_influence, viewer_dict

TOKENS = ["<bos>", "Do", " you", " detect", "?"]
LAST = len(TOKENS) - 1


def nodes() -> list[Node]:
    return [
        Node("C", "concept", layer=-1, role="concept", label="bread"),
        Node("A", "feature", 1, 3, feature=10, role="carrier", activation=2.0, influence=0.5),
        Node("B", "feature", 1, LAST, feature=20, role="carrier", activation=1.0, influence=-0.9),
        Node("D", "feature", 2, LAST, feature=30, activation=3.0, influence=5.0),
        Node("G", "feature", 3, LAST, feature=40, role="gate", activation=0.5, influence=-0.7),
        Node("E", "error", 3, LAST, role="error", influence=0.05),
        Node("R", "logit", 5, LAST, role="logit", label="Yes - No"),
        Node("Y", "logit", 5, LAST, feature=7, role="logit", label="Yes"),
    ]


EDGES = [
    ("C", "A", 2.0),
    ("C", "B", -1.0),
    ("A", "G", -3.0),
    ("B", "G", 0.5),
    ("G", "R", -4.0),
    ("E", "R", 1.0),
    ("A", "D", 6.0),
    ("B", "R", 0.25),
    ("C", "Y", 0.2),
]


def make(**meta: Any) -> AttributionGraph:
    metadata = {"model": "tiny", "prompt": "".join(TOKENS), "tokens": TOKENS, **meta}
    return AttributionGraph(nodes(), [Edge(*e) for e in EDGES], metadata, root="R")


def ids(g: AttributionGraph) -> list[str]:
    return [n.id for n in g.nodes]


def pairs(g: AttributionGraph) -> list[tuple[str, str]]:
    return [(e.source, e.target) for e in g.edges]


# ---------------------------------------------------------------- construction


def test_construction_checks() -> None:
    with pytest.raises(ValueError, match="kind"):
        Node("x", "neuron", 0)
    with pytest.raises(ValueError, match="role"):
        Node("x", "feature", 0, role="hero")
    with pytest.raises(ValueError, match="position"):
        Node("x", "feature", 0, position=-2)
    with pytest.raises(ValueError, match="weight"):
        Edge("a", "b", float("nan"))
    n = nodes()
    with pytest.raises(ValueError, match="duplicate"):
        AttributionGraph([*n, n[0]], [], root="R")
    with pytest.raises(ValueError, match="no node"):
        AttributionGraph(n, [Edge("C", "Z", 1.0)], root="R")
    with pytest.raises(ValueError, match="self-loop"):
        AttributionGraph(n, [Edge("A", "A", 1.0)], root="R")
    with pytest.raises(ValueError, match="two edges"):
        AttributionGraph(n, [Edge("C", "A", 1.0), Edge("C", "A", 2.0)], root="R")
    with pytest.raises(ValueError, match="say which is the root"):
        AttributionGraph(n, [])
    with pytest.raises(ValueError, match="not a logit"):
        AttributionGraph(n, [], root="G")
    assert AttributionGraph(n[:7], []).root == "R"  # the only logit node


def test_numbers_are_coerced(unchecked) -> None:
    # numpy scalars where the annotations say int and float: coerced, for an unchecked caller
    with unchecked():
        n = Node("x", "feature", np.int64(3), feature=np.int64(5), activation=np.float32(0.5))
    assert type(n.layer) is int and type(n.feature) is int and type(n.activation) is float
    assert n == Node("x", "feature", 3, feature=5, activation=0.5)
    assert type(Edge("a", "b", np.float64(1)).weight) is float


def test_frames_and_top_edges() -> None:
    g = make()
    assert (g.n_nodes, g.n_edges) == (8, 9)
    nf, ef = g.to_frames()
    assert list(nf["id"]) == ids(g) and list(ef.columns) == ["source", "target", "weight"]
    assert nf.loc[nf["id"] == "G", "role"].item() == "gate"
    assert ef["weight"].tolist() == [w for *_, w in EDGES]
    # |w| 6, 4, 3, 2, then the tie at 1.0 in the graph's order: C->B before E->R
    assert [(e.source, e.target) for e in g.top_edges(6)] == [
        ("A", "D"),
        ("G", "R"),
        ("A", "G"),
        ("C", "A"),
        ("C", "B"),
        ("E", "R"),
    ]
    assert g.top_edges(0) == [] and len(g.top_edges(100)) == 9


# ---------------------------------------------------------------- flow and pruning


def test_flow_by_hand() -> None:
    # inputs |w|: R 4+1+0.25 = 5.25, G 3+0.5 = 3.5, A 2, B 1, D 6, Y 0.2
    # G = 4/5.25 = 16/21; E = 1/5.25 = 4/21; B = 0.25/5.25 + (0.5/3.5)(16/21) = 23/147
    # A = (3/3.5)(16/21) = 96/147 (D has no path to R); C = A + B = 119/147; D = Y = 0
    expect = {"R": 147, "G": 112, "E": 28, "B": 23, "A": 96, "C": 119, "D": 0, "Y": 0}
    flow = make().flow()
    for k, v in expect.items():
        assert flow[k] == pytest.approx(float(Fraction(v, 147))), k
    assert flow["C"] + flow["E"] == pytest.approx(1.0)  # the sources upstream of R share it


def test_flow_refuses_a_cycle() -> None:
    n = [Node("a", "feature", 1, feature=1), Node("b", "feature", 2, feature=2), nodes()[6]]
    g = AttributionGraph(n, [Edge("a", "b", 1.0), Edge("b", "a", 1.0), Edge("b", "R", 1.0)])
    with pytest.raises(ValueError, match="cycle"):
        g.flow()


def test_prune_keeps_paths_to_the_root() -> None:
    p = make().prune()
    # D is a dead end and Y is not the root: both go with their edges
    assert ids(p) == ["C", "A", "B", "G", "E", "R"]
    assert pairs(p) == [
        ("C", "A"),
        ("C", "B"),
        ("A", "G"),
        ("B", "G"),
        ("G", "R"),
        ("E", "R"),
        ("B", "R"),
    ]
    assert p.metadata["pruning"] == {
        "min_abs_weight": 0.0,
        "max_nodes": None,
        "max_edges": None,
        "rank_by": "flow",
    }
    assert p.metadata["model"] == "tiny" and "pruning" not in make().metadata


def test_prune_max_edges() -> None:
    # top 3: A->D (dead end), G->R, A->G; the concept stays though isolated
    p = make().prune(max_edges=3)
    assert ids(p) == ["C", "A", "G", "R"] and pairs(p) == [("A", "G"), ("G", "R")]
    # 5 adds C->A and C->B (tie with E->R, earlier in the graph); B then has no way to R
    p = make().prune(max_edges=5)
    assert ids(p) == ["C", "A", "G", "R"]
    assert pairs(p) == [("C", "A"), ("A", "G"), ("G", "R")]
    assert ids(make().prune(max_edges=6)) == ["C", "A", "G", "E", "R"]


def test_prune_min_abs_weight() -> None:
    # B keeps only C->B (|w| = 1), its edges onward are below 1: B goes, and C->B with it
    p = make().prune(min_abs_weight=1.0)
    assert ids(p) == ["C", "A", "G", "E", "R"]
    assert pairs(p) == [("C", "A"), ("A", "G"), ("G", "R"), ("E", "R")]


def test_prune_max_nodes_by_flow() -> None:
    # candidates after step 3: A, B, G, E with flows 96, 23, 112, 28 (/147)
    p = make().prune(max_nodes=5)
    assert ids(p) == ["C", "A", "G", "E", "R"]
    assert pairs(p) == [("C", "A"), ("A", "G"), ("G", "R"), ("E", "R")]
    p = make().prune(max_nodes=4)
    assert ids(p) == ["C", "A", "G", "R"]
    assert pairs(p) == [("C", "A"), ("A", "G"), ("G", "R")]
    with pytest.raises(ValueError, match="always stay"):
        make().prune(max_nodes=1)  # root and concept


def test_prune_max_nodes_by_influence(unchecked) -> None:
    # |influence|: B 0.9, G 0.7, A 0.5, E 0.05
    p = make().prune(max_nodes=4, rank_by="influence")
    assert ids(p) == ["C", "B", "G", "R"]
    assert pairs(p) == [("C", "B"), ("B", "G"), ("G", "R"), ("B", "R")]
    # A ranked first, but its only way to R is through G, which is cut: fewer than max_nodes
    g = make()
    g = AttributionGraph(
        [replace(n, influence=2.0) if n.id == "A" else n for n in g.nodes],
        g.edges,
        g.metadata,
        root="R",
    )
    p = g.prune(max_nodes=3, rank_by="influence")
    assert ids(p) == ["C", "R"] and p.n_edges == 0
    with unchecked(), pytest.raises(ValueError, match="rank_by"):  # prune's own refusal
        g.prune(rank_by="size")  # type: ignore[arg-type]


# ---------------------------------------------------------------- verify_edges


def test_verify_edges() -> None:
    g = make()
    check = g.verify_edges(lambda e: 2 * e.weight, k=5)
    assert check.n == 5 and check.r == pytest.approx(1.0) and check.sign_agreement == 1.0
    assert list(check.table.columns) == ["source", "target", "predicted", "measured"]
    assert check.table["measured"].tolist() == [12.0, -8.0, -6.0, 4.0, -2.0]
    check = g.verify_edges(lambda e: -e.weight)  # k larger than the graph: all 9 edges
    assert check.n == 9 and check.r == pytest.approx(-1.0) and check.sign_agreement == 0.0


def test_verify_edges_degenerate() -> None:
    g = make()
    with pytest.raises(ValueError, match="at least 3"):
        g.verify_edges(lambda e: e.weight, k=2)
    with pytest.raises(ValueError, match="at least 3"):
        g.prune(max_edges=3).verify_edges(lambda e: e.weight)  # 2 edges left
    assert math.isnan(g.verify_edges(lambda e: 0.5, k=4).r)  # measured has no variance
    # a failed measurement stays in the table, out of r: one finite row leaves r undefined
    check = g.verify_edges(lambda e: e.weight if e.target == "R" else float("nan"), k=4)
    assert check.n == 1 and math.isnan(check.r) and len(check.table) == 4
    check = g.verify_edges(lambda e: float("nan") if e.source == "A" else e.weight, k=6)
    assert check.n == 4 and check.r == pytest.approx(1.0)


def test_pearson_r() -> None:
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8.5]) == pytest.approx(
        np.corrcoef([1, 2, 3, 4], [2, 4, 6, 8.5])[0, 1]
    )
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="at least 3"):
        pearson_r([1, 2], [1, 2])
    with pytest.raises(ValueError, match="one length"):
        pearson_r([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        pearson_r([1, 2, float("inf")], [1, 2, 3])


# ---------------------------------------------------------------- our JSON


def test_save_load_round_trip(tmp_path: Path) -> None:
    g = make(
        concept="bread", strength=0.1 + 0.2, injection_layer=2, root_metric="logit(Yes) - logit(No)"
    )
    for graph in (g, g.prune(max_nodes=4)):
        path = graph.save_json(tmp_path / "sub" / "g.json")
        back = AttributionGraph.load_json(path)
        assert back == graph and back.nodes == graph.nodes and back.edges == graph.edges
        assert back.metadata == graph.metadata and back.root == graph.root
    assert AttributionGraph.load_json(tmp_path / "sub" / "g.json").metadata["strength"] == 0.1 + 0.2
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["g.json"]  # no temp file left


def test_save_refuses_what_json_changes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tuple"):
        make(shape=(1, 2)).save_json(tmp_path / "g.json")
    with pytest.raises(ValueError, match="key 3"):
        make(by_layer={3: 1.0}).save_json(tmp_path / "g.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x", "version": 1}))
    with pytest.raises(ValueError, match="not a mechintro"):
        AttributionGraph.load_json(tmp_path / "other.json")


# ---------------------------------------------------------------- the viewer's JSON
# Written from circuit-tracer's pydantic models, circuit_tracer/frontend/graph_models.py and
# feature_models.py (the circuit-tracer 0.5.0 wheel): field -> accepted JSON types.

OPT_FLOAT = (float, int, NoneType)
METADATA = {
    "slug": str,
    "scan": str,
    "transcoder_list": list,
    "prompt_tokens": list,
    "prompt": str,
    "node_threshold": OPT_FLOAT,
    "schema_version": (int, NoneType),
}
QPARAMS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}
NODE = {
    "node_id": str,
    "feature": int,
    "layer": str,
    "ctx_idx": int,
    "feature_type": str,
    "token_prob": (float, int),
    "is_target_logit": bool,
    "run_idx": int,
    "reverse_ctx_idx": int,
    "jsNodeId": str,
    "clerp": str,
    "influence": OPT_FLOAT,
    "activation": OPT_FLOAT,
}
LINK = {"source": str, "target": str, "weight": (float, int)}
FEATURE_TYPES = {
    "cross layer transcoder",
    "mlp reconstruction error",
    "embedding",
    "logit",
    "steering vector",  # ours: the frontend keeps its clerp and draws it as a feature
}
FEATURE_FILE = {
    "transcoder_id": str,
    "index": int,
    "examples_quantiles": list,
    "top_logits": list,
    "bottom_logits": list,
    "act_min": (float, int),
    "act_max": (float, int),
    "quantile_values": list,
    "histogram": list,
    "activation_frequency": (float, int),
}
EXAMPLE = {
    "tokens_acts_list": list,
    "train_token_ind": int,
    "is_repeated_datapoint": bool,
    "tokens": list,
}


def check_fields(obj: dict[str, Any], schema: dict[str, Any], what: str) -> None:
    missing = set(schema) - set(obj)
    assert not missing, f"{what} lacks {missing}"
    for key, types in schema.items():
        types = types if isinstance(types, tuple) else (types,)
        value = obj[key]  # JSON true is not a number here, though Python's bool is an int
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        assert ok, f"{what}.{key} = {value!r} is not {types}"


def strict_load(text: str) -> Any:
    def refuse(c: str) -> None:
        raise AssertionError(f"{c} is not JSON a browser reads")

    return json.loads(text, parse_constant=refuse)


def check_viewer(data: dict[str, Any]) -> None:
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    check_fields(meta, METADATA, "metadata")
    assert all(isinstance(t, str) for t in meta["prompt_tokens"] + meta["transcoder_list"])
    check_fields(data["qParams"], QPARAMS, "qParams")
    node_ids = set()
    for v in data["nodes"]:
        check_fields(v, NODE, f"node {v.get('node_id')}")
        assert v["feature_type"] in FEATURE_TYPES
        assert v["layer"] == "E" or v["layer"].isdigit()
        assert 0 <= v["ctx_idx"] < len(meta["prompt_tokens"])
        assert 0 <= v["influence"] <= 1  # circuit-tracer's cumulative influence
        if v["feature_type"] == "logit":  # the frontend parses the token and p from it
            assert v["clerp"].startswith('Output "') and "(p=" in v["clerp"]
            float(v["clerp"].split("(p=")[1].split(")")[0])
        node_ids.add(v["node_id"])
    assert len(node_ids) == len(data["nodes"]), "node ids are not unique"
    js_ids = {v["jsNodeId"] for v in data["nodes"]}
    assert len(js_ids) == len(data["nodes"]), "jsNodeIds are not unique"
    for link in data["links"]:
        check_fields(link, LINK, "link")
        assert link["source"] in node_ids and link["target"] in node_ids
    q = data["qParams"]
    assert set(q["pinnedIds"]) <= js_ids and q["clickedId"] in js_ids
    for group in q["supernodes"]:
        assert isinstance(group[0], str) and set(group[1:]) <= js_ids and len(group) > 1
    assert sum(v["is_target_logit"] for v in data["nodes"]) == 1


def test_cumulative_influence_by_hand() -> None:
    # flow, in 147ths: G 112 (4/5.25), E 28, B 23 (0.25/5.25 + 0.5/3.5 * G), A 96 (3/3.5 * G;
    # D reaches no root), C 119 (A + B); D, R and Y 0. Total 378; sorted C, G, A, E, B.
    got = cumulative_influence(make())
    want = {"C": 119, "G": 231, "A": 327, "E": 355, "B": 378, "D": 378, "R": 378, "Y": 378}
    assert got == pytest.approx({k: v / 378 for k, v in want.items()})


def test_viewer_json_matches_the_schema(tmp_path: Path) -> None:
    g = make(strength=float("nan"))  # metadata NaN must not reach the browser
    path = g.to_viewer_json(tmp_path, slug="bread-l1-s4", node_threshold=0.8)
    assert path == tmp_path / "bread-l1-s4.json"
    data = strict_load(path.read_text())
    check_viewer(data)
    assert data == viewer_dict(g, "bread-l1-s4", node_threshold=0.8)
    meta = data["metadata"]
    assert meta["slug"] == "bread-l1-s4" and meta["node_threshold"] == 0.8
    # a per-layer transcoder list, each entry the folder of that layer's feature files
    assert meta["scan"] == "custom-tiny"
    assert meta["transcoder_list"] == [f"./data/features/L{L}" for L in range(4)]
    assert meta["prompt_tokens"] == TOKENS and meta["prompt"] == "".join(TOKENS)
    assert meta["mechintro"]["strength"] is None
    by_id = {v["node_id"]: v for v in data["nodes"]}
    assert len(by_id) == g.n_nodes and len(data["links"]) == g.n_edges
    influence = cumulative_influence(g)
    assert {v["mechintro"]["id"]: v["influence"] for v in data["nodes"]} == influence
    # ids as circuit-tracer writes them; feature = Cantor pairing (1, 10) = 11*12/2 + 10
    a = by_id["1_10_3"]
    assert (a["feature"], a["layer"], a["ctx_idx"], a["activation"]) == (76, "1", 3, 2.0)
    assert a["feature_type"] == "cross layer transcoder" and a["clerp"] == "carrier L1 #10"
    assert a["mechintro"] == {
        "id": "A",
        "kind": "feature",
        "role": "carrier",
        "label": "",
        "position": 3,
        "influence": 0.5,  # our signed attribution, kept beside circuit-tracer's
    }
    assert (
        by_id["3_40_4"]["clerp"] == "gate L3 #40" and by_id["2_30_4"]["clerp"] == "feature L2 #30"
    )
    err = by_id["3_-1_4"]
    assert (err["feature"], err["feature_type"]) == (-1, "mlp reconstruction error")
    # the concept is no token: a steering-vector node the frontend does not relabel "Emb:"
    concept = by_id[f"E_concept_{LAST}"]  # summed over positions: shown at the last token
    assert (concept["layer"], concept["feature"], concept["feature_type"]) == (
        "E",
        -1,
        "steering vector",
    )
    assert concept["clerp"] == 'Concept vector "bread"'
    root, yes = by_id["6_-1_4"], by_id["6_7_4"]  # the gap has no token: virtual index -1
    assert root["is_target_logit"] and not yes["is_target_logit"]
    assert root["clerp"] == 'Output "Yes - No" (p=0.000)'
    assert {"source": "3_40_4", "target": "6_-1_4", "weight": -4.0} in data["links"]
    q = data["qParams"]
    assert q["supernodes"] == [["gates", "3_40_4"], ["evidence carriers", "1_10_3", "1_20_4"]]
    assert q["pinnedIds"] == [f"E_concept_{LAST}", "1_10_3", "1_20_4", "3_40_4", "6_-1_4"]
    assert q["clickedId"] == "6_-1_4" and q["linkType"] == "both"


def test_viewer_shows_real_tokens_and_the_injection_layer() -> None:
    # a logit node with its token and probability, a decoded prompt, the concept at its layer
    nodes_ = [
        replace(n, feature=9, label="yes", probability=0.8125) if n.id == "R" else n
        for n in nodes()
    ]
    g = AttributionGraph(
        nodes_,
        [Edge(*e) for e in EDGES],
        {
            "model": "tiny",
            "tokens": ["Ġraw"] * len(TOKENS),  # BPE pieces: the decoded ones are shown
            "prompt_tokens": TOKENS,
            "prompt": "<bos>Do you detect?",
            "injection_layer": 0,
            "strength": 4.0,
        },
        root="R",
    )
    data = viewer_dict(g, "s")
    check_viewer(data)
    assert data["metadata"]["prompt_tokens"] == TOKENS
    assert data["metadata"]["prompt"] == "<bos>Do you detect?"
    by_id = {v["node_id"]: v for v in data["nodes"]}
    root = by_id["6_9_4"]
    assert root["is_target_logit"] and (root["feature"], root["token_prob"]) == (9, 0.8125)
    assert root["clerp"] == 'Output "yes" (p=0.812)'
    concept = by_id[f"0_concept_{LAST}"]
    assert concept["layer"] == "0"
    assert concept["clerp"] == 'Concept vector "bread" added at block 0\'s output, strength 4'


def card(layer: int = 1, feature: int = 10) -> FeatureExamples:
    top = Example(["a", " cat", " sat"], [0.0, 2.0, 0.5], 1)
    other = Example([" dog"], [1.0], 0)
    return FeatureExamples(
        layer,
        feature,
        f"tiny/L{layer}",
        {"plain": (top, other), "steered": ()},
        top_logits=(" yes", " Yes"),
        bottom_logits=(" no",),
        activations=(2.0, 0.5, 1.0, 0.25),
        n_tokens=8,
    )


def test_feature_file_is_circuit_tracers_feature_model() -> None:
    d = strict_load(json.dumps(card().to_dict(bins=4), allow_nan=False))
    check_fields(d, FEATURE_FILE, "feature file")
    assert (d["transcoder_id"], d["index"]) == ("tiny/L1", 10)
    assert [q["quantile_name"] for q in d["examples_quantiles"]] == ["plain", "steered"]
    first = d["examples_quantiles"][0]["examples"][0]
    check_fields(first, EXAMPLE, "example")
    assert first == {
        "tokens_acts_list": [0.0, 2.0, 0.5],
        "train_token_ind": 1,
        "is_repeated_datapoint": False,
        "tokens": ["a", " cat", " sat"],
    }
    assert d["examples_quantiles"][1]["examples"] == []
    assert (d["act_min"], d["act_max"], d["activation_frequency"]) == (0.0, 2.0, 0.5)
    # four bins of width 0.5 over [0, 2]: 0.25 | 0.5 | 1.0 | 2.0 (the top edge in the last)
    assert d["histogram"] == [1, 1, 1, 1]
    assert len(d["quantile_values"]) == 100
    assert d["quantile_values"][0] == 0.25 and d["quantile_values"][-1] == 2.0
    assert d["quantile_values"][49] == 0.5  # the 50th percentile by nearest rank of 4
    with pytest.raises(ValueError, match="peak"):
        Example(["a"], [1.0], 1)
    with pytest.raises(ValueError, match="one activation per token"):
        Example(["a", "b"], [1.0], 0)


def test_viewer_folder_has_the_feature_files_the_frontend_fetches(tmp_path: Path) -> None:
    g = make()
    cards = [card(1, 10), card(3, 40)]
    g.to_viewer_json(tmp_path, slug="one", features=cards)
    data = strict_load((tmp_path / "one.json").read_text())
    meta = data["metadata"]
    fetched = []
    for v in data["nodes"]:
        if v["feature_type"] == "cross layer transcoder":
            # as init-feature-examples.js loadFeature: {transcoder_list[layer]}/{feature}.json,
            # ./data/ being the folder the server maps it to
            folder = meta["transcoder_list"][int(v["layer"])].removeprefix("./data/")
            fetched.append(tmp_path / folder / f"{v['feature']}.json")
    # Cantor pairings: (1, 10) -> 76, (3, 40) -> 43 * 44 / 2 + 40 = 986
    assert [f for f in fetched if f.exists()] == [
        tmp_path / "features/L1/76.json",
        tmp_path / "features/L3/986.json",
    ]
    assert strict_load(fetched[0].read_text()) == cards[0].to_dict()


def test_viewer_index_file(tmp_path: Path) -> None:
    g = make(vocab_size=100)
    g.to_viewer_json(tmp_path, slug="one")
    g.prune(max_nodes=4).to_viewer_json(tmp_path, slug="two", scan="gemmascope")
    g.to_viewer_json(tmp_path, slug="one", scan="again")  # replaces its entry
    index = strict_load((tmp_path / "graph-metadata.json").read_text())
    assert [e["slug"] for e in index["graphs"]] == ["two", "one"]
    for entry in index["graphs"]:
        assert set(entry) == set(METADATA)  # the Metadata model's fields only
        check_fields(entry, METADATA, "index entry")
    assert [e["scan"] for e in index["graphs"]] == ["custom-gemmascope", "custom-again"]
    two = strict_load((tmp_path / "two.json").read_text())
    check_viewer(two)
    assert "6_100_4" in {v["node_id"] for v in two["nodes"]}  # virtual index vocab_size + 0


def test_viewer_refusals() -> None:
    g = make()
    with pytest.raises(ValueError, match="slug"):
        viewer_dict(g, "../escape")
    with pytest.raises(ValueError, match="tokens"):
        viewer_dict(AttributionGraph(g.nodes, g.edges, {"model": "m"}, root="R"), "s")
    # A2, summed over positions, is shown at the last token, where A now is: both "1_10_4"
    clash = [*nodes(), Node("A2", "feature", 1, -1, feature=10)]
    clash[1] = replace(clash[1], position=LAST)
    with pytest.raises(ValueError, match="both"):
        viewer_dict(AttributionGraph(clash, g.edges, g.metadata, root="R"), "s")
    short = make(tokens=TOKENS[:3])
    with pytest.raises(ValueError, match="past"):
        viewer_dict(short, "s")


# ---------------------------------------------------------------- figure


def test_figure_shows_every_node_and_edge() -> None:
    p = make().prune(max_nodes=5)
    fig = p.figure()
    shown = [i for t in fig.data if t.customdata is not None for i in t.customdata]
    assert sorted(shown) == sorted(ids(p))
    named = [t for t in fig.data if t.customdata is not None]  # a name beside every node
    assert all(t.mode == "markers+text" and len(t.text) == len(t.customdata) for t in named)
    assert {t.name for t in fig.data if t.customdata is not None} == {
        "concept",
        "carrier",
        "gate",
        "error",
        "logit",
    }
    segments = sum(sum(x is None for x in t.x) for t in fig.data if t.mode == "lines")
    assert segments == p.n_edges
    colours = {t.line.color for t in fig.data if t.mode == "lines"}
    assert len(colours) == 2  # positive and negative edges
    assert make().prune(max_edges=0).figure().data  # edgeless graphs draw too
