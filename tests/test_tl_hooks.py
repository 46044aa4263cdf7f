"""TransformerLens hook names read their exact tensors: resid_mid and the normalized-but-unscaled sites.

References are plain PyTorch forward pre-hooks on the Hugging Face norms (no nnsight), normalized by
hand with each module's own eps; when transformer-lens is installed, its own ``run_with_cache``.
"""

from __future__ import annotations

from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F
from hf_paths import PATHS
from tl_reference import hooked

from workbench.core.errors import WorkbenchError
from workbench.core.sites import SITES, WRITABLE, NoHookError, Site, site_to_hook
from workbench.dictionaries.formats import hook_to_site

#: The pre-attention and pre-MLP norm of each tiny family, written out independently of workbench.core.arch.
NORMS = {"llama": ("input_layernorm", "post_attention_layernorm"), "qwen2": ("input_layernorm", "post_attention_layernorm"),
         "gemma2": ("input_layernorm", "pre_feedforward_layernorm"), "gpt2": ("ln_1", "ln_2"),
         "gpt_neox": ("input_layernorm", "post_attention_layernorm")}
NEW_SITES = ("resid_mid", "ln1_normalized", "ln2_normalized", "final_normalized")
PROMPT = "The quick brown fox jumps over"


def normalized_by_hand(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's value before its weight (and bias): torch's layer_norm without affine, or x / rms."""
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    if isinstance(norm, torch.nn.LayerNorm):
        return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)
    assert "RMSNorm" in type(norm).__name__
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True) + eps).sqrt()).to(x.dtype)


def norm_inputs(model, family: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """{"ln1.L" / "ln2.L" / "final": (norm module, its input)} from forward pre-hooks on the HF model."""
    hf, p = model.hf, PATHS[family]
    rec: dict[str, tuple] = {}
    mods = {"final": attrgetter(p["norm"])(hf)}
    for L, layer in enumerate(attrgetter(p["layers"])(hf)):
        mods[f"ln1.{L}"] = attrgetter(NORMS[family][0])(layer)
        mods[f"ln2.{L}"] = attrgetter(NORMS[family][1])(layer)
    handles = []
    try:
        for key, m in mods.items():
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, key=key: rec.__setitem__(key, (mod, args[0].detach().clone()))))
        with torch.no_grad():
            hf(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return rec


def new_site_references(model, family: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Each new site by hand: resid_mid.L, ln1_normalized.L, ln2_normalized.L, final_normalized."""
    rec = norm_inputs(model, family, input_ids, attention_mask)
    out = {"final_normalized": normalized_by_hand(*rec["final"])}
    for L in range(model.n_layers):
        out[f"resid_mid.{L}"] = rec[f"ln2.{L}"][1]
        out[f"ln1_normalized.{L}"] = normalized_by_hand(*rec[f"ln1.{L}"])
        out[f"ln2_normalized.{L}"] = normalized_by_hand(*rec[f"ln2.{L}"])
    return out


_PERTURBED: dict[str, object] = {}


def perturbed(family: str):
    """A tiny model of its own whose norms have random weights and biases (the shared ones have 1 and 0,
    where a norm's output would equal its normalized value and no test could tell them apart)."""
    if family not in _PERTURBED:
        from workbench.testing import tiny_model

        model = tiny_model(family, seed=5)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for m in model.hf.modules():
                if "norm" in type(m).__name__.lower():
                    for p in (m.weight, getattr(m, "bias", None)):
                        if p is not None:
                            p.add_(torch.randn(p.shape, generator=g) * 0.5)
        _PERTURBED[family] = model
    return _PERTURBED[family]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


# -- the site table ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook, site", [
    ("blocks.3.ln2.hook_normalized", "ln2_normalized.3"),
    ("blocks.3.ln1.hook_normalized", "ln1_normalized.3"),
    ("blocks.3.hook_resid_mid", "resid_mid.3"),
    ("blocks.3.hook_mlp_in", "resid_mid.3"),  # TransformerLens: hook_mlp_in(resid_mid.clone()), before ln2
    ("ln_final.hook_normalized", "final_normalized"),
])
def test_transformer_lens_names_map_to_their_exact_site(hook, site):
    assert str(Site.parse(hook)) == site
    assert hook_to_site(hook) == site
    assert hook_to_site(site_to_hook(site)) == site


