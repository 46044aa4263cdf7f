"""Tokens, results, directions, loading errors and inline nnsight: the engine's smaller promises."""

from __future__ import annotations

import copy
import json
import time
from operator import attrgetter

import nnsight
import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.testing import tiny_hf_model, tiny_tokenizer

PROMPT = "The cat sat on the mat"
LAYERS = {f: p["layers"] for f, p in PATHS.items()}
DOWN = {f: p["down"] for f, p in PATHS.items()}


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


def hooked_forward(model: wb.Model, prompt: str, module: torch.nn.Module, pre: bool) -> torch.Tensor:
    """One prompt through the HF model; the input (pre) or output of ``module``, [s, ...]."""
    got = {}
    if pre:
        h = module.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].detach().clone()))
    else:
        h = module.register_forward_hook(
            lambda m, a, o: got.__setitem__("x", (o[0] if isinstance(o, tuple) else o).detach().clone()))
    try:
        with torch.no_grad():
            model.hf(input_ids=model.tokenize(prompt).input_ids)
    finally:
        h.remove()
    return got["x"][0]


# -- prompts and tokens --------------------------------------------------------------------
def test_empty_prompts_are_rejected_clearly(tiny):
    model = tiny("llama")
    with pytest.raises(ValueError, match="prompt 0 is empty: give at least one token of text"):
        model.run("")
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        model.run(["a", "b", ""])
    with pytest.raises(ValueError, match="no prompt given"):
        model.run([])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        model.generate("", max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        model.mean_activation("neurons.0", [""])


TRICKY = [
    PROMPT,
    "naïve café 😀 — ok\n\ttab  two  spaces ",
    "日本語のテキスト",
    "  leading and trailing  ",
    "a\r\nb\n\n\nc",
    "x",
    "<|endoftext|> inside",
]


@pytest.mark.parametrize("prompt", TRICKY)
def test_token_spans_tile_the_prompt(tiny, prompt):
    model = tiny("llama")
    toks = model.tokenize(prompt).tokens[0]
    assert [t.id for t in toks] == model.tokenizer(prompt)["input_ids"]
    for t in toks:
        assert prompt[t.start:t.end] == t.text, t
    assert "".join(t.text for t in toks) == prompt
    assert [t.start for t in toks] == sorted(t.start for t in toks)
    assert all(a.end == b.start for a, b in zip(toks, toks[1:], strict=False)), "spans are contiguous"
    assert model.to_str_tokens(prompt) == [t.text for t in toks]


def test_token_spans_with_a_bos_token():
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer())
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.bos_token_id)])
    model = wb.load(tiny_hf_model("llama"), tokenizer=tok)
    for prompt in TRICKY[:3]:
        toks = model.tokenize(prompt).tokens[0]
        assert toks[0].id == tok.bos_token_id and toks[0].text == "<|endoftext|>" and toks[0].start == toks[0].end == 0
        rest = toks[1:]
        assert all(prompt[t.start:t.end] == t.text for t in rest)
        assert "".join(t.text for t in rest) == prompt
    # The BOS token is fed to the model.
    ids = model.tokenize(PROMPT).input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        ref = model.hf(input_ids=ids).logits[0, -1]
    close(model.run(PROMPT).logits[0], ref)


def test_tokens_of_a_batch(tiny):
    model = tiny("gpt2")
    res = model.run([PROMPT, "Hi"])
    assert res.lengths == [len(model.tokenizer(p)["input_ids"]) for p in [PROMPT, "Hi"]]
    assert res.token_texts(1) == model.to_str_tokens("Hi")
    assert res.prompts == [PROMPT, "Hi"]
    assert isinstance(res.tokens[0][0], wb.core.Token)


# -- results ---------------------------------------------------------------------------------
def test_top_k_is_sorted_and_matches_the_logits(model, family):
    res = model.run([PROMPT, "Hi there"], top_k=7, logits="last")
    assert res.top.probs.shape == res.top.ids.shape == res.top.logits.shape == (2, 7)
    for b in range(2):
        p = res.top.probs[b]
        assert torch.all(p[:-1] >= p[1:]) and torch.all(res.top.logits[b, :-1] >= res.top.logits[b, 1:])
        full = torch.softmax(res.logits[b].float(), -1)
        close(p, full[res.top.ids[b]])
        assert res.top.ids[b, 0].item() == res.logits[b].argmax().item()
        close(res.top.logits[b], res.logits[b, res.top.ids[b]])
        assert res.top.tokens[b] == [model.tokenizer.decode([int(i)]) for i in res.top.ids[b]]
    assert model.run(PROMPT, top_k=10_000).top.ids.shape == (1, model.arch.vocab)


