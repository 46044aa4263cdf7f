"""The architecture map vs hand-written PyTorch: plain forward hooks on the Hugging Face model."""

from __future__ import annotations

from contextlib import contextmanager
from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F
from hf_paths import PATHS
from test_tl_hooks import new_site_references

import workbench as wb
from workbench.core.arch import GLOBAL_SITES, LAYER_SITES, ArchMap, Site, infer_arch

PROMPTS = ["The quick brown fox jumps over", "Hello, world", "A"]


def mod(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return attrgetter(path)(root)


def first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def hooks(*handles_fns):
    """Register hooks (callables returning a handle) and always remove them."""
    handles = []
    try:
        for fn in handles_fns:
            handles.append(fn())
        yield
    finally:
        for h in handles:
            h.remove()


def reference(model: wb.Model, family: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Every standard site from plain forward hooks on the HF model (no nnsight)."""
    hf, p = model.hf, PATHS[family]
    layers = mod(hf, p["layers"])
    rec: dict[str, torch.Tensor] = {}

    def fwd(name, fn=first):
        return lambda m, a, o: rec.__setitem__(name, fn(o).detach().clone())

    def pre(name):
        def hook(m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            rec[name] = x.detach().clone()
        return hook

    regs = [lambda: mod(hf, p["embed"]).register_forward_hook(fwd("embed")),
            lambda: mod(hf, p["norm"]).register_forward_hook(fwd("final_norm"))]
    for L, layer in enumerate(layers):
        regs += [
            lambda layer=layer, L=L: layer.register_forward_pre_hook(pre(f"resid_pre.{L}"), with_kwargs=True),
            lambda layer=layer, L=L: layer.register_forward_hook(fwd(f"resid_post.{L}")),
            lambda layer=layer, L=L: mod(layer, p["attn"]).register_forward_hook(fwd(f"attn_out.{L}")),
            lambda layer=layer, L=L: mod(layer, p["attn"]).register_forward_hook(fwd(f"pattern.{L}", lambda o: o[1])),
            lambda layer=layer, L=L: mod(layer, p["o_proj"]).register_forward_pre_hook(pre(f"z.{L}"), with_kwargs=True),
            lambda layer=layer, L=L: mod(layer, p["mlp"]).register_forward_pre_hook(pre(f"mlp_in.{L}"), with_kwargs=True),
            lambda layer=layer, L=L: mod(layer, p["mlp"]).register_forward_hook(fwd(f"mlp_out.{L}")),
            lambda layer=layer, L=L: mod(layer, p["down"]).register_forward_pre_hook(pre(f"neurons.{L}"), with_kwargs=True),
        ]
    with hooks(*regs), torch.no_grad():
        rec["logits"] = hf(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
    rec.update(new_site_references(model, family, input_ids, attention_mask))
    H, dh = model.arch.n_heads, model.arch.d_head
    for L, layer in enumerate(layers):
        z = rec[f"z.{L}"].unflatten(-1, (H, dh))
        rec[f"z.{L}"] = z
        rec[f"head_out.{L}"] = head_out_by_hand(mod(layer, p["o_proj"]), z)
    return rec


def head_out_by_hand(o_proj: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's slice of the output projection applied to its z: [b, s, H, d_model]."""
    H, dh = z.shape[-2], z.shape[-1]
    w = o_proj.weight.detach()
    outs = []
    for h in range(H):
        if type(o_proj).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            outs.append(z[:, :, h] @ w[h * dh:(h + 1) * dh, :])
        else:  # Linear stores [out, in]
            outs.append(z[:, :, h] @ w[:, h * dh:(h + 1) * dh].T)
    return torch.stack(outs, dim=2)


def neurons_by_hand(family: str, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP hidden activation from its weights and the named activation function."""
    if family in ("llama", "gemma2", "qwen2"):
        gate = x @ mlp.gate_proj.weight.T
        up = x @ mlp.up_proj.weight.T
        act = F.silu(gate) if family in ("llama", "qwen2") else F.gelu(gate, approximate="tanh")
        return act * up
    if family == "gpt2":
        return F.gelu(x @ mlp.c_fc.weight + mlp.c_fc.bias, approximate="tanh")  # gelu_new, Conv1D [in, out]
    return F.gelu(x @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)  # GPT-NeoX: exact gelu


def all_sites(n_layers: int) -> list[str]:
    return ["embed"] + [f"{n}.{L}" for L in range(n_layers) for n in LAYER_SITES] + ["final_normalized", "final_norm",
                                                                                      "logits"]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


# -- every site vs the hook reference ------------------------------------------------
def test_activation_functions_are_what_the_reference_assumes(model, family):
    cfg = model.hf.config
    expected = {"llama": ("hidden_act", "silu"), "qwen2": ("hidden_act", "silu"), "gemma2": ("hidden_activation", "gelu_pytorch_tanh"),
                "gpt2": ("activation_function", "gelu_new"), "gpt_neox": ("hidden_act", "gelu")}[family]
    assert getattr(cfg, expected[0]) == expected[1]


def test_every_site_matches_hooks_single_prompt(model, family):
    prompt = PROMPTS[0]
    res = model.run(prompt, capture=all_sites(model.n_layers), logits="all")
    batch = model.tokenize(prompt)
    ref = reference(model, family, batch.input_ids, batch.attention_mask)
    assert set(res.activations) == set(all_sites(model.n_layers))
    for site, got in res.activations.items():
        close(got, ref[site])
    close(res.logits, ref["logits"])
    a = model.arch
    s = batch.input_ids.shape[1]
    assert res["z.0"].shape == (1, s, a.n_heads, a.d_head)
    assert res["head_out.1"].shape == (1, s, a.n_heads, a.d_model)
    assert res["pattern.0"].shape == (1, a.n_heads, s, s)
    assert res["neurons.1"].shape == (1, s, a.d_mlp)
    assert res["logits"].shape == (1, s, a.vocab)


def test_logits_are_hf_forward_logits_and_top_k_follows(model, family):
    batch = model.tokenize(PROMPTS[1])
    with torch.no_grad():
        ref = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, -1]
    res = model.run(PROMPTS[1], top_k=5)
    close(res.logits[0], ref)
    probs = torch.softmax(ref, -1)
    top = probs.topk(5)
    assert res.top.ids[0].tolist() == top.indices.tolist()
    close(res.top.probs[0], top.values)
    close(res.top.logits[0], ref[top.indices])


def test_neurons_equal_activation_of_mlp_weights(model, family):
    res = model.run(PROMPTS[0], capture=["neurons.0", "neurons.1"])
    batch = model.tokenize(PROMPTS[0])
    ref = reference(model, family, batch.input_ids, batch.attention_mask)
    layers = mod(model.hf, PATHS[family]["layers"])
    for L in range(2):
        by_hand = neurons_by_hand(family, layers[L].mlp, ref[f"mlp_in.{L}"])
        close(res[f"neurons.{L}"], by_hand, atol=1e-4)


def test_heads_sum_to_attn_out(model, family):
    res = model.run(PROMPTS[0], capture=["head_out.0", "head_out.1", "attn_out.0", "attn_out.1"])
    layers = mod(model.hf, PATHS[family]["layers"])
    for L in range(2):
        bias = mod(layers[L], PATHS[family]["o_proj"]).bias
        total = res[f"head_out.{L}"].sum(2) + (0 if bias is None else bias.detach())
        close(total, res[f"attn_out.{L}"], atol=1e-4)


def test_residual_stream_is_consistent(model, family):
    """resid_pre.L+1 is resid_post.L; a layer adds its attention and MLP outputs to the stream."""
    res = model.run(PROMPTS[0], capture=all_sites(2))
    close(res["resid_pre.1"], res["resid_post.0"])
    if family == "gemma2":  # extra norms after attention and MLP: the stream gets norm(attn_out) etc.
        return
    for L in range(2):  # pre-norm blocks (GPT-NeoX: parallel attention and MLP, same sum)
        close(res[f"resid_post.{L}"], res[f"resid_pre.{L}"] + res[f"attn_out.{L}"] + res[f"mlp_out.{L}"], atol=1e-4)


def test_pattern_is_causal_and_rows_sum_to_one(model, family):
    res = model.run(PROMPTS[:2], capture=["pattern.0", "pattern.1"])
    for L in range(2):
        pat = res[f"pattern.{L}"]
        for b, n in enumerate(res.lengths):
            real = pat[b, :, :n, :n]
            close(real.sum(-1), torch.ones(real.shape[:-1]))
            assert torch.all(real.triu(1) == 0)
            assert torch.all(pat[b, :, :n, n:] == 0), "real queries must not attend to padding"


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[::-1]])
def test_padded_batch_matches_single_prompt_runs(model, family, prompts):
    sites = all_sites(model.n_layers)
    res = model.run(prompts, capture=sites, logits="all")
    assert len({len(t) for t in res.tokens}) > 1, "prompts must differ in length"
    batch = model.tokenize(prompts)
    assert batch.input_ids.shape[1] == max(res.lengths)
    for b, prompt in enumerate(prompts):
        n = res.lengths[b]
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n), "right padding"
        single = model.run(prompt, capture=sites, logits="all")
        for site in sites:
            got, want = res[site], single[site]
            if site.startswith("pattern"):
                close(got[b, :, :n, :n], want[0])
            else:
                close(got[b, :n], want[0])
        close(res.logits[b, :n], single.logits[0])
    last = model.run(prompts)  # logits="last" picks each prompt's own last token
    for b in range(len(prompts)):
        close(last.logits[b], res.logits[b, res.lengths[b] - 1])


def test_capture_subset_and_order_independent(model, family):
    a = model.run(PROMPTS[1], capture=["logits", "neurons.1", "embed", "z.0"], logits=None)
    b = model.run(PROMPTS[1], capture=["z.0"])
    assert list(a.activations) == ["embed", "z.0", "neurons.1", "logits"]  # forward order
    close(a["z.0"], b["z.0"])
    assert a.logits is None


def test_reducer_runs_on_the_site(model, family):
    res = model.run(PROMPTS[:2], capture={"resid_post.0": lambda x: x.norm(dim=-1), "neurons.1": None})
    full = model.run(PROMPTS[:2], capture=["resid_post.0"])
    close(res["resid_post.0"], full["resid_post.0"].norm(dim=-1))
    assert res["neurons.1"].shape[-1] == model.d_mlp


def test_arch_dims(model, family):
    a = model.arch
    assert (a.n_layers, a.n_heads, a.d_model, a.vocab) == (2, 4, 48, 512)
    assert a.d_head == 12
    assert a.d_mlp == {"llama": 96, "qwen2": 96, "gemma2": 96, "gpt2": 4 * 48, "gpt_neox": 192}[family]
    assert a.size(Site("neurons", 0)) == a.d_mlp
    assert a.size(Site("z", 0)) == a.d_head
    assert a.size(Site("logits")) == 512
    assert a.size(Site("resid_post", 1)) == 48


# -- site names ----------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("resid_post.3", Site("resid_post", 3)),
    ("blocks.3.hook_resid_post", Site("resid_post", 3)),
    ("blocks.0.hook_resid_pre", Site("resid_pre", 0)),
    ("blocks.2.mlp.hook_post", Site("neurons", 2)),
    ("blocks.1.attn.hook_pattern", Site("pattern", 1)),
    ("blocks.1.attn.hook_z", Site("z", 1)),
    ("blocks.1.attn.hook_result", Site("head_out", 1)),
    ("blocks.4.hook_attn_out", Site("attn_out", 4)),
    ("blocks.4.hook_mlp_out", Site("mlp_out", 4)),
    ("hook_embed", Site("embed")),
    ("ln_final.hook_normalized", Site("final_normalized")),  # before the final norm's weight, as in TransformerLens
    ("blocks.1.ln2.hook_normalized", Site("ln2_normalized", 1)),
    ("blocks.1.hook_mlp_in", Site("resid_mid", 1)),
    ("blocks.1.hook_resid_mid", Site("resid_mid", 1)),
    ("blocks.0.ln1.hook_normalized", Site("ln1_normalized", 0)),
    ("mlp_post.7", Site("neurons", 7)),
    ("logits", Site("logits")),
    (("neurons", 2), Site("neurons", 2)),
    (Site("z", 0), Site("z", 0)),
])
def test_site_parse(text, want):
    assert Site.parse(text) == want
    assert Site.parse(str(want)) == want


def test_site_str_and_order():
    assert str(Site("neurons", 3)) == "neurons.3" and str(Site("logits")) == "logits"
    names = ["logits", "resid_post.1", "neurons.0", "embed", "z.1", "resid_pre.0", "final_norm", "attn_out.0", "pattern.0"]
    ordered = [str(s) for s in sorted((Site.parse(n) for n in names), key=lambda s: s.order)]
    assert ordered == ["embed", "resid_pre.0", "attn_out.0", "pattern.0", "neurons.0", "z.1", "resid_post.1",
                       "final_norm", "logits"]


@pytest.mark.parametrize("bad, exc, words", [
    ("foo.3", ValueError, "unknown site 'foo'"),
    ("resid_post", ValueError, "needs a layer"),
    ("neurons", ValueError, "needs a layer"),
    ("logits.2", ValueError, "takes no layer"),
    ("embed.0", ValueError, "takes no layer"),
    ("resid_post.x", ValueError, "cannot parse"),
    ("blocks.1.hook_nothing", ValueError, "unknown site"),
    ("", ValueError, "cannot parse"),
    (3, TypeError, "a site is a string"),
])
def test_site_parse_errors(bad, exc, words):
    with pytest.raises(exc, match=words):
        Site.parse(bad)


def test_site_names_are_complete():
    assert set(wb.SITE_NAMES) == set(LAYER_SITES) | set(GLOBAL_SITES)
    assert len(wb.SITE_NAMES) == 16


@pytest.mark.parametrize("site", ["resid_post.2", "neurons.7", ("z", -1), "resid_post.-1", "blocks.9.hook_resid_pre"])
def test_out_of_range_layer_is_a_clear_error(tiny, site):
    model = tiny("llama")
    with pytest.raises(IndexError, match=r"out of range: this model has layers 0\.\.1"):
        model.run("Hello", capture=[site])
    with pytest.raises(IndexError, match="out of range"):
        model.site(site)


# -- unsupported architectures ---------------------------------------------------------
class _RenamedLM(torch.nn.Module):
    """A Llama whose modules were renamed: `body.blocks` instead of `model.layers`."""

    def __init__(self, llama: torch.nn.Module):
        super().__init__()
        self.config = llama.config
        self.body = torch.nn.Module()
        self.body.blocks = llama.model.layers
        self.body.tok = llama.model.embed_tokens
        self.body.ln = llama.model.norm
        self.head = llama.lm_head


def test_unsupported_architecture_names_what_is_missing():
    from workbench.testing import tiny_hf_model, tiny_tokenizer

    renamed = _RenamedLM(tiny_hf_model("llama"))
    with pytest.raises(NotImplementedError) as info:
        wb.load(renamed, tokenizer=tiny_tokenizer())
    msg = str(info.value)
    for missing in ("layers (model.layers)", "embed (model.embed_tokens)", "final_norm (model.norm)",
                    "unembed (lm_head)", "ArchMap"):
        assert missing in msg


def test_unsupported_layer_layout_names_missing_submodules():
    from workbench.testing import tiny_hf_model

    hf = tiny_hf_model("llama")
    for layer in hf.model.layers:
        layer.feed_forward = layer.mlp
        del layer.mlp
    with pytest.raises(NotImplementedError, match=r"mlp \(layer\.mlp\).*mlp_out_proj \(layer\.mlp\.down_proj\)"):
        infer_arch(hf)


def test_not_a_language_model():
    from workbench.testing import tiny_tokenizer

    with pytest.raises(NotImplementedError, match="config"):
        wb.load(torch.nn.Linear(4, 4), tokenizer=tiny_tokenizer())


def test_explicit_arch_map_for_renamed_model(tiny):
    from workbench.testing import tiny_hf_model, tiny_tokenizer

    renamed = _RenamedLM(tiny_hf_model("llama"))

    arch = ArchMap("custom", "body.blocks", "body.tok", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj",
                   "body.ln", "head")
    # Without an HF forward the model cannot run, but the map must resolve and fill its sizes.
    from workbench.core.arch import fill_dims

    fill_dims(arch, renamed)
    assert (arch.n_layers, arch.n_heads, arch.d_model, arch.d_head, arch.d_mlp, arch.vocab) == (2, 4, 48, 12, 96, 512)
    # A real model with an explicit map behaves exactly like the inferred one.
    hf = tiny_hf_model("llama")
    explicit = ArchMap("mine", "model.layers", "model.embed_tokens", "self_attn", "self_attn.o_proj", "mlp",
                       "mlp.down_proj", "model.norm", "lm_head")
    m = wb.load(hf, tokenizer=tiny_tokenizer(), arch=explicit)
    ref = tiny("llama")
    a = m.run(PROMPTS[0], capture=["neurons.1", "z.0"])
    b = ref.run(PROMPTS[0], capture=["neurons.1", "z.0"])
    assert m.arch.family == "mine" and m.arch.d_mlp == 96
    close(a["neurons.1"], b["neurons.1"])
    close(a.logits, b.logits)


# -- the norms that resid_mid and the normalized sites read ----------------------------------------------------
def test_norm_paths_per_family(model, family):
    want = {"llama": ("input_layernorm", "post_attention_layernorm"), "qwen2": ("input_layernorm", "post_attention_layernorm"),
            "gemma2": ("input_layernorm", "pre_feedforward_layernorm"),  # post_attention_layernorm norms attn_out
            "gpt2": ("ln_1", "ln_2"), "gpt_neox": ("input_layernorm", "post_attention_layernorm")}[family]
    assert (model.arch.ln1, model.arch.ln2) == want


def test_explicit_arch_map_fills_its_norms_and_post_norm_blocks_get_none(tiny):
    from workbench.core.arch import fill_dims, fill_norms
    from workbench.testing import tiny_hf_model, tiny_tokenizer

    explicit = ArchMap("mine", "model.layers", "model.embed_tokens", "self_attn", "self_attn.o_proj", "mlp",
                       "mlp.down_proj", "model.norm", "lm_head")
    m = wb.load(tiny_hf_model("llama"), tokenizer=tiny_tokenizer(), arch=explicit)
    assert (m.arch.ln1, m.arch.ln2) == ("input_layernorm", "post_attention_layernorm")
    close(m.run(PROMPTS[0], capture=["ln2_normalized.1"])["ln2_normalized.1"],
          tiny("llama").run(PROMPTS[0], capture=["ln2_normalized.1"])["ln2_normalized.1"])
    given = ArchMap("mine", "model.layers", "model.embed_tokens", "self_attn", "self_attn.o_proj", "mlp",
                    "mlp.down_proj", "model.norm", "lm_head", ln2="mlp")  # given paths are kept
    fill_dims(given, tiny_hf_model("llama"))
    assert (given.ln1, given.ln2) == ("input_layernorm", "mlp")

    class PostNorm(torch.nn.Module):  # OLMo 2: norms after attention and MLP, none before
        def __init__(self):
            super().__init__()
            self.post_attention_layernorm = torch.nn.LayerNorm(4)
            self.post_feedforward_layernorm = torch.nn.LayerNorm(4)

    post = ArchMap("olmo2-like", "model.layers", "e", "a", "o", "m", "d", "n", "u")
    fill_norms(post, PostNorm())
    assert (post.ln1, post.ln2) == ("", "")
