"""The circuit engine's API: graph shape and names, circuits as JSON, results, discovery, bad input."""

from __future__ import annotations

import threading

import pytest
import torch

import workbench as wb
from workbench.circuits import (
    Circuit,
    CircuitModelError,
    ComputationGraph,
    EdgeNameError,
    Task,
    acdc,
    eap,
    faithfulness,
    faithfulness_curve,
    greedy_prune,
    patch_edges,
    path_patching,
    top_n,
)
from workbench.circuits.tasks import TaskError


def make_task(model, n=3, s=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.arch.vocab, (n, s), generator=g)
    corr = clean.clone()
    corr[:, 1] = torch.randint(1, model.arch.vocab, (n,), generator=g)
    return Task("rand", clean, corr, torch.randint(1, 500, (n,), generator=g), torch.randint(1, 500, (n,), generator=g))


# -- the graph ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam,split,nodes,edges", [
    # llama: 4 heads, 2 kv heads; 2 layers
    ("llama", False, 1 + 2 * (4 + 2 + 1) + 1, sum(6 * (1 + 5 * L) + (1 + 5 * L + 4) for L in range(2)) + 11),
    ("llama", True, 1 + 2 * (4 + 4 + 2 + 2 + 1) + 1, sum(8 * (1 + 5 * L) + (1 + 5 * L + 4) for L in range(2)) + 11),
    ("gpt2", False, 1 + 2 * 5 + 1, sum(4 * (1 + 5 * L) + (1 + 5 * L + 4) for L in range(2)) + 11),
    ("gpt_neox", False, 1 + 2 * 5 + 1, sum(4 * (1 + 5 * L) + (1 + 5 * L) for L in range(2)) + 11),
])
def test_graph_sizes(tiny, fam, split, nodes, edges):
    g = ComputationGraph.from_model(tiny(fam), split_qkv=split)
    assert (g.n_nodes, g.n_edges) == (nodes, edges)
    assert g.edges.shape == (2, edges)
    assert len(set(g.edge_names)) == edges
    # every edge runs forward: from an earlier layer, or from a head to its own layer's MLP (sequential blocks)
    lay = torch.tensor(g.node_layer)
    kind = g.node_kind
    same = [(kind[a] == "head" and kind[b] == "mlp" and fam != "gpt_neox") for a, b in g.edges.T.tolist()]
    assert bool(((lay[g.edges[0]] < lay[g.edges[1]]) | torch.tensor(same)).all())
    assert g.nodes[0] == "embed" and g.nodes[-1] == "logits"
    assert set(g.node_kind) <= {"embed", "head", "mlp", "logits", "q", "k", "v", "kv"}


def test_node_and_edge_names_give_clear_errors(tiny):
    g = ComputationGraph.from_model(tiny("llama"))
    assert g.edge("a0.h3->m1") == g.edge(("a0.h3", "m1"))
    with pytest.raises(EdgeNameError, match="head 7 does not exist"):
        g.edge("a0.h7->m1")
    with pytest.raises(EdgeNameError, match="layer 5 does not exist"):
        g.edge("m5->logits")
    with pytest.raises(EdgeNameError, match="does not feed"):
        g.edge("m1->a0.h0")
    with pytest.raises(EdgeNameError, match="split_qkv=True"):
        g.edge("embed->a0.h0.q")
    with pytest.raises(EdgeNameError, match="not an edge name"):
        g.edge("embed")
    with pytest.raises(EdgeNameError, match="kv heads"):
        ComputationGraph.from_model(tiny("llama"), split_qkv=True).edge("embed->a0.h0.k")
    with pytest.raises(IndexError, match="out of range"):
        g.edge_ids([10_000])


def test_unsupported_families_are_refused(tiny):
    from workbench.circuits import GraphError

    with pytest.raises(GraphError, match="norms on its block outputs"):
        ComputationGraph.from_model(tiny("gemma2"))


