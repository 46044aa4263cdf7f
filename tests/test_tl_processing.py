"""SAELens files record TransformerLens weight processing; the workbench feeds the SAE what TransformerLens fed it.

References: transformer-lens 3.9's own ``HookedTransformer`` built from the same tiny GPT-2 (its weight
conversion, then ``load_and_process_state_dict`` with the flags SAELens's ``load_model`` would use:
``from_pretrained_no_processing(**kwargs)``, or ``from_pretrained(**kwargs)`` for files trained before
SAELens 3.19.2), and the real sae-lens package, which writes every SAE here and reconstructs on
TransformerLens's processed activations (``HookedSAETransformer`` for the spliced logits).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tl_reference import hooked  # noqa: F401  (the peer tests import it from here too)

from workbench.dictionaries import DictionaryError, Splice, load_dictionary

pytestmark = pytest.mark.filterwarnings("ignore:the dictionary was trained on", "ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")
sae_lens = pytest.importorskip("sae_lens")

PROMPT = "The quick brown fox jumps over the lazy dog"
CURRENT = "6.54.12"  # any SAELens from 3.19.2 on: from_pretrained_no_processing(**kwargs)
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                     refactor_factored_attn_matrices=False)
FROM_PRETRAINED = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True,
                       refactor_factored_attn_matrices=False)
SITE_OF = {"hook_embed": "embed", "blocks.0.hook_resid_post": "resid_post.0", "blocks.1.hook_resid_pre": "resid_pre.1",
           "blocks.1.hook_resid_mid": "resid_mid.1", "blocks.0.hook_attn_out": "attn_out.0",
           "blocks.1.hook_mlp_out": "mlp_out.1", "blocks.1.ln2.hook_normalized": "ln2_normalized.1",
           "blocks.0.mlp.hook_post": "neurons.0", "blocks.1.hook_resid_post": "resid_post.1",
           "blocks.0.attn.hook_z": "z.0"}
WRITABLE = {"embed", "resid_post.0", "resid_pre.1", "attn_out.0", "mlp_out.1", "neurons.0", "resid_post.1", "z.0"}


def tl_flags(kwargs: dict, version: str) -> dict:
    """What SAELens's load_model passes TransformerLens (written out here, not read from the workbench)."""
    major, minor, patch = (int(p) for p in version.split("."))
    base = FROM_PRETRAINED if (major, minor, patch) < (3, 19, 2) else NO_PROCESSING
    return {**base, **kwargs}


_MODELS: dict[str, object] = {}


def gpt2():
    """A tiny GPT-2 whose norms, biases and embeddings have non-zero means (the random init's are ~0)."""
    if "gpt2" not in _MODELS:
        from workbench.testing import tiny_model

        model = tiny_model("gpt2", seed=11)
        g = torch.Generator().manual_seed(12)
        with torch.no_grad():
            for name, p in model.hf.named_parameters():
                if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)
                if name.endswith(("wte.weight", "wpe.weight")):
                    p.add_(0.2 + torch.randn(p.shape[-1], generator=g) * 0.1)
        _MODELS["gpt2"] = model
    return _MODELS["gpt2"]


