"""Head scores (induction, previous-token, duplicate-token, copying) against plain PyTorch references."""

from __future__ import annotations

import random

import matplotlib
import pytest
import torch

from workbench.circuits.heads import HEAD_SCORE_KINDS, HeadScores, head_scores, repeated_sequences

matplotlib.use("Agg")

#: family -> (decoder layers, output projection inside a layer, final norm, unembedding), hand-written
PATHS = {
    "llama": (lambda m: m.model.layers, lambda lay: lay.self_attn.o_proj, lambda m: m.model.norm, lambda m: m.lm_head),
    "gpt2": (lambda m: m.transformer.h, lambda lay: lay.attn.c_proj, lambda m: m.transformer.ln_f, lambda m: m.lm_head),
    "gpt_neox": (lambda m: m.gpt_neox.layers, lambda lay: lay.attention.dense, lambda m: m.gpt_neox.final_layer_norm,
                 lambda m: m.get_output_embeddings()),
}


def reference(hf, ids: torch.Tensor, seq_len: int, n_heads: int) -> dict[str, torch.Tensor]:
    """The four scores from output_attentions=True and forward hooks (no nnsight), one sequence at a time."""
    family = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "gpt_neox"}[type(hf).__name__]
    layers_of, oproj_of, norm_of, unembed_of = PATHS[family]
    layers = list(layers_of(hf))
    z_in: dict[int, torch.Tensor] = {}
    final_in: list[torch.Tensor] = []
    hooks = [oproj_of(lay).register_forward_hook(lambda mod, a, out, i=i: z_in.__setitem__(i, a[0].detach()))
             for i, lay in enumerate(layers)]
    norm = norm_of(hf)
    hooks.append(norm.register_forward_hook(lambda mod, a, out: final_in.append(a[0].detach())))
    n_layers = len(layers)
    sums = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64) for k in HEAD_SCORE_KINDS}
    counts = dict.fromkeys(HEAD_SCORE_KINDS, 0)
    L = seq_len
    T = ids.shape[1]
    off = T - 2 * L
    w_u = unembed_of(hf).weight.detach().double()
    w_u = w_u - w_u.mean(0, keepdim=True)
    gamma = norm.weight.detach().double()
    layer_norm = isinstance(norm, torch.nn.LayerNorm)
    eps = norm.eps if layer_norm else norm.variance_epsilon
    try:
        for row in ids:
            z_in.clear()
            final_in.clear()
            with torch.no_grad():
                out = hf(input_ids=row[None], output_attentions=True)
            x = final_in[0][0].double()  # [T, d]
            if layer_norm:
                x = x - x.mean(-1, keepdim=True)
            inv = 1 / torch.sqrt((x * x).mean(-1) + eps)
            for layer, att in enumerate(out.attentions):
                a = att[0].double()  # [H, T, T]
                z = z_in[layer][0].double()  # [T, H * d_head]
                proj = oproj_of(layers[layer])
                w = proj.weight.detach().double()
                w = w.T if type(proj).__name__ == "Conv1D" else w  # [d_model, H * d_head]
                d_head = z.shape[-1] // n_heads
                for h in range(n_heads):
                    for q in range(off, T):
                        if q >= off + L:
                            sums["induction"][layer, h] += a[h, q, q - L + 1]
                            sums["duplicate_token"][layer, h] += a[h, q, q - L]
                        if q >= off + 1:
                            sums["previous_token"][layer, h] += a[h, q, q - 1]
                        ho = z[q, h * d_head:(h + 1) * d_head] @ w[:, h * d_head:(h + 1) * d_head].T  # [d_model]
                        if layer_norm:
                            ho = ho - ho.mean()
                        for k in range(off, q + 1):
                            logit = (w_u[row[k]] * gamma) @ ho * inv[q]
                            sums["copying"][layer, h] += a[h, q, k] * logit
            counts["induction"] += L
            counts["duplicate_token"] += L
            counts["previous_token"] += T - off - 1
            counts["copying"] += T - off
    finally:
        for hk in hooks:
            hk.remove()
    return {k: (sums[k] / counts[k]).float() for k in HEAD_SCORE_KINDS}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_scores_equal_a_plain_torch_reference(tiny, family):
    model = tiny(family)
    got = head_scores(model, n_seqs=3, seq_len=6, seed=3, batch_size=2, progress=False)
    ids = repeated_sequences(model, 3, 6, seed=3)
    assert ids.shape == (3, 13) and torch.equal(ids[:, 1:7], ids[:, 7:])
    ref = reference(model.hf, ids, 6, model.n_heads)
    for kind in HEAD_SCORE_KINDS:
        assert got.scores(kind).shape == (model.n_layers, model.n_heads)
        torch.testing.assert_close(got.scores(kind), ref[kind], rtol=1e-4, atol=1e-5, msg=lambda m, k=kind: f"{k}: {m}")
    assert got.copying.abs().max() > 1e-3  # not trivially zero


