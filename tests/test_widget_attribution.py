"""AttributionGraph widget (kernel side): the binary payload is the pruned graph, the rpc handlers
re-prune, pin, group, intervene on the real model, stream a generation and export as they should,
and token text travels as text.

One graph of a tiny random Llama (3 layers) with a random ReLU transcoder set on layers 0 and 2
(a real `TranscoderSet`, so feature edits run through its specs); references are the engine's
pruning, plain `model.run` / `model.generate` with hand-made specs, and the exported JSON read back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.graphs as graphs
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.transcoders import TranscoderSet
from workbench.graphs import attribute, node_edits
from workbench.testing import tiny_model
from workbench.widgets import AttributionGraph, FeatureDashboard
from workbench.widgets._base import Cancelled, Job
from workbench.widgets._transport import pack, split
from workbench.widgets.attribution import KIND_CODES

PROMPT = "The <b>fox</b>"
LAYERS = [0, 2]


def random_transcoders(d: int, width: int = 64, seed: int = 0) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)
    return TranscoderSet({L: Dictionary(torch.randn(d, width, generator=g) / d**0.5, torch.randn(width, generator=g) * 0.1,
                                        torch.randn(width, d, generator=g) / width**0.5, torch.randn(d, generator=g) * 0.1,
                                        "relu", f"mlp_in.{L}", f"mlp_out.{L}", labels={1: "one"}) for L in LAYERS})


@pytest.fixture(scope="module")
def setup() -> tuple[wb.Model, TranscoderSet, Any]:
    model = tiny_model("llama", n_layers=3)
    tset = random_transcoders(model.arch.d_model)
    g = attribute(model, PROMPT, tset, batch_size=32, progress=False)
    return model, tset, g


@pytest.fixture()
def w(setup) -> AttributionGraph:
    _, _, g = setup
    g.pinned, g.supernodes, g.labels = [], [], {}
    return AttributionGraph(g)


def expected_id(kind: int, layer: int, pos: int, feature: int, n_layers: int, n_pos: int) -> str:
    """The view's id rule (attribution-logic.ts nodeId), written out again."""
    return {0: f"{layer}_{feature}_{pos}", 1: f"err_{layer}_{pos}", 2: f"E_{feature}_{pos}",
            3: f"{n_layers + 1}_{feature}_{n_pos - 1}"}[kind]


def top_feature(g: Any, pg: Any) -> str:
    kept = pg.masks.nodes.clone()
    kept[g.n_features:] = False
    i = int(torch.where(kept, pg.masks.influence, torch.tensor(-1.0)).argmax())
    return g.node_ids[i]


# -- the payload -----------------------------------------------------------------------------------
def test_payload_is_the_pruned_graph_in_binary_buffers(w: AttributionGraph) -> None:
    g = w.graph
    r = w.call("graph")
    pg = g.prune(0.8, 0.98)
    idx = r["nodes"]["index"]
    assert idx.tolist() == pg.masks.nodes.nonzero().flatten().tolist()
    assert r["counts"]["nodes"] == pg.n_nodes and r["counts"]["edges"] == pg.n_edges
    # ids rebuilt from the columns, as the view does, are the graph's
    ids = [expected_id(int(k), int(L), int(p), int(f), g.n_layers, g.n_pos) for k, L, p, f in
           zip(r["nodes"]["kind"], r["nodes"]["layer"], r["nodes"]["pos"], r["nodes"]["feature"], strict=True)]
    assert ids == [g.node_ids[i] for i in idx.tolist()]
    assert r["nodes"]["kind"].tolist() == [KIND_CODES[g.kind(int(i))] for i in idx]
    assert set(r["nodes"]["kind"].tolist()) == {0, 1, 2, 3}
    # edges: exactly the pruned adjacency's nonzero entries (source -> target, weight)
    _, edges = pg.to_pandas()
    want = {(a, b): round(x, 6) for a, b, x in zip(edges.source, edges.target, edges.weight, strict=True)}
    e = r["edges"]
    got = {(ids[s], ids[t]): round(float(x), 6) for s, t, x in zip(e["src"], e["dst"], e["weight"], strict=True)}
    assert got == want and len(want) == pg.n_edges > 0
    assert np.all(np.diff(np.abs(e["weight"])) <= 0), "strongest edges first"
    assert np.allclose(r["nodes"]["influence"], pg.masks.influence[pg.masks.nodes].numpy())
    # arrays go as binary buffers: the JSON holds descriptors only
    body, buffers = pack(r)
    text = json.dumps(body)
    assert len(buffers) >= 9 and text.count('"__array__"') == len(buffers)
    assert body["edges"]["src"]["dtype"] == "uint16" and body["nodes"]["kind"]["dtype"] == "uint8"
    assert sum(b.nbytes for b in buffers) > len(text) / 4
    sent = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers))  # type: ignore[method-assign]
    w._run(w.rpc_graph, 7, {}, None)
    assert sent and sent[-1][0]["id"] == 7 and sent[-1][1] and len(split(*sent[-1])) == 1