def write_sae(path, hook: str, d_in: int, kwargs: dict | None, version: str, seed: int = 0):
    """A StandardSAE written by sae-lens itself, with random weights and the given record."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    md = dict(model_name="tiny-gpt2", hook_name=hook, sae_lens_training_version=version)
    if kwargs is not None:
        md["model_from_pretrained_kwargs"] = kwargs
    cfg = StandardSAEConfig(d_in=d_in, d_sae=64, dtype="float32", device="cpu", apply_b_dec_to_input=True,
                            reshape_activations="hook_z" if hook.endswith("hook_z") else "none",
                            metadata=SAEMetadata(**md))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = StandardSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sae.save_model(path)
    return sae.eval()


def load_sae(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-empty model_from_pretrained_kwargs"
        return sae_lens.SAE.load_from_disk(str(path)).eval()


def tl_act(cache, hook: str) -> torch.Tensor:
    x = cache[hook]
    return x.flatten(-2) if hook.endswith("hook_z") else x


def close(a, b, atol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


def centred_logits(x):
    return x - x.mean(-1, keepdim=True)


# -- each setting: the tensor fed, the reconstruction, the spliced logits -------------------------------------
CASES = [
    ({}, CURRENT, "blocks.0.hook_resid_post", False),
    (None, CURRENT, "blocks.1.hook_resid_post", False),  # no record at all: SAELens loads with no processing
    ({"center_writing_weights": True}, CURRENT, "blocks.0.hook_resid_post", True),
    ({"center_writing_weights": True}, CURRENT, "blocks.1.hook_resid_pre", True),
    ({"center_writing_weights": True}, CURRENT, "blocks.1.hook_resid_mid", True),
    ({"center_writing_weights": True}, CURRENT, "blocks.0.hook_attn_out", True),
    ({"center_writing_weights": True}, CURRENT, "blocks.1.hook_mlp_out", True),
    ({"center_writing_weights": True}, CURRENT, "hook_embed", True),
    ({"fold_ln": True}, CURRENT, "blocks.1.hook_resid_post", False),
    ({"fold_ln": True, "center_writing_weights": True, "center_unembed": True}, CURRENT,
     "blocks.1.ln2.hook_normalized", False),
    ({"fold_ln": True, "center_writing_weights": True, "center_unembed": True}, CURRENT, "blocks.0.mlp.hook_post", False),
    ({"fold_ln": True, "center_writing_weights": True}, CURRENT, "blocks.0.attn.hook_z", False),
    ({"fold_ln": True, "center_writing_weights": True, "refactor_factored_attn_matrices": True}, CURRENT,
     "blocks.1.hook_resid_post", True),
    ({}, "3.13.0", "blocks.1.hook_resid_post", True),  # before 3.19.2: from_pretrained, centred by default
    ({"center_writing_weights": False}, "3.13.0", "blocks.0.hook_resid_post", False),
]


def processing_diffs(tmp, kwargs, version: str, hook: str, centred: bool) -> dict[str, float]:
    """Max abs differences, workbench vs TransformerLens + SAELens, for an SAE on ``hook`` under the record
    ``kwargs``: the tensor fed (``fed``), the raw site (``raw``, large where processing matters), latents,
    the reconstruction (processed space), and the spliced logits (mean over the vocabulary removed)."""
    model = gpt2()
    site = SITE_OF[hook]
    ids = model.tokenize(PROMPT).input_ids
    ht = hooked(model, tl_flags(kwargs or {}, version), cls=sae_lens.HookedSAETransformer)
    with torch.no_grad():
        _, cache = ht.run_with_cache(ids)
    act = tl_act(cache, hook)
    write_sae(tmp / "sae", hook, act.shape[-1], kwargs, version)
    d = load_dictionary(tmp / "sae", model=model)
    assert (d.site, d.center_input, d.center_output) == (site, centred, centred)
    raw = model.run(PROMPT, capture=[site])[site]
    raw = raw.flatten(-2) if site.startswith("z.") else raw
    fed = d.processed_input(raw)
    close(fed, act)  # the tensor the SAE reads: TransformerLens's own
    sae = load_sae(tmp / "sae")
    with torch.no_grad():  # SAELens reshapes hook_z itself
        want_acts, want_recon = sae.encode(cache[hook]), tl_act({hook: sae(cache[hook])}, hook)
    recon = d.forward(raw)[0] - (raw.mean(-1, keepdim=True) if centred else 0)
    out = {"fed": diff(fed, act), "raw": diff(raw, act), "acts": diff(d.encode(raw), want_acts),
           "recon": diff(recon, want_recon)}
    if site in WRITABLE:  # spliced into the model: the logits HookedSAETransformer gives
        with torch.no_grad():
            tl_logits = ht.run_with_saes(ids, saes=[sae])
        res = model.run(PROMPT, [Splice(d)], logits="all")
        out["spliced_logits"] = diff(centred_logits(res.logits), centred_logits(tl_logits))
    return out


def diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("kwargs, version, hook, centred", CASES,
                         ids=[f"{h}-{k}-{v}" for k, v, h, _ in CASES])
def test_the_sae_reads_what_transformer_lens_fed_it(tmp_path, kwargs, version, hook, centred):
    diffs = processing_diffs(tmp_path, kwargs, version, hook, centred)
    if centred:  # the processing matters: the raw site is another tensor
        assert diffs["raw"] > 0.1, diffs
    for key in ("fed", "acts", "recon", "spliced_logits"):
        assert diffs.get(key, 0.0) < 1e-4, (key, diffs)


def test_transcoder_under_centring_writes_mean_free_outputs(tmp_path):
    """ln2.hook_normalized (not centred) -> hook_mlp_out (centred): spliced logits as HookedSAETransformer's."""
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    model = gpt2()
    kwargs = {"fold_ln": True, "center_writing_weights": True}
    dm = model.arch.d_model
    cfg = TranscoderConfig(d_in=dm, d_sae=64, d_out=dm, dtype="float32", device="cpu", apply_b_dec_to_input=False,
                           metadata=SAEMetadata(model_name="tiny-gpt2", hook_name="blocks.1.ln2.hook_normalized",
                                                hook_name_out="blocks.1.hook_mlp_out",
                                                model_from_pretrained_kwargs=kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    tc.save_model(tmp_path / "tc")
    d = load_dictionary(tmp_path / "tc", model=model)
    assert (d.site, d.out_site, d.center_input, d.center_output) == ("ln2_normalized.1", "mlp_out.1", False, True)
    ids = model.tokenize(PROMPT).input_ids
    ht = hooked(model, tl_flags(kwargs, CURRENT), cls=sae_lens.HookedSAETransformer)
    with torch.no_grad():
        tl_logits, cache = ht.run_with_cache(ids)
        spliced = ht.run_with_saes(ids, saes=[load_sae(tmp_path / "tc")])
        want = tc(cache["blocks.1.ln2.hook_normalized"])
    clean = model.run(PROMPT, capture=["ln2_normalized.1", "mlp_out.1"])
    close(d.forward(clean["ln2_normalized.1"])[0], want)
    res = model.run(PROMPT, [Splice(d)], capture=["mlp_out.1"], logits="all")
    close(centred_logits(res.logits), centred_logits(spliced))
    # the written value is the transcoder's output plus the mean that the processing took from the replaced value
    close(res["mlp_out.1"], want + clean["mlp_out.1"].mean(-1, keepdim=True))


# -- refusals, naming the setting -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, version, setting", [
    ({"fold_value_biases": True}, CURRENT, "fold_value_biases"),
    ({}, "3.13.0", "fold_value_biases"),  # from_pretrained's default
    ({"refactor_factored_attn_matrices": True}, CURRENT, "refactor_factored_attn_matrices"),
])
def test_hook_z_under_value_processing_is_refused(tmp_path, kwargs, version, setting):
    model = gpt2()
    ids = model.tokenize(PROMPT).input_ids
    ht = hooked(model, tl_flags(kwargs, version))
    with torch.no_grad():
        _, cache = ht.run_with_cache(ids)
    raw = model.run(PROMPT, capture=["z.0"])["z.0"]
    assert (raw - cache["blocks.0.attn.hook_z"]).abs().max() > 1e-2  # TransformerLens fed another tensor
    write_sae(tmp_path / "sae", "blocks.0.attn.hook_z", raw.shape[-2] * raw.shape[-1], kwargs, version)
    for m in (model, None):
        with pytest.raises(DictionaryError, match=setting):
            load_dictionary(tmp_path / "sae", model=m)