def test_remote_local_gives_the_same_scores(tiny):
    local = head_scores(tiny("llama"), n_seqs=2, seq_len=5, progress=False)
    remote = head_scores(tiny("llama", remote="local"), n_seqs=2, seq_len=5, progress=False)
    for kind in HEAD_SCORE_KINDS:
        torch.testing.assert_close(remote.scores(kind), local.scores(kind))


def test_batching_does_not_change_scores(tiny):
    a = head_scores(tiny("llama"), n_seqs=4, seq_len=5, batch_size=4, progress=False)
    b = head_scores(tiny("llama"), n_seqs=4, seq_len=5, batch_size=3, progress=False)
    for kind in HEAD_SCORE_KINDS:
        torch.testing.assert_close(a.scores(kind), b.scores(kind))


def test_results_table_top_and_plot(tiny):
    s = head_scores(tiny("llama"), n_seqs=2, seq_len=5, progress=False, copying=False)
    assert s.copying is None and s.kinds == ["induction", "previous_token", "duplicate_token"]
    df = s.to_pandas()
    assert list(df.columns) == ["layer", "head", "induction", "previous_token", "duplicate_token"]
    assert len(df) == s.n_layers * s.n_heads
    top = s.top("previous_token", 3)
    assert [t[2] for t in top] == sorted((t[2] for t in top), reverse=True)
    l_, h, v = top[0]
    assert v == pytest.approx(float(s.previous_token.max())) and float(s.previous_token[l_, h]) == pytest.approx(v)
    assert s.plot("induction") is not None and len(s.plot()) == 3
    with pytest.raises(ValueError, match="unknown head score"):
        s.top("nonsense")
    with pytest.raises(ValueError, match="not computed"):
        s.scores("copying")
    assert "HeadScores" in s._repr_html_()


def test_bad_input_and_cancel(tiny):
    import threading

    import workbench as wb

    with pytest.raises(ValueError, match="n_seqs"):
        head_scores(tiny("llama"), n_seqs=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        head_scores(tiny("llama"), n_seqs=1, batch_size=0, progress=False)
    ev = threading.Event()
    ev.set()
    with pytest.raises(wb.Cancelled):
        head_scores(tiny("llama"), n_seqs=2, seq_len=4, cancel=ev, progress=False)


# -- the embedded model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    import workbench as wb

    return wb.load(progress=False)


def _repeat_loss(model, ids: torch.Tensor, seq_len: int, heads: list[tuple[int, int]]) -> float:
    """Mean next-token loss over the repeated half, with ``heads`` zero-ablated (AblateHeads through run)."""
    import workbench as wb

    by: dict[int, list[int]] = {}
    for layer, h in heads:
        by.setdefault(layer, []).append(h)
    res = model.run(model.batch_from_ids(ids.tolist()), [wb.AblateHeads(f"z.{L}", hs) for L, hs in by.items()],
                    top_k=1, logits="all")
    off = ids.shape[1] - 2 * seq_len
    pos = torch.arange(off + seq_len, ids.shape[1] - 1)
    logp = torch.log_softmax(res.logits[:, pos].float(), -1)
    return float(-logp.gather(-1, ids[:, pos + 1][..., None]).mean())


@pytest.mark.embedded
def test_embedded_model_has_induction_heads_that_matter(embedded):
    model = embedded
    s = head_scores(model, n_seqs=4, seq_len=20, progress=False)
    assert isinstance(s, HeadScores) and s.induction.shape == (30, 9)
    med, top = float(s.induction.median()), s.top("induction", 5)
    assert top[0][2] > 0.5 and top[0][2] > 20 * med, (top, med)
    ids = repeated_sequences(model, 4, 20, seed=1)  # held-out sequences
    base = _repeat_loss(model, ids, 20, [])
    ablated = _repeat_loss(model, ids, 20, [(layer, h) for layer, h, _ in top])
    rng = random.Random(0)
    others = [(layer, h) for layer in range(30) for h in range(9) if (layer, h) not in {(t[0], t[1]) for t in top}]
    rand = sorted(_repeat_loss(model, ids, 20, rng.sample(others, 5)) - base for _ in range(3))
    assert ablated - base > 1.0, (base, ablated)
    assert ablated - base > 3 * max(rand[1], 0.05), (ablated - base, rand)
