"""CircuitGraph: the binary graph payload, top-k by |score|, live faithfulness, exact edge patches,
drill-down (a head's AttentionHeads, an MLP's top neurons against a hook + autograd reference),
pins round-tripping as a Circuit, and clear errors.

The plumbing tests run against stand-ins for the engine's objects (so they test the widget only);
`test_real_engine_*` run the real `workbench.circuits` on a tiny random model where it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.circuits as circuits_pkg
from workbench.circuits import Circuit, ComputationGraph
from workbench.circuits.tasks import make_task
from workbench.widgets._transport import MAX_MESSAGE_BYTES, message_bytes, pack
from workbench.widgets.circuit import CircuitGraph, GraphData, graph_data

CLEAN = ["The cat sat on the mat", "The cat sat on a mat"]
CORRUPT = ["A dog is on a mat", "A dog is on the mat"]


# -- stand-ins for the engine's scores and functions (the graph and Circuit are the engine's own) ----
def embedded_shape_graph() -> ComputationGraph:
    """The embedded model's graph shape (SmolLM2-135M: 30 layers, 9 heads, 3 kv heads), without the model."""
    return ComputationGraph.from_config({"model": "SmolLM2-135M", "family": "llama", "n_layers": 30, "n_heads": 9,
                                         "n_kv_heads": 3, "split_qkv": False, "parallel": False})


@dataclass
class FakeScores:
    graph: ComputationGraph
    scores: torch.Tensor
    task: object = None
    method: str = "EAP"

    def node_scores(self) -> torch.Tensor:
        out = torch.zeros(len(self.graph.nodes))
        return out.index_add(0, self.graph.edges[0], self.scores)

    def top(self, n: int) -> Circuit:
        idx = torch.argsort(self.scores.abs(), descending=True, stable=True)[:n]
        return Circuit.from_edges(self.graph, idx)


CALLS: list[tuple] = []


def fake_task_baselines(model, task, graph) -> tuple[float, float, str]:
    CALLS.append(("baselines",))
    return 3.0, 1.0, "recorded corrupted outputs"


def fake_patch_edges(model, task, edge_sets, graph=None, cancel=None, source=None) -> torch.Tensor:
    """Lists of names: 3 − 0.1 × (characters); a [sets, n_edges] mask of patched edges: 1 + 2 × kept / n."""
    if isinstance(edge_sets, torch.Tensor):
        kept = (~edge_sets).sum(1)
        CALLS.append(("masks", kept.tolist(), source))
        return 1.0 + 2.0 * kept.double() / edge_sets.shape[1]
    CALLS.append(("patch", [len(s) for s in edge_sets]))
    return torch.tensor([3.0 - 0.1 * sum(len(e) for e in s) for s in edge_sets])


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    CALLS.clear()
    monkeypatch.setattr(circuits_pkg, "task_baselines", fake_task_baselines, raising=False)
    monkeypatch.setattr(circuits_pkg, "patch_edges", fake_patch_edges, raising=False)


@pytest.fixture(scope="module")
def llama(tiny: Callable[..., wb.Model]) -> wb.Model:
    return tiny("llama")


@pytest.fixture(scope="module")
def task(llama: wb.Model):
    return make_task(llama, CLEAN, CORRUPT, [" the", " the"], [" a", " a"], name="toy")


@pytest.fixture
def scores(llama, task) -> FakeScores:
    g = ComputationGraph.from_model(llama)
    gen = torch.Generator().manual_seed(0)
    return FakeScores(g, torch.randn(len(g.edge_names), generator=gen), task=task)


def buffers_only(reply: dict) -> tuple[dict, list]:
    """Pack a reply as the kernel sends it; assert no numeric list leaked into the JSON."""
    body, buffers = pack(reply)

    def walk(x: object) -> None:
        if isinstance(x, list):
            assert not (x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)), \
                f"numeric list sent as JSON: {x[:5]}"
            for v in x:
                walk(v)
        elif isinstance(x, dict) and "__array__" not in x:
            for v in x.values():
                walk(v)

    walk(body)
    return body, buffers