def test_rmsnorm_model_is_not_centred_and_an_unresolved_load_says_so(tmp_path):
    """TransformerLens centres LayerNorm models only: on a Llama the record changes nothing."""
    from workbench.testing import tiny_model

    model = tiny_model("llama", seed=3)
    kwargs = {"center_writing_weights": True, "fold_ln": True}
    ht = hooked(model, tl_flags(kwargs, CURRENT))
    with torch.no_grad():
        _, cache = ht.run_with_cache(model.tokenize(PROMPT).input_ids)
    write_sae(tmp_path / "sae", "blocks.1.hook_resid_post", model.arch.d_model, kwargs, CURRENT)
    d = load_dictionary(tmp_path / "sae", model=model)
    assert not (d.center_input or d.center_output)
    raw = model.run(PROMPT, capture=["resid_post.1"])["resid_post.1"]
    close(d.processed_input(raw), cache["blocks.1.hook_resid_post"])
    loose = load_dictionary(tmp_path / "sae")  # no model: centring assumed (LayerNorm), checked when used
    assert loose.center_input
    with pytest.raises(DictionaryError, match="center_writing_weights.*RMSNorm"):
        model.run(PROMPT, [Splice(loose)])


# -- the record: both layouts, saving, overriding -------------------------------------------------------------
def test_pre_6_flat_layout_is_read_as_sae_lens_reads_it(tmp_path):
    """An old flat cfg.json (top-level model_from_pretrained_kwargs and training version), as SAELens's own
    loader reads it, gives the same processing."""
    model = gpt2()
    dm = model.arch.d_model
    folder = tmp_path / "old"
    sae = write_sae(tmp_path / "v6", "blocks.0.hook_resid_post", dm, None, CURRENT)
    folder.mkdir()
    (folder / "sae_weights.safetensors").write_bytes((tmp_path / "v6" / "sae_weights.safetensors").read_bytes())
    (folder / "cfg.json").write_text(json.dumps({
        "model_name": "tiny-gpt2", "hook_point": "blocks.0.hook_resid_post", "hook_point_layer": 0,
        "hook_point_head_index": None, "d_in": dm, "d_sae": 64, "dtype": "float32", "device": "cpu",
        "activation_fn_str": "relu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "sae_lens_training_version": "3.13.0", "model_from_pretrained_kwargs": {"center_writing_weights": False,
                                                                               "fold_ln": True}}))
    theirs = load_sae(folder)
    assert theirs.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": False, "fold_ln": True}
    assert theirs.cfg.metadata.sae_lens_training_version == "3.13.0"
    d = load_dictionary(folder, model=model)
    assert d.meta["tl_processing"] == {**FROM_PRETRAINED, "center_writing_weights": False}
    assert not d.center_input
    (folder / "cfg.json").write_text(json.dumps({**json.loads((folder / "cfg.json").read_text()),
                                                 "model_from_pretrained_kwargs": {}}))
    assert load_dictionary(folder, model=model).center_input  # 3.13's from_pretrained centred by default
    del sae