# -- circuits ---------------------------------------------------------------------------------------------
def test_circuit_json_save_load_and_model_check(tiny, tmp_path):
    model = tiny("llama")
    g = ComputationGraph.from_model(model)
    c = Circuit.from_edges(g, [0, 5, 9], method="test")
    back = Circuit.from_json(c.to_json(), model)
    assert back.edges == c.edges and back.graph_config == c.graph_config and back.meta == {"method": "test"}
    p = c.save(tmp_path / "c.json")
    assert Circuit.load(p, model).edges == c.edges
    assert c.nodes and all(n in g.nodes for n in c.nodes)
    assert torch.equal(c.mask(g).nonzero().reshape(-1), torch.tensor([0, 5, 9]))
    other = tiny("gpt2")
    with pytest.raises(CircuitModelError, match="saved for the model"):
        Circuit.load(p, other)
    # same name, another shape (layers)
    import json

    d = json.loads(c.to_json())
    d["graph"]["n_layers"] = 3
    with pytest.raises(CircuitModelError, match="does not fit"):
        Circuit.from_dict(d, model)
    with pytest.raises(CircuitModelError):
        model.run("def f(x):", [other_circuit_spec(other)])
    with pytest.raises(EdgeNameError, match="head 9"):
        Circuit(["a0.h9->m1"], dict(g.config))
    with pytest.raises(ValueError, match="not a circuit"):
        Circuit.from_json("[1, 2]")


def other_circuit_spec(other):
    g = ComputationGraph.from_model(other)
    return Circuit.from_edges(g, [0]).spec(mean=["x"])


def test_circuit_spec_checks_lengths_and_arguments(tiny):
    model = tiny("llama")
    g = ComputationGraph.from_model(model)
    c = Circuit.from_edges(g, [0, 1])
    with pytest.raises(ValueError, match="token length"):
        model.run("def f(x): return x", [c.spec(corrupted="import os")])
    with pytest.raises(ValueError, match="one of them"):
        c.spec()
    with pytest.raises(ValueError, match="one of them"):
        c.spec(corrupted="a", mean=["b"])


# -- results -----------------------------------------------------------------------------------------------
def test_edge_scores_results(tiny):
    model = tiny("llama")
    task = make_task(model)
    s = eap(model, task)
    df = s.to_pandas()
    assert len(df) == s.graph.n_edges and df["score"].abs().is_monotonic_decreasing
    ns = s.node_scores()
    g = s.graph
    want = sum(float(s.scores[i]) for i, e in enumerate(g.edge_names) if e.startswith("a0.h1->"))
    assert ns["a0.h1"] == pytest.approx(want, abs=1e-5)
    assert ns["logits"] == pytest.approx(float(s.scores[g.edges[1] == g.node("logits")].sum()), abs=1e-5)
    c = s.top(5)
    assert len(c) == 5 and set(c.edges) == set(df["edge"].head(5))
    assert top_n(s, 5).edges == c.edges
    ax = s.plot()
    assert ax is not None
    with pytest.raises(ValueError, match="between 0"):
        s.top(10_000)


def test_faithfulness_curve_results(tiny):
    model = tiny("gpt2")
    task = make_task(model)
    s1, s2 = eap(model, task), eap(model, task, "eap-ig", steps=2)
    curves = faithfulness_curve(model, task, [s1, s2], sizes=[0, 0.25, 0.5, 1.0])
    assert set(curves.auc) == {"eap", "eap-ig"}
    c = curves[0]
    E = c.n_edges
    assert c.sizes == [0, round(0.25 * E), round(0.5 * E), E]
    x = torch.tensor(c.sizes, dtype=torch.float64) / E
    assert c.auc == pytest.approx(float(torch.trapezoid(c.values.double(), x)))
    k = c.min_edges(0.8)
    assert k is None or c.values[c.sizes.index(k)] >= 0.8
    assert len(curves.to_pandas()) == 8
    curves.plot()
    with pytest.raises(ValueError, match="fraction"):
        faithfulness_curve(model, task, s1, sizes=[1.5])