# -- payload --------------------------------------------------------------------------------------
def test_graph_payload_is_binary_and_sorted_by_magnitude(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores, max_edges=20)
    r = w.call("graph")
    body, buffers = buffers_only(r)
    n_edges = len(scores.graph.edge_names)
    assert r["n_edges"] == n_edges and r["nodes"]["ids"] == scores.graph.nodes
    assert body["edges"]["weight"]["dtype"] == "float32" and body["edges"]["src"]["dtype"] == "uint16"
    assert body["nodes"]["layer"]["dtype"] == "int32" and body["nodes"]["value"]["dtype"] == "float32"
    assert len(buffers) == 4 + 3  # eid, src, dst, weight + layer, index, value
    # the top 20 edges by |score|, largest first, with the graph's own src/dst and scores
    s = scores.scores.numpy()
    want = np.argsort(-np.abs(s), kind="stable")[:20]
    np.testing.assert_array_equal(r["edges"]["eid"], want)
    np.testing.assert_array_equal(r["edges"]["src"], scores.graph.edges[0].numpy()[want])
    np.testing.assert_array_equal(r["edges"]["dst"], scores.graph.edges[1].numpy()[want])
    np.testing.assert_allclose(r["edges"]["weight"], s[want], rtol=1e-6)
    assert np.all(np.diff(np.abs(r["edges"]["weight"])) <= 0)
    # nodes: heads indexed by head number within their layer, node scores from the engine
    ids = r["nodes"]["ids"]
    assert r["nodes"]["index"][ids.index("a1.h3")] == 3 and r["nodes"]["layer"][ids.index("a1.h3")] == 1
    # the 2 key/value inputs (GQA) of a layer sit below its 4 heads, in the heads' column
    assert r["nodes"]["kinds"][ids.index("a1.kv1")] == "kv" and r["nodes"]["index"][ids.index("a1.kv1")] == 5
    assert r["nodes"]["kinds"][ids.index("m0")] == "mlp" and r["nodes"]["layer"][ids.index("logits")] == 2
    np.testing.assert_allclose(r["nodes"]["value"], scores.node_scores().numpy(), rtol=1e-6)
    assert r["actions"] == {"faithfulness": True, "exact": True, "heads": True, "neurons": True}
    assert CALLS == []  # drawing runs nothing in the model


def test_full_size_graph_payload_fits_one_message() -> None:
    """The embedded model's shape (30 layers × 9 heads: 302 nodes, ~40k edges): 5,000 edges in one message."""
    g = embedded_shape_graph()
    n = len(g.edge_names)
    assert len(g.nodes) == 302 + 30 * 3 and n > 40_000
    s = FakeScores(g, torch.randn(n, generator=torch.Generator().manual_seed(1)))
    w = CircuitGraph(None, s)
    r = w.call("graph")
    body, buffers = buffers_only(r)
    size = message_bytes({"type": "reply", "id": 1, "done": True, "content": body}, buffers)
    assert len(r["edges"]["weight"]) == 5000 and r["n_edges"] == n
    assert size < 80_000 < MAX_MESSAGE_BYTES, size  # 12 bytes per edge (60 kB) + node names and kinds
    assert r["actions"]["faithfulness"] is False  # no model: drawing only


# -- kernel actions ---------------------------------------------------------------------------------
def test_faithfulness_rpc_uses_the_top_k_circuit(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores, k=5)
    n = scores.graph.n_edges
    r = w.call("faithfulness", k=12)
    assert r["k"] == 12 and r["faithfulness"] == pytest.approx(12 / n)  # the fake: kept / n
    assert w.k == 12 and w.last_faithfulness == pytest.approx(12 / n)
    # baselines once, then one patched run of the complement of the top 12 by |score|
    assert CALLS == [("baselines",), ("masks", [12], "recorded corrupted outputs")]
    order = np.argsort(-np.abs(scores.scores.numpy()), kind="stable")
    assert r["threshold"] == pytest.approx(abs(float(scores.scores[order[11]])))
    assert sorted(w.top_edges(12)) == sorted(scores.top(12).edges)  # the slider keeps the top n by |score|
    w.call("faithfulness", k=12)  # cached: the engine is not asked again
    assert w.call("faithfulness", k=n)["faithfulness"] == 1.0  # everything kept: no patched run
    assert len(CALLS) == 2
    assert w.call("faithfulness", k=0)["threshold"] is None
    with pytest.raises(ValueError, match="k must be between 0 and"):
        w.call("faithfulness", k=10_000)