def test_new_sites_are_read_only_per_token_and_in_forward_order():
    for name in NEW_SITES:
        assert SITES[name].per_token and name not in WRITABLE
    order = [Site.parse(s).order for s in ("resid_pre.1", "ln1_normalized.1", "attn_out.1", "resid_mid.1",
                                           "ln2_normalized.1", "mlp_in.1", "neurons.1", "resid_post.1")]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert Site.parse("resid_post.1").order < Site("final_normalized").order < Site("final_norm").order \
        < Site("logits").order


@pytest.mark.parametrize("site", ["mlp_in.2", "final_norm"])
def test_sites_without_an_exact_hook_say_so(site):
    with pytest.raises(NoHookError, match="no exact TransformerLens hook") as e:
        site_to_hook(site)
    assert isinstance(e.value, WorkbenchError)


@pytest.mark.parametrize("hook", ["blocks.0.ln2.hook_scale", "blocks.0.ln1.hook_scale", "ln_final.hook_scale"])
def test_hooks_without_an_exact_site_say_so(hook):
    with pytest.raises(WorkbenchError, match="no workbench site equals it exactly"):
        hook_to_site(hook)


def test_saelens_file_of_an_mlp_in_dictionary_names_no_wrong_hook(tmp_path):
    from workbench.dictionaries import Dictionary, load_dictionary

    g = torch.Generator().manual_seed(0)
    d = Dictionary(W_enc=torch.randn(8, 4, generator=g), b_enc=torch.zeros(4), W_dec=torch.randn(4, 8, generator=g),
                   b_dec=torch.zeros(8), architecture="relu", site="mlp_in.1", out_site="mlp_out.1")
    d.save(tmp_path / "tc")
    import json
    md = json.loads((tmp_path / "tc" / "cfg.json").read_text())["metadata"]
    assert (md["hook_name"], md["hook_name_out"]) == ("mlp_in.1", "blocks.1.hook_mlp_out")
    assert load_dictionary(tmp_path / "tc").site == "mlp_in.1"


# -- each new site against hand-written hooks ---------------------------------------------------------------
def test_new_sites_match_hand_written_hooks(family):
    model = perturbed(family)
    batch = model.tokenize(PROMPT)
    ref = new_site_references(model, family, batch.input_ids, batch.attention_mask)
    res = model.run(PROMPT, capture=list(ref))
    for site, want in ref.items():
        close(res[site], want)
    # alone (no cache shared with resid_mid) the same; the TransformerLens names read the same tensors
    alone = model.run(PROMPT, capture=["ln2_normalized.1", "blocks.0.hook_mlp_in", "ln_final.hook_normalized"])
    close(alone["ln2_normalized.1"], ref["ln2_normalized.1"])
    close(alone["resid_mid.0"], ref["resid_mid.0"])
    close(alone["final_normalized"], ref["final_normalized"])
    if family != "gpt_neox":  # sequential blocks: resid_mid is resid_pre + attn_out (Gemma 2: its normed attn_out)
        both = model.run(PROMPT, capture=["resid_pre.1", "attn_out.1", "resid_mid.1"])
        if family != "gemma2":
            close(both["resid_mid.1"], both["resid_pre.1"] + both["attn_out.1"], atol=1e-4)
    else:  # parallel attention and MLP: the MLP's norm reads resid_pre
        close(res["resid_mid.1"], model.run(PROMPT, capture=["resid_pre.1"])["resid_pre.1"])
    # mlp_in (after the weight) is another tensor once the weights are not 1
    mlp_in = model.run(PROMPT, capture=["mlp_in.0"])["mlp_in.0"]
    assert (mlp_in - res["ln2_normalized.0"]).abs().max() > 1e-2


def test_new_sites_are_refused_as_intervention_targets(tiny):
    import workbench as wb

    model = tiny("llama")
    for site in ("resid_mid.0", "ln2_normalized.0", "ln1_normalized.0", "final_normalized"):
        with pytest.raises(ValueError, match="read-only"):
            model.run(PROMPT, [wb.Edit(site, indices=[0], op="set", value=1.0)])