def test_greedy_prune_reaches_the_threshold(tiny):
    model = tiny("llama")
    task = make_task(model)
    s = eap(model, task, "eap-ig", steps=2)
    c = greedy_prune(model, task, s, 0.8)
    f = faithfulness(model, task, c)
    assert f >= 0.8 and f == pytest.approx(c.meta["faithfulness"], abs=1e-5)
    below = [k for k, v in c.meta["tried"].items() if k < len(c)]
    assert all(c.meta["tried"][k] < 0.8 for k in below if k > max([0] + [j for j in below if c.meta["tried"][j] >= 0.8]))


def test_acdc_extremes_and_budget(tiny):
    model = tiny("gpt_neox")
    task = make_task(model)
    g = ComputationGraph.from_model(model)
    assert len(acdc(model, task, tau=-1e9)) == g.n_edges  # nothing is ever removed
    assert len(acdc(model, task, tau=1e9)) == 0  # everything is
    part = acdc(model, task, tau=1e9, budget=3)
    assert part.meta["complete"] is False
    sub = acdc(model, task, tau=-1e9, nodes=["a1.h0", "m1"])
    assert all(set(e.split("->")) <= {"embed", "a1.h0", "m1", "logits"} for e in sub.edges)
    c = acdc(model, task, tau=0.01, metric="logit_diff")
    assert 0 <= len(c) <= g.n_edges


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_tasks_are_refused(tiny):
    model = tiny("llama")
    t = make_task(model)
    from types import SimpleNamespace

    def fake(c, k):  # a task-like object that skips Task's own checks: the methods check again
        return SimpleNamespace(name="fake", clean_ids=c, corrupted_ids=k, answer_ids=t.answer_ids[: c.shape[0]],
                               wrong_ids=t.wrong_ids[: c.shape[0]], metric=t.metric)

    with pytest.raises(TaskError, match="no pairs"):
        Task("empty", t.clean_ids[:0], t.corrupted_ids[:0], t.answer_ids[:0], t.wrong_ids[:0])
    with pytest.raises(TaskError, match="no pairs"):
        eap(model, fake(t.clean_ids[:0], t.corrupted_ids[:0]))
    with pytest.raises(TaskError, match="equal token lengths"):
        patch_edges(model, fake(t.clean_ids, t.corrupted_ids[:, :-1]), [[0]])
    with pytest.raises(TaskError, match="vocabulary"):
        faithfulness(model, fake(t.clean_ids + 10_000, t.corrupted_ids), [0])
    with pytest.raises(ValueError, match="unknown method"):
        eap(model, t, "magic")
    with pytest.raises(EdgeNameError, match="head 8"):
        patch_edges(model, t, [["a1.h8->logits"]])
    with pytest.raises(TypeError, match="list of edge sets"):
        patch_edges(model, t, "a0.h1->m1")
    with pytest.raises(EdgeNameError, match="has no input"):
        path_patching(model, t, ["a0.h1"], ["embed"])


def test_cancel_raises_cancelled(tiny):
    model = tiny("llama")
    t = make_task(model)
    ev = threading.Event()
    ev.set()
    with pytest.raises(wb.Cancelled):
        patch_edges(model, t, [[0], [1]], cancel=ev)
    with pytest.raises(wb.Cancelled):
        eap(model, t, "eap-ig", steps=2, cancel=ev)


def test_circuit_spec_runs_under_remote_local_with_the_same_logits(tiny):
    """The circuit spec's ops travel to a remote host (nnsight pickles the workbench's classes by value)."""
    local, remote = tiny("llama"), tiny("llama", remote="local")
    graph = ComputationGraph.from_model(local)
    spec = Circuit(graph.edge_names[:25], graph.config).spec(mean=["The slow brown dog", "a b c d"])
    a = local.run("The quick brown fox", [spec])
    b = remote.run("The quick brown fox", [spec])
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.logits, local.run("The quick brown fox").logits, atol=1e-4)