def test_real_engine_faithfulness_follows_the_slider(llama, task) -> None:
    """The slider's number is the engine's faithfulness of the top-k circuit: 0 with no edge, 1 with all."""
    from workbench.circuits import eap, faithfulness

    scores = eap(llama, task)
    w = CircuitGraph(llama, scores)
    n = scores.graph.n_edges
    assert w.call("faithfulness", k=n)["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert w.call("faithfulness", k=0)["faithfulness"] == pytest.approx(0.0, abs=1e-5)
    for k in (3, 10):
        got = w.call("faithfulness", k=k)["faithfulness"]
        assert got == pytest.approx(faithfulness(llama, task, scores.top(k)), abs=1e-6)
        assert sorted(w.top_circuit(k).edges) == sorted(scores.top(k).edges)
    assert w.k == 10


def test_superseded_faithfulness_requests_never_run(llama, scores, fakes) -> None:
    """Slider moves queue behind a running faithfulness; a newer one cancels the queued older ones."""
    import threading

    from workbench.widgets._base import Job

    w = CircuitGraph(llama, scores)
    old, new = Job(1, ("faithfulness", "v")), Job(2, ("faithfulness", "v"))
    old.cancel()  # what the widget does when request 2 arrives from the same view
    done: list = []
    with w._lock_faith:  # a run in progress
        t = threading.Thread(target=lambda: done.append(_try(lambda: w.rpc_faithfulness(5, job=old))))
        t.start()
        t.join(0.2)
    t.join(5)
    assert done and done[0] == "Cancelled" and CALLS == []
    assert w.rpc_faithfulness(7, job=new)["k"] == 7 and CALLS[-1][:2] == ("masks", [7])


def _try(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__


def test_edge_rpc_reports_estimate_and_exact_effect(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores)
    eid = int(np.argmax(np.abs(scores.scores.numpy())))
    r = w.call("edge", eid=eid)
    name = scores.graph.edge_names[eid]
    assert r["name"] == name and r["estimated"] == pytest.approx(float(scores.scores[eid]))
    assert CALLS == [("baselines",), ("patch", [1])]  # the clean metric once, then the edge alone
    assert r["clean_metric"] == pytest.approx(3.0) and r["exact_metric"] == pytest.approx(3.0 - 0.1 * len(name))
    assert r["exact"] == pytest.approx(r["exact_metric"] - r["clean_metric"])
    w.call("edge", eid=eid)
    assert len(CALLS) == 2  # cached
    with pytest.raises(IndexError, match="out of range"):
        w.call("edge", eid=len(scores.graph.edge_names))


def test_real_engine_edge_click_is_the_exact_patch(llama, task) -> None:
    """With the engine's EAP scores and exact edge patching on the tiny Llama."""
    from workbench.circuits import eap, patch_edges

    scores = eap(llama, task)
    w = CircuitGraph(llama, scores)
    d = w.call("graph")
    np.testing.assert_array_equal(d["edges"]["eid"][:20], scores.order()[:20].numpy())
    nodes = scores.node_scores()
    np.testing.assert_allclose(d["nodes"]["value"], [nodes[n] for n in d["nodes"]["ids"]], rtol=1e-5, atol=1e-7)
    for eid in scores.order()[:3].tolist():
        r = w.call("edge", eid=eid)
        name = scores.graph.edge_names[eid]
        v = patch_edges(llama, task, [[name], []]).double()
        assert r["name"] == name
        assert r["exact"] == pytest.approx(float(v[0] - v[1]), abs=1e-5)
        assert r["clean_metric"] == pytest.approx(scores.clean_metric, abs=1e-4)
        assert r["estimated"] == pytest.approx(float(scores.scores[eid]))
    assert w.call("graph")["metric"]["corrupted"] == pytest.approx(scores.corrupted_metric)


def test_head_click_opens_attention_heads_on_the_task_prompt(llama, scores, fakes) -> None:
    from workbench.widgets import AttentionHeads

    w = CircuitGraph(llama, scores)
    r = w.call("node", node="a1.h2")
    assert r["opened"] == "attention" and r["head"] == 2 and r["layer"] == 1 and r["prompt"] == CLEAN[0]
    (view,) = w.detail.children
    assert isinstance(view, AttentionHeads)
    assert view.prompt == CLEAN[0] and view.layers == [1] and view.selection == (1, 2)
    # the pattern it shows is the model's own
    parts = list(view.rpc_patterns())
    assert len(parts) == 1 and parts[0]["layer"] == 1
    with pytest.raises(KeyError, match="not in this graph"):
        w.call("node", node="a9.h0")
    assert "detail" not in w.call("node", node="embed")


def neuron_effect_reference(model: wb.Model, task, layer: int, pairs: int) -> torch.Tensor:
    """grad_clean(metric) · (corrupted − clean) at the MLP's down_proj input, summed over positions; hooks only."""
    hf = model.hf
    mod = hf.model.layers[layer].mlp.down_proj
    total = torch.zeros(model.arch.d_mlp, dtype=torch.float64)
    for i in range(pairs):
        acts: dict[str, torch.Tensor] = {}

        def grab(name, acts=acts):
            def pre(_m, args):
                x = args[0]
                if name == "clean":
                    x.retain_grad()
                acts[name] = x
            return pre

        for name, ids in (("corrupted", task.corrupted_ids[i : i + 1]), ("clean", task.clean_ids[i : i + 1])):
            h = mod.register_forward_pre_hook(grab(name))
            try:
                with torch.enable_grad():
                    logits = hf(input_ids=ids).logits[0, -1]
                    if name == "clean":
                        (logits[task.answer_ids[i]] - logits[task.wrong_ids[i]]).backward()
            finally:
                h.remove()
        grad = acts["clean"].grad[0]
        total += (grad * (acts["corrupted"][0] - acts["clean"][0]).detach()).sum(0).double()
        hf.zero_grad(set_to_none=True)
    return total / pairs


def test_mlp_click_lists_top_neurons_matching_a_hook_reference(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores, n_neuron_pairs=2, top_neurons=8)
    r = w.call("neurons", node="m1")
    body, _ = buffers_only(r)
    assert body["neurons"]["dtype"] == "int32" and body["values"]["dtype"] == "float32"
    ref = neuron_effect_reference(llama, scores.task, 1, 2)
    top = torch.argsort(ref.abs(), descending=True)[:8]
    np.testing.assert_array_equal(np.sort(r["neurons"]), np.sort(top.numpy()))
    np.testing.assert_allclose(r["values"], ref[torch.as_tensor(r["neurons"]).long()].numpy(), rtol=1e-3, atol=1e-6)
    assert "attribution patching on neurons.1" in r["how"]
    with pytest.raises(KeyError, match="not an MLP"):
        w.call("neurons", node="a0.h1")


# -- pins, circuits, export ---------------------------------------------------------------------------
def test_pins_round_trip_as_a_circuit(llama, scores, fakes, tmp_path) -> None:
    w = CircuitGraph(llama, scores)
    names = scores.graph.edge_names
    w.pinned_edges = [names[3], names[0], names[3]]
    w.pinned_nodes = ["m0"]
    assert w.pinned_edges == sorted({names[0], names[3]})
    c = w.circuit
    assert isinstance(c, Circuit) and sorted(c.edges) == sorted({names[0], names[3]})
    path = w.save(tmp_path / "c.json")
    w2 = CircuitGraph(llama, scores)
    w2.load(path)
    assert w2.pinned_edges == w.pinned_edges
    assert w2.pinned_nodes == ["m0"]  # pinned nodes travel in the circuit's meta
    assert w2.circuit.meta["pinned_nodes"] == ["m0"]
    w2.circuit = scores.top(4)
    assert sorted(w2.pinned_edges) == sorted(scores.top(4).edges) and w2.pinned_nodes == []
    with pytest.raises(Exception, match="not in this graph"):
        w.pinned_edges = ["a7.h0->m9"]
    with pytest.raises(Exception, match="not in this graph"):
        w.pinned_nodes = ["a0.h99"]
    with pytest.raises(KeyError, match="not in this graph"):
        w.circuit = ["embed->nowhere"]
    # a circuit of another model's graph is refused, as is loading one saved for another model
    other = Circuit.from_edges(embedded_shape_graph(), [0, 1])
    with pytest.raises(ValueError, match="another graph|saved for"):
        w.circuit = other
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="saved for|does not fit"):
        w.load(tmp_path / "other.json")
    assert w.pinned_edges == sorted({names[0], names[3]})


def test_svg_export_is_kept(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores)
    assert w.call("exported", svg='<svg xmlns="http://www.w3.org/2000/svg"></svg>')["bytes"] > 0
    assert w.svg.startswith("<svg")
    with pytest.raises(ValueError, match="<svg>"):
        w.call("exported", svg="<script>alert(1)</script>")


def test_display_puts_the_detail_box_below(llama, scores, fakes) -> None:
    w = CircuitGraph(llama, scores)
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# -- generic graphs (feature attribution graphs) ----------------------------------------------------------
def test_from_graph_draws_any_layered_graph() -> None:
    nodes = [{"id": "tok_0", "layer": -1, "kind": "token", "label": " Paris"},
             {"id": "20_155_3", "layer": 20, "label": "<b>feature</b>"},
             {"id": "20_7_3", "layer": 20},
             {"id": "logit_Paris", "layer": 30, "kind": "logits"}]
    edges = [("tok_0", "20_155_3", 0.5), ("20_155_3", "logit_Paris", -1.5), ("20_7_3", "logit_Paris", 0.25)]
    w = CircuitGraph.from_graph(nodes, edges, k=2)
    r = w.call("graph")
    assert r["nodes"]["labels"][1] == "<b>feature</b>"  # text: the view sets it with textContent
    np.testing.assert_array_equal(r["nodes"]["index"], [0, 0, 1, 0])
    np.testing.assert_array_equal(r["edges"]["eid"], [1, 0, 2])
    np.testing.assert_allclose(r["edges"]["weight"], [-1.5, 0.5, 0.25])
    assert r["actions"] == {"faithfulness": False, "exact": False, "heads": False, "neurons": False}
    assert w.top_edges(1) == ["20_155_3->logit_Paris"]
    with pytest.raises(ValueError, match="needs the model"):
        w.call("faithfulness", k=1)
    with pytest.raises(ValueError, match="component graph"):
        _ = w.circuit
    with pytest.raises(KeyError, match="not in the nodes"):
        CircuitGraph.from_graph(nodes, [("tok_0", "nope", 1.0)])


def test_bad_input_is_refused(llama, scores) -> None:
    with pytest.raises(ValueError, match="needs EdgeScores"):
        CircuitGraph(llama)
    with pytest.raises(ValueError, match="k must be between"):
        CircuitGraph(llama, scores, k=-1)
    with pytest.raises(ValueError, match="finite"):
        GraphData(["a", "b"], ["a", "b"], ["mlp", "mlp"], [0, 1], [0, 0], [0], [1], [float("nan")])
    with pytest.raises(IndexError, match="node index"):
        GraphData(["a", "b"], ["a", "b"], ["mlp", "mlp"], [0, 1], [0, 0], [0], [5], [1.0])
    with pytest.raises(ValueError, match="unique"):
        GraphData(["a", "a"], ["a", "b"], ["mlp", "mlp"], [0, 1], [0, 0], [], [], [])
    d = graph_data(scores)
    assert d.edge_name(0) == scores.graph.edge_names[0]


def test_set_scores_swaps_methods_on_the_same_graph(llama, task, scores) -> None:
    from workbench.circuits import eap

    w = CircuitGraph(llama, eap(llama, task))
    w.pinned_edges = [scores.graph.edge_names[0]]
    ig = eap(llama, task, method="eap-ig", steps=3)
    w.set_scores(ig)
    assert w.version == 1 and "eap-ig" in w.title and w.pinned_edges == [scores.graph.edge_names[0]]
    np.testing.assert_array_equal(w.call("graph")["edges"]["eid"][:10], ig.order()[:10].numpy())
    with pytest.raises(ValueError, match="another graph"):
        w.set_scores(FakeScores(embedded_shape_graph(), torch.zeros(embedded_shape_graph().n_edges)))


def test_show_viewers_for_edge_scores_and_head_scores(llama, task) -> None:
    from workbench.circuits import eap
    from workbench.circuits.heads import head_scores

    scores = eap(llama, task)
    w = scores.show()  # the scores carry their model and task
    assert isinstance(w, CircuitGraph) and w.lm is llama and w.task is task and w.can_run
    hs = head_scores(llama, n_seqs=2, seq_len=8)
    v = hs.show(kind="previous_token")
    assert isinstance(v, CircuitGraph) and "previous token" in v.title
    r = v.call("graph")
    assert r["n_edges"] == 0 and len(r["nodes"]["ids"]) == llama.n_layers * llama.arch.n_heads
    np.testing.assert_allclose(r["nodes"]["value"], hs.previous_token.float().flatten().numpy(), rtol=1e-6)
    assert r["nodes"]["index"][5] == 1 and r["nodes"]["layer"][5] == 1  # a1.h1 of 4 heads per layer
    assert r["actions"]["heads"] and not r["actions"]["faithfulness"]
    out = v.call("node", node="a0.h3")
    assert out["opened"] == "attention" and v.detail.children[0].selection == (0, 3)
    assert v.detail.children[0].prompt == out["prompt"] and out["prompt"]


@pytest.mark.parametrize("n_kv", [2, 4])
def test_split_qkv_receivers_get_their_own_rows(n_kv) -> None:
    g = ComputationGraph.from_config({"model": "m", "family": "llama", "n_layers": 2, "n_heads": 4, "n_kv_heads": n_kv,
                                      "split_qkv": True, "parallel": False})
    d = graph_data(FakeScores(g, torch.ones(g.n_edges)))
    rows = {}
    for name, kind, layer, row in zip(d.ids, d.kinds, d.layer.tolist(), d.index.tolist(), strict=True):
        if layer == 1 and kind in ("head", "q", "k", "v"):
            rows[name] = row
    assert sorted(rows.values()) == list(range(4 + 4 + 2 * n_kv)), rows  # one row each, no overlap
    assert rows["a1.h2"] == 2 and rows["a1.h2.q"] == 6
    tag = "kv" if n_kv != 4 else "h"
    assert rows[f"a1.{tag}1.k"] == 8 + 1 and rows[f"a1.{tag}1.v"] == 8 + n_kv + 1


def test_path_patching_result_shows_its_sender_receiver_edges(tiny) -> None:
    """``path_patching(...).show()`` draws each sender -> receiver edge, weighted by the metric's change."""
    import torch

    from workbench.circuits import Task, path_patching
    from workbench.widgets import CircuitGraph

    m = tiny("llama")
    a = m.tokenize("def f(x): return x + 1").input_ids
    b = m.tokenize("def f(y): return y + 2").input_ids
    res = path_patching(m, Task("t", a, b, torch.tensor([5]), torch.tensor([6])), ["a0.h0", "a0.h1", "m0"],
                        ["a1.h0", "logits"])
    w = res.show()
    assert isinstance(w, CircuitGraph)
    top = w.top_edges(6)
    assert len(top) == 6
    change = res.change
    biggest = max(((s, r) for s in res.senders for r in res.receivers),
                  key=lambda e: abs(float(change[res.senders.index(e[0]), res.receivers.index(e[1])])))
    assert top[0] == f"{biggest[0]}->{biggest[1]}"