def test_save_keeps_the_processing_both_ways(tmp_path):
    """A file whose centring comes from an old version's defaults is written with the flags spelled out,
    so that the workbench and SAELens (from_pretrained_no_processing(**kwargs)) both read it centred."""
    model = gpt2()
    write_sae(tmp_path / "old", "blocks.1.hook_resid_post", model.arch.d_model, {}, "3.13.0")
    d = load_dictionary(tmp_path / "old", model=model)
    assert d.center_input
    d.save(tmp_path / "ours")
    back = load_dictionary(tmp_path / "ours", model=model)
    assert (back.center_input, back.center_output) == (True, True)
    theirs = load_sae(tmp_path / "ours")
    kw = theirs.cfg.metadata.model_from_pretrained_kwargs
    assert kw["center_writing_weights"] is True and kw["fold_value_biases"] is True
    assert tl_flags(kw, theirs.cfg.metadata.sae_lens_training_version or CURRENT)["center_writing_weights"]
    raw = model.run(PROMPT, capture=["resid_post.1"])["resid_post.1"]
    close(back.forward(raw)[0], d.forward(raw)[0], atol=1e-6)


def test_tl_processing_overrides_a_silent_file(tmp_path):
    model = gpt2()
    write_sae(tmp_path / "sae", "blocks.0.hook_resid_post", model.arch.d_model, None, CURRENT)
    assert not load_dictionary(tmp_path / "sae", model=model).center_input
    d = load_dictionary(tmp_path / "sae", model=model, tl_processing={"center_writing_weights": True})
    assert d.center_input and d.meta["tl_processing"]["center_writing_weights"]
    with pytest.raises(DictionaryError, match="tl_processing"):
        load_dictionary(tmp_path / "sae", tl_processing={"centre": True})
