"""Attribution graphs: exactness against a hand-written frozen model, pruning and scores against the
published algorithm written out directly, JSON against the attribution-graph schema, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from graph_fixtures import RandomPLT

from workbench.graphs import (
    AttributionGraph,
    GraphError,
    UnsupportedModelError,
    attribute,
    export_graph,
    import_graph,
)
from workbench.testing import tiny_model

PROMPT = "The quick brown fox"
SCHEMA = Path(__file__).parent / "fixtures" / "attribution_graph_schema.json"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", n_layers=3)


@pytest.fixture(scope="module")
def tset(llama):
    return RandomPLT([0, 2], llama.arch.d_model, 48, seed=1)


@pytest.fixture(scope="module")
def graph(llama, tset):
    return attribute(llama, PROMPT, tset, batch_size=8, progress=False)


# -- an independent frozen Llama, from the HF weights and plain forward hooks ------------------------------
def _frozen_reference(model, ids):
    """``f(e, m) -> (mlp_in per layer, demeaned final)`` with the real run's norm scales and attention
    patterns frozen: written from the HF modules, not from the workbench."""
    hf = model.hf
    base = hf.model
    scales, hooks = {}, []

    def rec(name):
        def hook(mod, args, out):
            x = args[0].float()
            scales[name] = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon)
        return hook

    for L, layer in enumerate(base.layers):
        hooks.append(layer.input_layernorm.register_forward_hook(rec(("ln1", L))))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(rec(("ln2", L))))
    hooks.append(base.norm.register_forward_hook(rec(("final", 0))))
    with torch.no_grad():
        out = hf(ids, output_attentions=True, output_hidden_states=False)
    for h in hooks:
        h.remove()
    pats = [a[0].float() for a in out.attentions]  # [H, s, s]
    emb = base.embed_tokens(ids)[0].detach().float()
    mlp_outs = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o: mlp_outs.append(o[0].detach().float()))
             for layer in base.layers]
    with torch.no_grad():
        hf(ids)
    for h in hooks:
        h.remove()
    cfg = hf.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // H

    def f(e, ms):
        x = e
        ins = []
        for L, layer in enumerate(base.layers):
            h = x * scales[("ln1", L)][0] * layer.input_layernorm.weight
            v = h @ layer.self_attn.v_proj.weight.T
            if layer.self_attn.v_proj.bias is not None:
                v = v + layer.self_attn.v_proj.bias
            v = v.reshape(-1, KV, dh).transpose(0, 1).repeat_interleave(H // KV, 0)  # [H, s, dh]
            z = (pats[L] @ v).transpose(0, 1).reshape(-1, H * dh)
            x = x + z @ layer.self_attn.o_proj.weight.T
            ins.append(x * scales[("ln2", L)][0] * layer.post_attention_layernorm.weight)
            x = x + ms[L]
        fin = x * scales[("final", 0)][0] * base.norm.weight
        return ins, fin[-1]

    return f, emb, mlp_outs


def test_edges_equal_the_jacobian_of_a_hand_written_frozen_model(llama, tset, graph):
    ids = torch.tensor([graph.token_ids])
    f, emb, mlp_outs = _frozen_reference(llama, ids)
    W_U = llama.hf.lm_head.weight.detach().float()
    U = W_U - W_U.mean(0, keepdim=True)
    F, s, nl = graph.n_features, graph.n_pos, graph.n_layers
    rows = list(range(0, F, max(1, F // 25))) + list(range(graph.logit_start, graph.n_nodes))
    for r in rows:
        e = emb.clone().requires_grad_(True)
        ms = [m.clone().requires_grad_(True) for m in mlp_outs]
        ins, fin = f(e, ms)
        if r < F:
            L, p, fi = graph.features[r].tolist()
            target = ins[L][p] @ tset.dictionary(L).W_enc[:, fi] + tset.dictionary(L).b_enc[fi]
        else:
            target = fin @ U[graph.logit_ids[r - graph.logit_start]]
        grads = torch.autograd.grad(target, [e] + ms, allow_unused=True)
        g_e = grads[0]
        g_m = [g if g is not None else torch.zeros_like(m) for g, m in zip(grads[1:], ms, strict=True)]
        want = torch.zeros(graph.n_nodes)
        acts = {L: tset.encode(L, _mlp_in(llama, ids, L)) for L in tset.layers}
        for j, (L, p, fi) in enumerate(graph.features.tolist()):
            want[j] = acts[L][p, fi] * (tset.dictionary(L).W_dec[fi] @ g_m[L][p])
        for L in range(nl):
            err = mlp_outs[L] - (tset.dictionary(L).decode(acts[L]) if L in acts else 0)
            want[F + L * s:F + (L + 1) * s] = (err * g_m[L]).sum(-1)
        want[F + nl * s:F + nl * s + s] = (emb * g_e).sum(-1)
        torch.testing.assert_close(graph.adjacency[r], want, atol=1e-4, rtol=1e-4)
        assert float(graph.values[r]) == pytest.approx(float(target.detach()), abs=1e-4)  # the row's own value


def _mlp_in(model, ids, L):
    """The real run's MLP input of layer L (the pre-MLP norm's output), by a plain forward hook."""
    got = []
    h = model.hf.model.layers[L].post_attention_layernorm.register_forward_hook(lambda m, a, o: got.append(o[0]))
    with torch.no_grad():
        model.hf(ids)
    h.remove()
    return got[0].float()


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_incoming_edges_plus_bias_equal_each_rows_value(family):
    m = tiny_model(family, n_layers=3)
    ts = RandomPLT([0, 1, 2], m.arch.d_model, 40, seed=2)
    g = attribute(m, PROMPT, ts, batch_size=7, progress=False)
    rows = list(range(g.n_features)) + list(range(g.logit_start, g.n_nodes))
    resid = (g.adjacency.sum(1) + g.bias - g.values)[rows]
    assert g.n_features > 20
    assert float(resid.abs().max()) < 1e-4


def test_logit_rows_hold_the_real_models_logits(llama, graph):
    with torch.no_grad():
        logits = llama.hf(torch.tensor([graph.token_ids])).logits[0, -1].float()
    want = logits[graph.logit_ids] - logits.mean()
    torch.testing.assert_close(graph.values[graph.logit_start:], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(graph.logit_probs, torch.softmax(logits, -1)[graph.logit_ids], atol=1e-6, rtol=1e-5)


def test_batch_size_does_not_change_the_graph(llama, tset, graph):
    one = attribute(llama, PROMPT, tset, batch_size=1, progress=False)
    assert one.settings["backward_passes"] == graph.n_features + graph.n_logits
    # rows in batches of 8, one partial batch at most per prompt prefix (a frozen forward each)
    prefixes = graph.settings["forward_passes"]
    assert 1 < prefixes <= 4 and one.settings["forward_passes"] == prefixes
    full = -(-(graph.n_features + graph.n_logits) // 8)
    assert full <= graph.settings["backward_passes"] <= full + prefixes - 1
    torch.testing.assert_close(one.adjacency, graph.adjacency, atol=1e-5, rtol=1e-5)


def test_max_feature_nodes_keeps_the_most_influential(llama, tset, graph):
    cap = 12
    g = attribute(llama, PROMPT, tset, batch_size=4, max_feature_nodes=cap, progress=False)
    assert g.n_features == cap
    assert g.settings["n_active_features"] == graph.n_features
    # every kept feature is an active one, and its logit-row edges are the full graph's
    full_ids = graph.node_ids
    for i, nid in enumerate(g.node_ids[:cap]):
        j = full_ids.index(nid)
        torch.testing.assert_close(g.adjacency[g.logit_start:, i], graph.adjacency[graph.logit_start:, j],
                                   atol=1e-5, rtol=1e-5)


# -- pruning and scores: the published algorithm, written out with matrix inverses ------------------------
def _direct_prune(A, w, n_feat, n_tok, n_logit, nt, et):
    n = A.shape[0]
    B = A.abs() / A.abs().sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(n, dtype=torch.float64)
    total = torch.linalg.inv(eye - B.double()) - eye  # B + B^2 + ...
    inf = (w.double() @ total).float()

    def thr(x, t):
        v = torch.sort(x.flatten(), descending=True).values
        c = torch.cumsum(v, 0) / v.sum()
        return v[min(int((c < t).sum()), v.numel() - 1)]

    keep = inf >= thr(inf, nt)
    keep[n - n_tok - n_logit:] = True
    P = A.clone()
    P[~keep] = 0
    P[:, ~keep] = 0
    Bp = P.abs() / P.abs().sum(1, keepdim=True).clamp(min=1e-10)
    inf_p = (w.double() @ (torch.linalg.inv(eye - Bp.double()) - eye)).float() + w
    es = Bp * inf_p[:, None]
    edges = (es >= thr(es, et)) & (P != 0)
    inner = n - n_tok - n_logit
    for _ in range(n):
        edges[~keep] = False
        edges[:, ~keep] = False
        keep[:inner] &= edges[:, :inner].any(0)
        keep[:n_feat] &= edges[:n_feat].any(1)
    return keep, edges, inf


def _hand_graph():
    torch.manual_seed(3)
    n_feat, n_err, n_tok, n_log = 8, 3, 3, 2
    n = n_feat + n_err + n_tok + n_log
    A = torch.zeros(n, n)
    order = list(range(n_feat + n_err, n_feat + n_err + n_tok)) + list(range(n_feat + n_err)) + \
        list(range(n - n_log, n))  # tokens, then features/errors, then logits: a DAG
    for a_i, t in enumerate(order):
        for s in order[:a_i]:
            if t < n - n_log and t >= n_feat:
                continue  # error nodes have no incoming edges
            if t >= n_feat + n_err and t < n - n_log:
                continue  # tokens neither
            if torch.rand(()) < 0.6:
                A[t, s] = torch.randn(())
    w = torch.zeros(n)
    w[-n_log:] = torch.tensor([0.7, 0.2])
    return A, w, n_feat, n_err, n_tok, n_log


@pytest.mark.parametrize(("nt", "et"), [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0), (0.3, 0.6)])
def test_pruning_matches_the_published_algorithm(nt, et):
    from workbench.graphs import prune_masks

    A, w, nf, ne, nt_, nl = _hand_graph()
    m = prune_masks(A, w, nf, nt_, nl, nt, et)
    keep, edges, inf = _direct_prune(A, w, nf, nt_, nl, nt, et)
    torch.testing.assert_close(m.influence, inf, atol=1e-5, rtol=1e-4)
    assert torch.equal(m.nodes, keep)
    assert torch.equal(m.edges, edges)


def test_scores_match_their_definitions():
    from workbench.graphs import graph_scores

    A, w, nf, ne, nt, nl = _hand_graph()
    n = A.shape[0]
    B = A.abs() / A.abs().sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(n, dtype=torch.float64)
    inf = (w.double() @ (torch.linalg.inv(eye - B.double()) - eye)).float()
    tok, err = inf[nf + ne:nf + ne + nt].sum(), inf[nf:nf + ne].sum()
    out = inf + w
    comp = ((1 - B[:, nf:nf + ne].sum(1)) * out).sum() / out.sum()
    s = graph_scores(A, w, nf, ne, nt)
    assert s.replacement == pytest.approx(float(tok / (tok + err)), abs=1e-5)
    assert s.completeness == pytest.approx(float(comp), abs=1e-5)
    assert 0 < s.replacement < 1 and 0 < s.completeness < 1


def test_pruned_graph_keeps_tokens_and_logits_and_moves_with_thresholds(graph):
    loose, tight = graph.prune(0.95, 0.99), graph.prune(0.5, 0.8)
    for p in (loose, tight):
        assert bool(p.masks.nodes[graph.token_start:].all())
        assert not bool(p.masks.edges[~p.masks.nodes].any())
    assert tight.n_nodes < loose.n_nodes <= graph.n_nodes
    with pytest.raises(ValueError, match="node_threshold must be between 0 and 1"):
        graph.prune(1.5)


# -- prediction ---------------------------------------------------------------------------------------------
def test_prediction_is_linear_in_the_factor(graph):
    i = int(torch.argmax(graph.influence()[:graph.n_features]))
    z, two = graph.predict({i: 0.0}), graph.predict({i: 2.0})
    torch.testing.assert_close(z, -two, atol=1e-6, rtol=1e-5)
    # direct logit effect alone when nothing lies between the feature and the logits
    L = int(graph.features[i, 0])
    if L == max(graph.covered_layers):
        later = (graph.features[:, 0] > L).any()
        assert not bool(later)
        torch.testing.assert_close(z, -graph.adjacency[graph.logit_start:, i], atol=1e-5, rtol=1e-4)


def test_error_node_edit_on_the_real_model(graph):
    r = graph.intervene({f"err_1_{graph.n_pos - 1}": 0.0})
    assert len(r.measured) == graph.n_logits and len(r.predicted) == graph.n_logits
    # the last position's error feeds the logits directly: the top logit moves as predicted in sign
    assert r.measured[0] != 0.0
    assert r.before != r.after or r.measured[0] != 0.0


# -- JSON -----------------------------------------------------------------------------------------------------
def test_export_validates_against_the_schema_and_reimports_unchanged(graph, tmp_path):
    import jsonschema

    g = graph
    g.pinned = [g.node_ids[0], g.node_ids[g.logit_start]]
    g.supernodes = [["pair", g.node_ids[0], g.node_ids[1]]]
    g.labels = {g.node_ids[0]: "a <b>label</b>"}
    d1 = export_graph(g, tmp_path / "g.json", node_threshold=1.0, edge_threshold=1.0)
    jsonschema.validate(d1, json.loads(SCHEMA.read_text()))
    assert d1["qParams"]["pinnedIds"][0] == g.node_ids[0]
    assert d1["qParams"]["supernodes"][0][0] == "pair"
    g2 = import_graph(tmp_path / "g.json")
    assert export_graph(g2) == json.loads((tmp_path / "g.json").read_text())
    assert g2.labels[g.node_ids[0]] == "a <b>label</b>"
    assert g2.pinned == g.pinned


def test_save_and_load_round_trip(graph, tmp_path):
    p = graph.save(tmp_path / "graph.json")
    g = AttributionGraph.load(p)
    assert torch.equal(g.adjacency, graph.adjacency)
    assert g.node_ids == graph.node_ids and g.logit_tokens == graph.logit_tokens
    assert g.scores() == graph.scores()


@pytest.mark.parametrize("text", ["{not json", '{"metadata": {}}', '[1, 2]',
                                  '{"metadata": {"prompt_tokens": ["a"], "prompt": "a"}, "nodes": [], '
                                  '"links": [{"source": "x", "target": "y", "weight": 1}]}'])
def test_corrupt_graph_json_gives_a_clear_error(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(GraphError, match="JSON|missing|not among|corrupt|attribution"):
        import_graph(p)
    with pytest.raises(GraphError):
        AttributionGraph.load(p)


# -- bad input ------------------------------------------------------------------------------------------------
def test_long_prompt_is_refused_with_a_memory_estimate(llama, tset):
    with pytest.raises(GraphError, match=r"over max_tokens=8: .* about \d+\.\d\d GB"):
        attribute(llama, "a b c d e f g h i j k l m n o p", tset, max_tokens=8, progress=False)


def test_multi_token_target_is_refused(llama, tset):
    with pytest.raises(ValueError, match="is [0-9]+ tokens"):
        attribute(llama, PROMPT, tset, targets=[" antidisestablishmentarianism"], progress=False)


def test_named_single_token_targets(llama, tset):
    tok = llama.tokenizer.decode([5])
    g = attribute(llama, PROMPT, tset, targets=[5, tok], progress=False)
    assert g.logit_ids == [5, 5] or g.logit_ids[0] == 5


def test_empty_prompt_is_refused(llama, tset):
    with pytest.raises(GraphError, match="non-empty"):
        attribute(llama, "  ", tset, progress=False)


def test_unsupported_models_are_refused_clearly():
    m = tiny_model("gpt2", n_layers=2)
    with pytest.raises(UnsupportedModelError, match="q_proj and k_proj"):
        attribute(m, PROMPT, RandomPLT([0], m.arch.d_model, 8), progress=False)


# -- other transcoder kinds ------------------------------------------------------------------------------------
def _identity(g):
    rows = list(range(g.n_features)) + list(range(g.logit_start, g.n_nodes))
    return float((g.adjacency.sum(1) + g.bias - g.values)[rows].abs().max())


def test_skip_and_topk_transcoders_keep_rows_exact(llama):
    from graph_fixtures import random_transcoders

    skip = random_transcoders([0, 1], llama.arch.d_model, 32, seed=4, skip=True)
    g = attribute(llama, PROMPT, skip, batch_size=16, progress=False)
    assert g.n_features > 10 and _identity(g) < 1e-4
    topk = random_transcoders([1, 2], llama.arch.d_model, 32, seed=5, architecture="topk", k=4)
    g = attribute(llama, PROMPT, topk, batch_size=16, progress=False)
    assert g.n_features == 2 * 4 * g.n_pos or g.n_features <= 2 * 4 * g.n_pos
    assert _identity(g) < 1e-4


def _random_clt(model, layers, m, seed=6):
    from workbench.dictionaries.clt import CrossLayerTranscoder
    from workbench.dictionaries.transcoders import TranscoderSet

    g = torch.Generator().manual_seed(seed)
    d, n = model.arch.d_model, len(layers)
    clt = CrossLayerTranscoder(W_enc=torch.randn(n, d, m, generator=g) / d**0.5, b_enc=torch.randn(n, m, generator=g) * 0.1,
                               W_dec=[torch.randn(m, n - i, d, generator=g) / m**0.5 for i in range(n)],
                               b_dec=torch.randn(n, d, generator=g) * 0.1, layers=list(layers))
    return TranscoderSet(clt)


def test_cross_layer_transcoder_edges_sum_over_the_layers_a_latent_writes(llama):
    ts = _random_clt(llama, [0, 1, 2], 24)
    g = attribute(llama, PROMPT, ts, batch_size=16, progress=False)
    assert g.settings["kind"] == "clt" and _identity(g) < 1e-4
    # a layer-0 latent's edge into the top logit: its activation times the sum over the three
    # layers it writes of (its decoder row for that layer) . (the logit's gradient there)
    ids = torch.tensor([g.token_ids])
    f, emb, mlp_outs = _frozen_reference(llama, ids)
    W_U = llama.hf.lm_head.weight.detach().float()
    u = W_U[g.logit_ids[0]] - W_U.mean(0)
    ms = [m.clone().requires_grad_(True) for m in mlp_outs]
    _, fin = f(emb, ms)
    gm = torch.autograd.grad(fin @ u, ms, allow_unused=True)
    W = ts.decoder_rows(0)
    for j in [j for j in range(g.n_features) if int(g.features[j, 0]) == 0][:10]:
        _, p, fi = g.features[j].tolist()
        want = float(g.activations[j]) * sum(float(W[fi, k] @ gm[k][p]) for k in range(3))
        assert float(g.adjacency[g.logit_start, j]) == pytest.approx(want, abs=1e-4, rel=1e-4)


def test_feature_edit_on_the_real_model_moves_the_logits(llama):
    ts = _random_clt(llama, [0, 1, 2], 24)
    g = attribute(llama, PROMPT, ts, batch_size=16, progress=False)
    i = int(torch.argmax(g.influence()[:g.n_features]))
    r = g.intervene({g.node_ids[i]: 0.0})
    assert any(abs(v) > 1e-6 for v in r.measured)
    v = g.verify(top=5, progress=False)
    assert len(v.rows) == 5 and -1.0 <= v.correlation <= 1.0


def test_attribution_runs_under_remote_local_with_the_same_graph(llama, tset, graph):
    g = attribute(llama, PROMPT, tset, batch_size=8, progress=False, remote="local")
    torch.testing.assert_close(g.adjacency, graph.adjacency, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.bias, graph.bias, atol=1e-5, rtol=1e-5)
    # what travels: the plans up, the rows down (one trace per prompt prefix, its backward passes inside it)
    assert g.settings["forward_passes"] == graph.settings["forward_passes"]
    assert g.settings["download_bytes"] == (g.n_features + g.n_logits) * (g.n_nodes + 1) * 4
    assert 0 < g.settings["upload_bytes"]


@pytest.mark.parametrize("site", ["resid_mid", "ln2_normalized"])
def test_transcoders_reading_other_mlp_input_sites(llama, site):
    from graph_fixtures import random_transcoders

    ts = random_transcoders([0, 2], llama.arch.d_model, 32, seed=7, site=site, skip=True)
    g = attribute(llama, PROMPT, ts, batch_size=16, progress=False)
    assert g.n_features > 10 and _identity(g) < 1e-4
    r = g.intervene({f"err_2_{g.n_pos - 1}": 0.0})  # the error is what the set leaves unexplained there
    assert any(abs(v) > 1e-7 for v in r.measured)


def test_a_transcoder_set_that_does_not_fit_the_model_is_refused(llama):
    from graph_fixtures import random_transcoders

    from workbench.dictionaries import DictionaryError

    wide = random_transcoders([0], llama.arch.d_model + 8, 16)
    with pytest.raises(DictionaryError, match="width"):
        attribute(llama, PROMPT, wide, progress=False)
    deep = random_transcoders([7], llama.arch.d_model, 16)
    with pytest.raises((DictionaryError, IndexError, ValueError), match="7"):
        attribute(llama, PROMPT, deep, progress=False)