def test_run_result_to_pandas(tiny):
    model = tiny("llama")
    res = model.run([PROMPT, "Hi"], top_k=4)
    df = res.to_pandas()
    assert list(df.columns) == ["prompt", "rank", "token", "id", "prob", "logit"]
    assert len(df) == 8
    assert df["prompt"].tolist() == [0] * 4 + [1] * 4 and df["rank"].tolist() == [1, 2, 3, 4] * 2
    assert df["id"].tolist() == res.top.ids.flatten().tolist()
    assert df["token"].tolist() == res.top.tokens[0] + res.top.tokens[1]
    close(torch.tensor(df["prob"].values), res.top.probs.flatten())
    close(torch.tensor(df["logit"].values), res.top.logits.flatten())
    rows = res.top.as_rows(1)
    assert json.loads(json.dumps(rows)) == rows
    assert [r["id"] for r in rows] == res.top.ids[1].tolist()
    assert set(rows[0]) == {"token", "id", "prob", "logit"}


def test_run_result_access_and_html(tiny):
    model = tiny("llama")
    res = model.run("<script>alert(1)</script>", [wb.zero_neurons(0, [1])], capture=["blocks.0.mlp.hook_post"])
    assert res["neurons.0"] is res.activations["neurons.0"] and res[("neurons", 0)] is res["neurons.0"]
    with pytest.raises(KeyError, match=r"resid_post\.1 was not captured; captured: \['neurons\.0'\]"):
        res["resid_post.1"]
    html = res._repr_html_()
    assert "<script>" not in html and "&lt;" in html  # token texts are escaped (tokens are separate spans)
    assert "zero neurons.0[1]" in html
    g = model.generate(PROMPT, max_new_tokens=3)
    df = g.to_pandas()
    assert df["id"].tolist() == g.token_ids and df["step"].tolist() == [0, 1, 2]
    assert "Model(" in repr(model) and "family=llama" in repr(model) and "d_mlp=96" in repr(model)


# -- directions and means ------------------------------------------------------------------------
def test_mean_activation_matches_hooks(model, family):
    prompts = [PROMPT, "Hi", "Paris is the capital of France"]
    layer = attrgetter(LAYERS[family])(model.hf)[1]
    rows = torch.cat([hooked_forward(model, p, attrgetter(DOWN[family])(layer), pre=True) for p in prompts])
    close(model.mean_activation("neurons.1", prompts), rows.mean(0))
    rows = torch.cat([hooked_forward(model, p, layer, pre=False) for p in prompts])
    close(model.mean_activation("blocks.1.hook_resid_post", prompts), rows.mean(0))
    assert model.mean_activation("z.0", prompts).shape == (model.n_heads, model.arch.d_head)


def test_neuron_direction_is_the_weight_column(model, family):
    down = attrgetter(DOWN[family])(attrgetter(LAYERS[family])(model.hf)[1])
    w = down.weight.detach()
    col = w[5] if family == "gpt2" else w[:, 5]  # GPT-2's Conv1D stores [in, out]
    assert col.shape == (model.d_model,)
    d = wb.causal.neuron_direction(model, 1, 5)
    assert d.shape == (model.d_model,)
    assert d.norm().item() == pytest.approx(1.0, abs=1e-6)
    close(d, col / col.norm())
    with pytest.raises(IndexError, match="neuron 96 is out of range") if model.d_mlp == 96 else pytest.raises(IndexError):
        wb.causal.neuron_direction(model, 0, model.d_mlp)
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        wb.causal.neuron_direction(model, 2, 0)


def test_neuron_direction_is_what_the_neuron_writes(tiny):
    """Adding 1 to a neuron moves the MLP output by exactly its (unnormalized) weight column."""
    model = tiny("gpt_neox")
    d = wb.causal.neuron_direction(model, 0, 9)
    a = model.run(PROMPT, capture=["mlp_out.0"])["mlp_out.0"]
    b = model.run(PROMPT, [wb.Edit("neurons.0", [9], "add", 1.0)], capture=["mlp_out.0"])["mlp_out.0"]
    delta = (b - a)[0]
    close(delta / delta.norm(dim=-1, keepdim=True), d.expand_as(delta), atol=1e-4)


def test_mean_difference_matches_hand_computation(model, family):
    pos, neg = [PROMPT, "I love this", "Good"], ["Paris is the capital of France", "Hi"]
    layer = attrgetter(LAYERS[family])(model.hf)[0]

    def mean_at(prompts, module, position, pre=False):
        return torch.stack([hooked_forward(model, p, module, pre)[position] for p in prompts]).mean(0)
    want = mean_at(pos, layer, -1) - mean_at(neg, layer, -1)
    close(wb.mean_difference(model, pos, neg, 0), want)
    want0 = mean_at(pos, layer.mlp, 0) - mean_at(neg, layer.mlp, 0)
    close(wb.mean_difference(model, pos, neg, 0, site="mlp_out", position=0), want0)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        wb.mean_difference(model, pos, [], 0)


