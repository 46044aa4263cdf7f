"""The circuit engine against a hand-written reference: plain PyTorch hooks and autograd on the HF model.

The reference knows nothing of the workbench: it names nodes itself, records each sender's output
with hooks, and gives every receiver its own input by calling the model's own norm and projection
modules on that input (each head keeps its slice of the projection's output). Patched edges add
``corrupted_u - current_u`` to the receiver's input. EAP / EAP-IG take gradients with autograd
(EAP-IG one step per backward, not batched).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from workbench.circuits import (
    Circuit,
    ComputationGraph,
    Task,
    eap,
    faithfulness,
    faithfulness_curve,
    patch_edges,
    path_patching,
)

ENGINE_FAMILIES = ("llama", "gpt2", "gpt_neox")


# -- the reference ----------------------------------------------------------------------------------
class Ref:
    """Hooks on a tiny HF model (Llama with GQA, GPT-2, GPT-NeoX with parallel blocks)."""

    def __init__(self, hf, family: str, split: bool):
        self.hf, self.family, self.split = hf, family, split
        cfg = hf.config
        self.H = cfg.num_attention_heads if family != "gpt2" else cfg.n_head
        self.G = getattr(cfg, "num_key_value_heads", None) or self.H
        self.d = cfg.hidden_size if family != "gpt2" else cfg.n_embd
        self.dh = self.d // self.H
        if family == "llama":
            self.layers, self.final = hf.model.layers, hf.model.norm
        elif family == "gpt2":
            self.layers, self.final = hf.transformer.h, hf.transformer.ln_f
        else:
            self.layers, self.final = hf.gpt_neox.layers, hf.gpt_neox.final_layer_norm
        self.parallel = family == "gpt_neox" and cfg.use_parallel_residual

    # module names inside a layer
    def parts(self, layer):
        f = self.family
        if f == "llama":
            return layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn, layer.self_attn.o_proj, layer.mlp
        if f == "gpt2":
            return layer.ln_1, layer.ln_2, layer.attn, layer.attn.c_proj, layer.mlp
        return layer.input_layernorm, layer.post_attention_layernorm, layer.attention, layer.attention.dense, layer.mlp

    def q_name(self, L, h):
        return f"a{L}.h{h}.q" if self.split else f"a{L}.h{h}"

    def kv_name(self, L, g, which):
        gqa = self.G != self.H
        base = f"a{L}.kv{g}" if gqa else f"a{L}.h{g}"
        if self.split:
            return f"{base}.{which}"
        return base

    def run(self, ids, patched=(), corr=None, grads=False, embed_override=None):
        """Last logits, sender outputs {name: [b, s, d]} and receiver inputs {name: tensor}."""
        patched = set(patched)
        out: dict[str, torch.Tensor] = {}
        inputs: dict[str, torch.Tensor] = {}
        busy = [False]
        hooks = []
        H, G, dh, d = self.H, self.G, self.dh, self.d

        def recv_input(name, x):
            if name in inputs:  # q, k and v of one receiver share its input
                return inputs[name]
            x = x + 0
            for u, v in patched:
                if v == name:
                    x = x + (corr[u] - out[u])
            if grads:
                x.retain_grad()
            inputs[name] = x
            return x

        def layer_pre(L):
            def hook(mod, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                if L == 0:
                    if embed_override is not None:
                        x = embed_override
                        args = (x, *args[1:]) if args else args
                        if not args:
                            kwargs = {**kwargs, "hidden_states": x}
                    out["embed"] = x
                self.stream = x
                return args, kwargs
            return hook

        def proj_hook(L, ln, kind):
            # kind: "llama-q", "llama-k", "llama-v", "gpt2", "neox"
            def hook(mod, args, output):
                if busy[0]:
                    return None
                busy[0] = True
                try:
                    x = self.stream

                    def project(name):
                        return mod(ln(recv_input(name, x)))

                    if kind == "llama-q":
                        return torch.cat([project(self.q_name(L, h))[..., h * dh:(h + 1) * dh] for h in range(H)], -1)
                    if kind in ("llama-k", "llama-v"):
                        w = kind[-1]
                        return torch.cat([project(self.kv_name(L, g, w))[..., g * dh:(g + 1) * dh] for g in range(G)], -1)
                    if kind == "gpt2":
                        parts = []
                        for j, w in enumerate("qkv"):
                            for h in range(H):
                                name = self.q_name(L, h) if w == "q" else self.kv_name(L, h, w)
                                y = mod(ln(recv_input(name, x)))
                                parts.append(y[..., j * d + h * dh: j * d + (h + 1) * dh])
                        return torch.cat(parts, -1)
                    parts = []  # neox: per head [q | k | v]
                    for h in range(H):
                        for j, w in enumerate("qkv"):
                            name = self.q_name(L, h) if w == "q" else self.kv_name(L, h, w)
                            y = mod(ln(recv_input(name, x)))
                            parts.append(y.view(*y.shape[:-1], H, 3 * dh)[..., h, j * dh:(j + 1) * dh])
                    return torch.cat(parts, -1)
                finally:
                    busy[0] = False
            return hook

        def o_pre(L):
            def hook(mod, args):
                if busy[0]:
                    return None
                z = args[0]
                busy[0] = True
                try:
                    for h in range(H):
                        zh = torch.zeros_like(z)
                        zh[..., h * dh:(h + 1) * dh] = z[..., h * dh:(h + 1) * dh]
                        zero = mod(torch.zeros_like(z))
                        out[f"a{L}.h{h}"] = mod(zh) - zero
                finally:
                    busy[0] = False
            return hook

        def ln2_pre(L):
            def hook(mod, args):
                return (recv_input(f"m{L}", args[0]),)
            return hook

        def mlp_post(L):
            def hook(mod, args, output):
                out[f"m{L}"] = output[0] if isinstance(output, tuple) else output
            return hook

        def final_pre(mod, args):
            return (recv_input("logits", args[0]),)

        try:
            for L, layer in enumerate(self.layers):
                ln1, ln2, attn, o, mlp = self.parts(layer)
                hooks.append(layer.register_forward_pre_hook(layer_pre(L), with_kwargs=True))
                if self.family == "llama":
                    for nm in "qkv":
                        hooks.append(getattr(attn, f"{nm}_proj").register_forward_hook(proj_hook(L, ln1, f"llama-{nm}")))
                elif self.family == "gpt2":
                    hooks.append(attn.c_attn.register_forward_hook(proj_hook(L, ln1, "gpt2")))
                else:
                    hooks.append(attn.query_key_value.register_forward_hook(proj_hook(L, ln1, "neox")))
                hooks.append(o.register_forward_pre_hook(o_pre(L)))
                hooks.append(ln2.register_forward_pre_hook(ln2_pre(L)))
                hooks.append(mlp.register_forward_hook(mlp_post(L)))
            hooks.append(self.final.register_forward_pre_hook(final_pre))
            ctx = torch.enable_grad() if grads else torch.no_grad()
            with ctx:
                logits = self.hf(input_ids=ids, use_cache=False).logits[:, -1]
        finally:
            for h in hooks:
                h.remove()
        return logits, out, inputs


def ref_metric(task, logits):
    rows = torch.arange(logits.shape[0])
    return logits[rows, task.answer_ids] - logits[rows, task.wrong_ids]


def ref_patch(ref: Ref, task, edges):
    """The mean metric with ``edges`` (pairs of node names) patched, computed by the reference."""
    _, corr, _ = ref.run(task.corrupted_ids)
    logits, _, _ = ref.run(task.clean_ids, edges, corr)
    return float(ref_metric(task, logits).mean())


def ref_eap(ref: Ref, task, graph, steps=None):
    """EAP (steps None) or EAP-IG scores by name, one backward per step."""
    _, corr, _ = ref.run(task.corrupted_ids)
    _, clean, _ = ref.run(task.clean_ids)
    n = task.clean_ids.shape[0]
    alphas = [None] if steps is None else [k / steps for k in range(steps)]
    total: dict[str, torch.Tensor] = {}
    for a in alphas:
        emb = None if a is None else (corr["embed"] + a * (clean["embed"] - corr["embed"])).requires_grad_()
        logits, _, inputs = ref.run(task.clean_ids, grads=True, embed_override=emb)
        # autograd.grad on the inputs only: the shared model's parameters must get no .grad
        names = list(inputs)
        grads = torch.autograd.grad(ref_metric(task, logits.float()).sum(), [inputs[k] for k in names])
        for name, g in zip(names, grads, strict=True):
            total[name] = total.get(name, 0) + g
    scores = {}
    for e in graph.edge_names:
        u, v = e.split("->")
        scores[e] = float(((corr[u] - clean[u]) * total[v]).sum()) / (n * len(alphas))
    return scores


# -- fixtures ---------------------------------------------------------------------------------------
def make_task(model, n=3, s=7, seed=0, name="rand"):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.arch.vocab, (n, s), generator=g)
    corr = clean.clone()
    corr[:, 2] = torch.randint(1, model.arch.vocab, (n,), generator=g)
    corr[:, 4] = torch.randint(1, model.arch.vocab, (n,), generator=g)
    ans = torch.randint(1, model.arch.vocab, (n,), generator=g)
    wrong = torch.randint(1, model.arch.vocab, (n,), generator=g)
    return Task(name, clean, corr, ans, wrong, model_name=model.name)


@pytest.fixture(params=ENGINE_FAMILIES)
def fam(request):
    return request.param


def pick_edges(graph, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(graph.n_edges, generator=g)[:k].tolist()


# -- tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True])
def test_exact_edge_patching_matches_reference(tiny, fam, split):
    model = tiny(fam)
    task = make_task(model)
    graph = ComputationGraph.from_model(model, split_qkv=split)
    ref = Ref(model.hf, fam, split)
    sets = [[i] for i in pick_edges(graph, 6, 1)] + [pick_edges(graph, 10, 2), pick_edges(graph, graph.n_edges // 2, 3)]
    # every edge into the last MLP and the logits, and a chain across layers
    sets.append([graph.edge("embed->a0.h1" + (".q" if split else "")), graph.edge("a0.h1->m1"), graph.edge("m1->logits")])
    got = patch_edges(model, task, sets, graph=graph)
    names = graph.edge_names
    for k, es in enumerate(sets):
        want = ref_patch(ref, task, [tuple(names[i].split("->")) for i in es])
        assert got[k].item() == pytest.approx(want, abs=2e-4), (k, [names[i] for i in es])


def test_edges_into_the_logits_match_reference(tiny, fam, monkeypatch):
    """Sets patching only edges into the logits skip the forward: they equal the reference and the traced path."""
    from workbench.circuits import edges as E

    model = tiny(fam)
    task = make_task(model)
    graph = ComputationGraph.from_model(model)
    into = [i for i, nm in enumerate(graph.edge_names) if nm.endswith("->logits")]
    sets = [[i] for i in into[:4]] + [into, into[1::2], []]
    got = patch_edges(model, task, sets, graph=graph)
    names = graph.edge_names
    ref = Ref(model.hf, fam, False)
    for k, es in enumerate(sets):
        want = ref_patch(ref, task, [tuple(names[i].split("->")) for i in es])
        assert got[k].item() == pytest.approx(want, abs=2e-4), (k, [names[i] for i in es])
    monkeypatch.setattr(E, "_direct_ok", lambda m: False)  # every set through the trace
    torch.testing.assert_close(patch_edges(model, task, sets, graph=graph), got, atol=1e-5, rtol=1e-5)


def test_late_sets_skip_early_layers_and_match_reference(tiny, fam):
    """One set per forward (``budget=1``): a set whose receivers are all in late layers skips the layers below."""
    model = tiny(fam)
    task = make_task(model)
    graph = ComputationGraph.from_model(model)
    names = graph.edge_names
    late = [i for i, nm in enumerate(names) if nm.split("->")[1] != "logits" and graph.n_layers > 1
            and nm.split("->")[1].startswith((f"a{graph.n_layers - 1}.", f"m{graph.n_layers - 1}", "m1"))]
    sets = [[i] for i in late[:5]] + [late[::3]]
    got = patch_edges(model, task, sets, graph=graph, budget=1)
    ref = Ref(model.hf, fam, False)
    for k, es in enumerate(sets):
        want = ref_patch(ref, task, [tuple(names[i].split("->")) for i in es])
        assert got[k].item() == pytest.approx(want, abs=2e-4), (k, [names[i] for i in es])


def test_patching_changes_the_metric_and_chunks_agree(tiny):
    model = tiny("llama")
    task = make_task(model)
    graph = ComputationGraph.from_model(model)
    sets = [[i] for i in range(graph.n_edges)]
    a = patch_edges(model, task, sets, graph=graph)
    b = patch_edges(model, task, sets, graph=graph, budget=1)  # one set per forward
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    clean = patch_edges(model, task, [[]], graph=graph)[0]
    assert (a - clean).abs().max() > 1e-3  # single edges do change the metric: the test can fail


@pytest.mark.parametrize("split", [False, True])
def test_eap_and_eap_ig_match_reference(tiny, fam, split):
    model = tiny(fam)
    task = make_task(model)
    graph = ComputationGraph.from_model(model, split_qkv=split)
    ref = Ref(model.hf, fam, split)
    for method, steps in (("eap", None), ("eap-ig", 3)):
        got = eap(model, task, method, steps=steps or 5, graph=graph)
        want = ref_eap(ref, task, graph, steps)
        w = torch.tensor([want[e] for e in graph.edge_names])
        torch.testing.assert_close(got.scores, w, atol=2e-4, rtol=1e-3)
        assert w.abs().max() > 1e-3


def test_eap_ig_chunked_steps_equal_one_batch(tiny):
    model = tiny("gpt2")
    task = make_task(model)
    a = eap(model, task, "eap-ig", steps=4)
    b = eap(model, task, "eap-ig", steps=4, budget=1)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)


def test_path_patching_matches_reference(tiny, fam):
    model = tiny(fam)
    task = make_task(model)
    gqa = fam == "llama"
    receivers = ["a1.h0.q", "a1.kv1.k" if gqa else "a1.h2.k", "a1.kv0.v" if gqa else "a1.h3.v", "m1", "logits"]
    senders = ["a0.h0", "a0.h3", "embed", "m0"]
    res = path_patching(model, task, senders, receivers)
    ref = Ref(model.hf, fam, True)
    for (i, s), (j, r) in itertools.product(enumerate(senders), enumerate(receivers)):
        if fam == "gpt_neox" and s.startswith("a0") and r == "m0":
            continue
        want = ref_patch(ref, task, [(s, r)])
        assert res.values[i, j].item() == pytest.approx(want, abs=2e-4), (s, r)
    assert res.to_pandas().shape == (4, 5)
    assert torch.isfinite(res.normalized).all()


def test_parallel_blocks_have_no_head_to_same_layer_mlp_edge(tiny):
    g = ComputationGraph.from_model(tiny("gpt_neox"))
    assert g.config["parallel"]
    assert "a0.h0->m0" not in g.edge_index and "a0.h0->m1" in g.edge_index
    g2 = ComputationGraph.from_model(tiny("gpt2"))
    assert "a0.h0->m0" in g2.edge_index


def test_faithfulness_is_one_for_the_full_graph_and_zero_for_the_empty_one(tiny, fam):
    model = tiny(fam)
    task = make_task(model)
    graph = ComputationGraph.from_model(model)
    full = Circuit.from_edges(graph, list(range(graph.n_edges)))
    empty = Circuit.from_edges(graph, [])
    assert faithfulness(model, task, full) == 1.0
    assert faithfulness(model, task, empty) == pytest.approx(0.0, abs=1e-4)
    scores = eap(model, task)
    curve = faithfulness_curve(model, task, scores, sizes=[0, 3, graph.n_edges])
    assert curve.values[0].item() == pytest.approx(0.0, abs=1e-4) and curve.values[-1].item() == 1.0
    mid = scores.top(3)
    assert curve.values[1].item() == pytest.approx(faithfulness(model, task, mid), abs=1e-5)


@pytest.mark.parametrize("how", ["corrupted", "mean"])
def test_circuit_spec_through_run_equals_patching_the_complement(tiny, fam, how):
    model = tiny(fam)
    clean, corrupted = "def f(x): return x + 1", "def f(y): return y + 2"
    a = model.tokenize(clean).input_ids
    b = model.tokenize(corrupted).input_ids
    assert a.shape == b.shape
    graph = ComputationGraph.from_model(model)
    circuit = Circuit.from_edges(graph, pick_edges(graph, graph.n_edges // 3, 5))
    spec = circuit.spec(corrupted=corrupted) if how == "corrupted" else circuit.spec(mean=[corrupted, "import os"])
    res = model.run(clean, [spec], logits="last")
    task = Task("one", a, b, torch.tensor([5]), torch.tensor([6]))
    keep = circuit.mask(graph)
    if how == "corrupted":
        # the reference: the complement patched by the hook reference
        ref = Ref(model.hf, fam, False)
        _, corr, _ = ref.run(b)
        names = graph.edge_names
        want, _, _ = ref.run(a, [tuple(names[i].split("->")) for i in (~keep).nonzero().reshape(-1).tolist()], corr)
    else:
        # means of every sender over both prompts' tokens, by the reference
        ref = Ref(model.hf, fam, False)
        outs = [ref.run(model.tokenize(p).input_ids)[1] for p in (corrupted, "import os")]
        mean = {k: torch.cat([o[k][0] for o in outs]).mean(0) for k in outs[0]}
        names = graph.edge_names
        want, _, _ = ref.run(a, [tuple(names[i].split("->")) for i in (~keep).nonzero().reshape(-1).tolist()], mean)
    torch.testing.assert_close(res.logits[0], want[0], atol=2e-4, rtol=1e-4)
    base = model.run(clean, logits="last").logits[0]
    assert (res.logits[0] - base).abs().max() > 1e-3
    if how == "corrupted":
        exact = patch_edges(model, task, [~keep], graph=graph)
        assert exact[0].item() == pytest.approx(float(want[0, 5] - want[0, 6]), abs=2e-4)


def test_circuit_spec_generates_and_round_trips_as_json(tiny):
    import workbench as wb

    model = tiny("llama")
    graph = ComputationGraph.from_model(model)
    circuit = Circuit.from_edges(graph, pick_edges(graph, 20, 7))
    spec = circuit.spec(mean=["def f(x): return x"])
    back = wb.specs_from_json(wb.specs_to_json([spec]))[0]
    assert back == spec
    g1 = model.generate("def f(x):", [spec], max_new_tokens=4)
    g2 = model.generate("def f(x):", [back], max_new_tokens=4)
    assert g1.token_ids == g2.token_ids and len(g1.token_ids) == 4
    # the first generated token is the circuit run's argmax
    assert g1.token_ids[0] == int(model.run("def f(x):", [spec]).top.ids[0, 0])
    plain = model.generate("def f(x):", max_new_tokens=4)
    full = Circuit.from_edges(graph, list(range(graph.n_edges))).spec(mean=["def f(x): return x"])
    assert model.generate("def f(x):", [full], max_new_tokens=4).token_ids == plain.token_ids
    # with a corrupted prompt: the prompt pass is patched, then generation goes on
    cor = circuit.spec(corrupted="def f(y):")
    assert len(model.generate("def f(x):", [cor], max_new_tokens=3).token_ids) == 3


def test_replicated_norm_gradients_equal_autograd_through_copies():
    """EAP's one-norm shortcut: per-receiver input gradients equal autograd through P copies of the norm."""
    from workbench.circuits.edges import Norm, ReplicatedNorm

    class LlamaRMSNorm(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(d))
            self.variance_epsilon = 1e-6

    torch.manual_seed(0)
    d, P = 16, 5
    for mod in (LlamaRMSNorm(d), torch.nn.LayerNorm(d)):
        if isinstance(mod, torch.nn.LayerNorm):
            torch.nn.init.normal_(mod.weight)
            torch.nn.init.normal_(mod.bias)
        norm = Norm(mod)
        x = torch.randn(2, 3, d, requires_grad=True)
        w = torch.randn(P, d)
        # reference: P explicit copies, each normalized on its own
        xin = x.detach().unsqueeze(2).repeat(1, 1, P, 1).requires_grad_()
        (norm(xin) * w).sum().backward()
        zero = torch.zeros((), requires_grad=True)
        delta = zero.expand(2, 3, P, d)
        (y,) = ReplicatedNorm.apply(x, norm, delta)
        torch.testing.assert_close(y, norm(xin).detach())
        gd, gx = torch.autograd.grad((y * w).sum(), [delta, x])
        torch.testing.assert_close(gd, xin.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx, xin.grad.sum(2), atol=1e-5, rtol=1e-5)