def test_token_text_and_labels_travel_as_text(w: AttributionGraph) -> None:
    from workbench.widgets._base import STATIC

    g = w.graph
    fid = g.node_ids[0]
    g.labels[fid] = '<img src=x onerror="alert(1)">'
    w._payloads.clear()
    r = w.call("graph")
    assert r["tokens"] == g.tokens and "".join(r["tokens"]) == PROMPT and "&lt;" not in json.dumps(r["tokens"])
    local = r["nodes"]["index"].tolist()
    if 0 in local:
        assert r["labels"][str(local.index(0))] == '<img src=x onerror="alert(1)">'
    assert w.call("hover", node=fid)["label"] == '<img src=x onerror="alert(1)">'
    bundle_js = (STATIC / "attribution.js").read_text()
    assert "innerHTML" not in bundle_js and "insertAdjacentHTML" not in bundle_js


# -- live pruning ------------------------------------------------------------------------------------
def test_prune_rpc_reprunes_and_sets_the_thresholds(w: AttributionGraph) -> None:
    g = w.graph
    a = w.call("prune", node_threshold=0.3, edge_threshold=0.6)
    b = w.call("prune", node_threshold=0.95, edge_threshold=0.99)
    assert (w.node_threshold, w.edge_threshold) == (0.95, 0.99)
    assert a["counts"]["nodes"] == g.prune(0.3, 0.6).n_nodes < b["counts"]["nodes"] == g.prune(0.95, 0.99).n_nodes
    assert a["counts"]["edges"] < b["counts"]["edges"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        w.call("prune", node_threshold=1.5, edge_threshold=0.9)
    with pytest.raises(ValueError, match="finite"):
        w.call("prune", node_threshold=float("nan"), edge_threshold=0.9)
    job = Job(1, ("prune", "v"))
    job.cancel()
    with pytest.raises(Cancelled):
        w.rpc_prune(0.5, 0.5, job=job)
    assert (w.node_threshold, w.edge_threshold) == (0.95, 0.99), "a superseded request changes nothing"
    pg = w.prune(0.5, 0.9)  # from Python: the view reloads
    assert w.version == 1 and pg.n_nodes == g.prune(0.5, 0.9).n_nodes
    few = AttributionGraph(g, max_edges=5).call("graph")
    assert len(few["edges"]["weight"]) == 5 and few["counts"]["edges"] > 5


# -- pins and supernodes -------------------------------------------------------------------------------
def test_pins_and_supernodes_round_trip_into_the_graph(w: AttributionGraph) -> None:
    g = w.graph
    a, b, c = g.node_ids[0], g.node_ids[1], g.node_ids[g.error_start]
    assert w.call("pin", ids=[a, c])["pinned"] == sorted([a, c])
    assert w.call("pin", ids=[a])["pinned"] == [c], "a second pin toggles off"
    assert g.pinned == [c]
    with pytest.raises(Exception, match="no node 'nope'"):
        w.call("pin", ids=["nope"])
    w.call("group", label="first", ids=[a, b])
    w.call("group", label="second", ids=[b, c])
    assert w.supernodes == [["first", a], ["second", b, c]] == g.supernodes, "a node is in one supernode"
    w.call("ungroup", label="first")
    assert g.supernodes == [["second", b, c]]
    with pytest.raises(ValueError, match="label"):
        w.call("group", label=" ", ids=[a])
    with pytest.raises(ValueError, match="at least one node"):
        w.call("group", label="x", ids=[])
    w.selected = [a]
    assert w.call("select", ids=[b, a])["selected"] == [b, a]
    # a new view starts from the graph's pins and supernodes
    again = AttributionGraph(g)
    assert again.pinned == [c] and again.supernodes == [["second", b, c]]


def test_propose_supernodes_groups_the_proposals_over_the_shown_features(w: AttributionGraph) -> None:
    g = w.graph
    assert w.call("graph")["actions"]["propose"] is True
    shown = [i for i in g.prune(w.node_threshold, w.edge_threshold).node_ids if g.kind(g.index(i)) == "feature"]
    want = graphs.propose_supernodes(g, shown, threshold=0.3)
    out = w.call("propose", threshold=0.3)
    assert out["proposed"] == want and want, "random features at threshold 0.3 should give at least one group"
    for sn in want:
        assert set(sn[1:]) <= set(shown)
    assert [sn[0] for sn in out["supernodes"]] == [sn[0] for sn in want if len(sn) >= 2] or out["supernodes"]


# -- intervening on the real model -------------------------------------------------------------------------
def test_intervene_on_a_feature_matches_a_plain_run_with_its_edit(setup, w: AttributionGraph) -> None:
    model, tset, g = setup
    fid = top_feature(g, g.prune())
    info = g.node(fid)
    r = w.call("intervene", nodes=[fid], op="scale", factor=-3.0)
    clean = model.run(PROMPT, top_k=5)
    specs = tset.edit({(info["layer"], info["pos"], info["feature"]): -3.0})
    edited = model.run(PROMPT, specs, top_k=5)
    dm = lambda lg: lg[g.logit_ids] - lg.mean()  # noqa: E731
    want = (dm(edited.logits[0].float()) - dm(clean.logits[0].float())).numpy()
    assert np.allclose(r["measured"], want, atol=1e-4)
    assert np.allclose(r["predicted"], g.predict({fid: -3.0}).numpy(), atol=1e-6)
    assert [t for t, _ in r["before"]] == clean.top.tokens[0] and [t for t, _ in r["after"]] == edited.top.tokens[0]
    assert np.abs(want).max() > 0, "the edit changes the logits"
    assert w.last_intervention.nodes == {fid: -3.0}


def test_intervene_on_an_error_node_and_bad_edits(setup, w: AttributionGraph) -> None:
    model, _, g = setup
    eid = f"err_1_{g.n_pos - 1}"  # layer 1 has no transcoder: its whole MLP output at the last position
    w.selected = [eid]
    r = w.call("intervene", op="zero")
    res = model.run(PROMPT, capture=["mlp_out.1"], top_k=1)
    vec = res["mlp_out.1"][0, -1].float()
    edited = model.run(PROMPT, [wb.Steer("mlp_out.1", vec.tolist(), -1.0, [g.n_pos - 1])], top_k=1)
    dm = lambda lg: lg[g.logit_ids] - lg.mean()  # noqa: E731
    want = (dm(edited.logits[0].float()) - dm(res.logits[0].float())).numpy()
    assert np.allclose(r["measured"], want, atol=1e-4) and np.abs(want).max() > 1e-4
    with pytest.raises(ValueError, match="token node"):
        w.call("intervene", nodes=[g.node_ids[g.token_start]], op="zero")
    with pytest.raises(ValueError, match="'zero' or 'scale'"):
        w.call("intervene", nodes=[eid], op="boost")
    with pytest.raises(ValueError, match="finite"):
        w.call("intervene", nodes=[eid], op="scale", factor=float("inf"))
    w.selected = []
    with pytest.raises(ValueError, match="select"):
        w.call("intervene", op="zero")


def test_generate_streams_the_edited_generation(setup, w: AttributionGraph) -> None:
    model, tset, g = setup
    fid = top_feature(g, g.prune())
    gen = w.rpc_generate(nodes=[fid], op="zero", max_new_tokens=4)
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            final = stop.value
            break
    ref = model.generate(PROMPT, node_edits(g, {fid: 0.0}), max_new_tokens=4).text
    assert final["text"] == ref and final["nodes"] == {fid: 0.0}
    assert parts and all(ref.startswith(p["text"]) for p in parts), "partials are the text so far"
    assert w.call("generate", nodes=[fid], op="zero", max_new_tokens=4)["text"] == ref == w.generated
    with pytest.raises(ValueError, match="max_new_tokens"):
        w.call("generate", nodes=[fid], op="zero", max_new_tokens=0)


# -- export, dashboards, exemplars, viewers -----------------------------------------------------------------
def test_export_writes_the_json_with_pins_and_supernodes(w: AttributionGraph, tmp_path, monkeypatch) -> None:
    g = w.graph
    pg = g.prune(0.8, 0.98)
    kept = [i for i in pg.node_ids if g.kind(g.index(i)) == "feature"]
    w.call("pin", ids=[kept[0]])
    w.call("group", label="grp", ids=kept[1:3])
    out = w.call("export", path=str(tmp_path / "g.json"))
    d = json.loads((tmp_path / "g.json").read_text())
    assert out["path"] == str((tmp_path / "g.json").resolve()) == w.last_export
    assert d["qParams"]["pinnedIds"] == [kept[0]] and d["qParams"]["supernodes"] == [["grp", *kept[1:3]]]
    assert len(d["nodes"]) == pg.n_nodes and d["metadata"]["pruning_settings"]["edge_threshold"] == 0.98
    monkeypatch.chdir(tmp_path)
    w.path = ""
    p = w.call("export")["path"]
    assert p.endswith(".graph.json") and (tmp_path / p.rsplit("/", 1)[1]).exists()


def test_click_opens_the_feature_dashboard(setup) -> None:
    model, tset, g = setup
    w = AttributionGraph(g, dictionary_for=tset)
    fid = g.node_ids[0]
    r = w.call("node", node=fid)
    assert r["opened"] == "dashboard"
    (view,) = w.detail.children
    assert isinstance(view, FeatureDashboard) and view.latent == g.node(fid)["feature"]
    assert view.dictionary is tset.dictionary(g.node(fid)["layer"])
    assert "opened" not in w.call("node", node=g.node_ids[g.error_start])
    w2 = AttributionGraph(g, dictionary_for=lambda L: tset.dictionary(L))
    w2.call("node", node=fid)
    assert w2.detail.children[0].dictionary is tset.dictionary(g.node(fid)["layer"])
    assert "opened" not in AttributionGraph(g).call("node", node=fid)
    with pytest.raises(TypeError, match="dictionary_for"):
        AttributionGraph(g, dictionary_for=3)


def test_hover_shows_the_scan_stores_top_exemplars(setup, tmp_path) -> None:
    model, tset, g = setup
    d = tset.dictionary(0)
    store = wb.scan(model, wb.default_corpus(max_passages=4), tmp_path / "s", sites=[],
                    features={"tc0": (d.site, d.encode)}, k=4, window=12, batch_size=4, sample=8, progress=False)
    w = AttributionGraph(g, store=store)
    assert w.call("graph")["actions"]["exemplars"] is True
    fid = next(i for i in g.node_ids[:g.n_features] if g.node(i)["layer"] == 0)
    f = g.node(fid)["feature"]
    ex = w.call("hover", node=fid)["exemplars"]
    top = store.top("tc0", f)[:3]
    assert [(e["value"], e["position"]) for e in ex] == [(v, p) for v, _, p in top]
    assert [e["tokens"] for e in ex] == [[model.tokenizer.decode([i]) for i in store.window_tokens(wi)] for _, wi, _ in top]
    layer2 = next(i for i in g.node_ids[:g.n_features] if g.node(i)["layer"] == 2)
    assert w.call("hover", node=layer2)["exemplars"] == [], "no scan of layer 2's features"
    assert AttributionGraph(g, store=store, store_keys={2: "tc0"}).exemplars(layer2)  # told where to look


def test_show_opens_the_widget_for_graphs_and_pruned_graphs(setup) -> None:
    _, _, g = setup
    assert isinstance(g.show(), AttributionGraph)
    v = g.prune(0.5, 0.9).show()
    assert isinstance(v, AttributionGraph) and (v.node_threshold, v.edge_threshold) == (0.5, 0.9)
    with pytest.raises(TypeError, match="AttributionGraph"):
        AttributionGraph("not a graph")
    with pytest.raises(ValueError, match="between 0 and 1"):
        AttributionGraph(g, node_threshold=2)
    assert "application/vnd.jupyter.widget-view+json" in AttributionGraph(g)._repr_mimebundle_()