def test_unembed_direction(tiny):
    model = tiny("llama")
    d = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    top = model.unembed_direction(d, k=5)
    scores = model.hf.lm_head.weight.detach() @ d
    want = scores.topk(5)
    assert [s for _, s in top] == pytest.approx(want.values.tolist(), rel=1e-5)
    assert [t for t, _ in top] == [model.tokenizer.decode([int(i)]) for i in want.indices]


# -- load() errors -------------------------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub access: fail fast instead of retrying the network."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once at import


def test_load_unknown_name(offline):
    t = time.monotonic()
    with pytest.raises(wb.core.ModelLoadError, match=r"could not load 'no-such-org/no-such-model-xyz': it is neither "
                                                r"a local folder nor a model this machine can fetch"):
        wb.load("no-such-org/no-such-model-xyz", progress=False)
    assert time.monotonic() - t < 30


def test_load_missing_paths(offline, tmp_path):
    with pytest.raises(wb.core.ModelLoadError, match="could not load '/no/such/folder/model'"):
        wb.load("/no/such/folder/model", progress=False)
    with pytest.raises(wb.core.ModelLoadError, match="the folder exists but lacks config/weights files"):
        wb.load(str(tmp_path), progress=False)
    with pytest.raises(wb.core.ModelLoadError, match=r"GGUF file '.*missing\.gguf' does not exist"):
        wb.load(str(tmp_path / "missing.gguf"), progress=False)


def test_load_in_memory_model_errors():
    hf = tiny_hf_model("gpt2")
    with pytest.raises(wb.core.ModelLoadError, match=r"load\(hf_model\) needs tokenizer=\.\.\."):
        wb.load(hf)
    with pytest.raises(TypeError, match="load\\(\\) takes None, a name or path, or a torch model, not int"):
        wb.load(42)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        wb.load(hf, tokenizer=tiny_tokenizer(), dtype="float8")
    with pytest.raises(wb.core.ModelLoadError, match="remote=True needs a Hugging Face Hub id"):
        wb.load(hf, tokenizer=tiny_tokenizer(), remote=True)


def test_load_switches_to_eager_attention():
    hf = tiny_hf_model("llama")
    hf.set_attn_implementation("sdpa")
    assert hf.config._attn_implementation == "sdpa"
    model = wb.load(hf, tokenizer=tiny_tokenizer())
    assert model.hf.config._attn_implementation == "eager"
    pat = model.run(PROMPT, capture=["pattern.0"])["pattern.0"]
    close(pat.sum(-1), torch.ones(pat.shape[:-1]))


# -- inline nnsight next to the specs --------------------------------------------------------------
def test_site_inside_a_raw_trace(model, family):
    idx = [3, 10, 50]
    spec_run = model.run(PROMPT, [wb.zero_neurons(0, idx)], capture=["z.1", "neurons.0"], logits="all")
    ids = model.tokenize(PROMPT).input_ids
    with model.nn.trace(ids):
        n = model.site("neurons.0")
        n[:, :, idx] = 0
        n_saved = nnsight.save(n.clone())
        z = nnsight.save(model.site("z.1").clone())
        logits = nnsight.save(model.site("logits").clone())
    close(n_saved, spec_run["neurons.0"])
    close(z, spec_run["z.1"])
    close(logits, spec_run.logits)
    # model.trace tokenizes like run() does, and specs-free reads match run() captures.
    with model.trace([PROMPT, "Hi"]):
        resid = nnsight.save(model.site("blocks.1.hook_resid_post").clone())
    plain = model.run([PROMPT, "Hi"], capture=["resid_post.1"])
    close(resid, plain["resid_post.1"])
    with pytest.raises(IndexError, match="out of range"):
        model.site("neurons.9")


def test_apply_specs_inside_a_raw_trace(model, family):
    specs = [wb.zero_neurons(0, [1, 4]), wb.steer(1, torch.linspace(-1, 1, model.d_model), 3.0, positions=[-1])]
    with model.trace([PROMPT, "Hi"]):
        model.apply(specs)
        logits = nnsight.save(model.site("logits").clone())
    ref = model.run([PROMPT, "Hi"], specs, logits="all")
    n = ref.lengths
    for b in range(2):  # compare real positions only (run() trims to the prompts' padding)
        close(logits[b, : n[b]], ref.logits[b, : n[b]])
    plain = model.run([PROMPT, "Hi"], logits="all")
    assert not torch.allclose(plain.logits[0, : n[0]], ref.logits[0, : n[0]])
    with pytest.raises(ValueError, match="source prompt"):
        with model.trace(PROMPT):
            model.apply([wb.Patch("resid_post.0", source=PROMPT)])