def test_post_norm_model_without_pre_norms_says_so(tiny):
    from workbench.core.arch import ArchMap

    model = tiny("llama")
    a = model.arch
    saved = (a.ln1, a.ln2)
    try:
        a.ln1 = a.ln2 = ""
        with pytest.raises(WorkbenchError, match="does not name"):
            model.run(PROMPT, capture=["ln2_normalized.0"])
    finally:
        a.ln1, a.ln2 = saved
    # an ArchMap built by hand keeps its positional constructor; the norms default to empty
    m = ArchMap("x", "model.layers", "e", "a", "o", "m", "d", "n", "u")
    assert (m.ln1, m.ln2) == ("", "")


# -- against TransformerLens itself, where it is installed -----------------------------------------------------
def hooked_transformer(tl, model, family: str):
    """The tiny HF model converted by transformer-lens's own weight conversion, with no weight processing."""
    assert model.arch.family == ("gpt2" if family == "gpt2" else "llama")
    return hooked(model)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_against_transformer_lens(fam):
    """Each TransformerLens name reads, in the workbench, the very tensor TransformerLens's hook holds."""
    tl = pytest.importorskip("transformer_lens")
    model = perturbed(fam)
    ht = hooked_transformer(tl, model, fam)
    batch = model.tokenize(PROMPT)
    with torch.no_grad():
        tl_logits, cache = ht.run_with_cache(batch.input_ids)
    names = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_in",
             "blocks.1.ln1.hook_normalized", "blocks.1.ln2.hook_normalized", "ln_final.hook_normalized",
             "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out"]
    res = model.run(PROMPT, capture=names, logits="all")
    close(res.logits, tl_logits, atol=1e-4)  # the conversion is faithful
    for n in names:
        close(res[n], cache[n], atol=1e-4)
    # the old mappings read other tensors: mlp_in and final_norm are the norms' outputs after their weights
    old = model.run(PROMPT, capture=["mlp_in.0", "final_norm"])
    assert (old["mlp_in.0"] - cache["blocks.0.ln2.hook_normalized"]).abs().max() > 1e-2
    assert (old["mlp_in.0"] - cache["blocks.0.hook_mlp_in"]).abs().max() > 1e-2
    assert (old["final_norm"] - cache["ln_final.hook_normalized"]).abs().max() > 1e-2


# -- a SAELens transcoder on ln2.hook_normalized, inside the model ----------------------------------------------
def test_transcoder_on_ln2_normalized_reads_the_unscaled_value(tmp_path):
    """A transcoder trained on ``blocks.L.ln2.hook_normalized`` reads that tensor (not the MLP input) in a Splice."""
    import json

    from safetensors.torch import save_file

    from workbench.dictionaries import DictionaryError, Splice, load_dictionary

    model = perturbed("gpt2")
    d, n = model.arch.d_model, 16
    g = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(d, n, generator=g) * 0.3, "b_enc": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d, generator=g) * 0.3, "b_dec": torch.randn(d, generator=g) * 0.1}
    (tmp_path / "tc").mkdir()
    save_file(t, str(tmp_path / "tc" / "sae_weights.safetensors"))
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps({
        "architecture": "transcoder", "d_in": d, "d_sae": n, "d_out": d, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "metadata": {"model_name": "gpt2", "hook_name": "blocks.1.ln2.hook_normalized",
                     "hook_name_out": "blocks.1.hook_mlp_out", "hook_head_index": None}}))
    tc = load_dictionary(tmp_path / "tc")
    assert (tc.site, tc.out_site) == ("ln2_normalized.1", "mlp_out.1")
    clean = model.run(PROMPT, capture=["ln2_normalized.1", "mlp_in.1"])
    res = model.run(PROMPT, [Splice(tc)], capture=["mlp_out.1"])
    x = clean["ln2_normalized.1"]
    want = torch.relu(x @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    close(res["mlp_out.1"], want, atol=1e-4)
    wrong = torch.relu(clean["mlp_in.1"] @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    assert (res["mlp_out.1"] - wrong).abs().max() > 1e-2
    # an SAE (no out_site) would write its read-only site: refused, saying so
    sae = load_dictionary(tmp_path / "tc", site="ln2_normalized.1", out_site="ln2_normalized.1")
    with pytest.raises(DictionaryError, match="read-only"):
        model.run(PROMPT, [Splice(sae)])
