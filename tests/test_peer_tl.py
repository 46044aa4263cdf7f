"""Peer comparisons with TransformerLens itself: activation patching and the logit lens.

The reference is transformer-lens 3.9 on the same tiny GPT-2 (its weight conversion, no processing, and
processed as ``from_pretrained`` would: fold_ln, center_writing_weights, center_unembed, fold_value_biases,
which change neither a logit difference nor a probability): ``transformer_lens.patching``'s
``get_act_patch_*`` sweeps, and the logit lens as TransformerLens users write it
(``ln_final(cache["blocks.L.hook_resid_post"])`` then ``unembed``). Each ``*_diffs`` function returns max abs
differences, which ``scripts/peer_compare.py`` prints.
"""

from __future__ import annotations

import pytest
import torch

from workbench.causal.lens import logit_lens
from workbench.causal.patching import activation_patching

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")

CLEAN = "The cat sat on the mat"
CORRUPT = "A dog is on a mat"
LENS_PROMPT = "The quick brown fox jumps over the lazy dog"
FROM_PRETRAINED = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
SWEEPS = {"resid_pre": "get_act_patch_resid_pre", "attn_out": "get_act_patch_attn_out",
          "mlp_out": "get_act_patch_mlp_out", "z": "get_act_patch_attn_head_out_all_pos"}


def _setup(processed: bool):
    from test_tl_processing import NO_PROCESSING, gpt2, hooked

    model = gpt2()
    return model, hooked(model, {**NO_PROCESSING, **(FROM_PRETRAINED if processed else {})})


def _answers(model):
    """The clean run's top two single-token next tokens."""
    tok = model.tokenizer
    ids = [int(i) for i in model.run(CLEAN, top_k=40).top.ids[0]
           if tok(tok.decode([int(i)]), add_special_tokens=False)["input_ids"] == [int(i)]]
    return tok.decode([ids[0]]), tok.decode([ids[1]]), ids[0], ids[1]


def patching_diffs(site: str, processed: bool = False) -> dict[str, float]:
    """Denoising activation patching of ``site`` (logit difference): workbench vs transformer_lens.patching."""
    import transformer_lens.patching as tlp

    model, ht = _setup(processed)
    ans, wrong, a, w = _answers(model)
    clean_ids, corrupt_ids = model.tokenize(CLEAN).input_ids, model.tokenize(CORRUPT).input_ids
    assert clean_ids.shape == corrupt_ids.shape

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, w]

    with torch.no_grad():
        _, clean_cache = ht.run_with_cache(clean_ids)
        want = getattr(tlp, SWEEPS[site])(ht, corrupt_ids, clean_cache, metric)
    res = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, site=site, metric="logit_diff",
                              direction="denoising", progress=False)
    return {"raw": float((res.raw.double() - want.double()).abs().max()),
            "spread": float(want.max() - want.min())}  # the sweep is not flat


def lens_diffs(processed: bool = False) -> dict[str, float]:
    """The logit lens (final norm + unembedding of each resid_post): probabilities and KL vs TransformerLens."""
    model, ht = _setup(processed)
    ids = model.tokenize(LENS_PROMPT).input_ids
    k = 5
    with torch.no_grad():
        final, cache = ht.run_with_cache(ids)
        rows = [ht.unembed(ht.ln_final(cache[f"blocks.{L}.hook_resid_post"]))[0] for L in range(model.n_layers)]
    res = logit_lens(model, LENS_PROMPT, top_k=k)
    logp_f = torch.log_softmax(final[0].double(), -1)
    d_prob = d_kl = 0.0
    same_top = True
    for i, lg in enumerate(rows):
        logq = torch.log_softmax(lg.double(), -1)
        top = logq.exp().topk(k)
        same_top &= res.top_ids[i].tolist() == top.indices.tolist()
        d_prob = max(d_prob, float((res.top_probs[i].double() - top.values).abs().max()))
        kl = (logp_f.exp() * (logp_f - logq)).sum(-1).clamp_min(0)
        d_kl = max(d_kl, float((res.kl[i].double() - kl).abs().max()))
    return {"top_probs": d_prob, "kl": d_kl, "same_top_ids": float(same_top)}


@pytest.mark.parametrize("processed", [False, True], ids=["no_processing", "from_pretrained"])
@pytest.mark.parametrize("site", list(SWEEPS))
def test_activation_patching_matches_transformer_lens(site, processed):
    diffs = patching_diffs(site, processed)
    assert diffs["spread"] > 1e-2, diffs
    assert diffs["raw"] < 1e-4, diffs


@pytest.mark.parametrize("processed", [False, True], ids=["no_processing", "from_pretrained"])
def test_logit_lens_matches_transformer_lens(processed):
    diffs = lens_diffs(processed)
    assert diffs["same_top_ids"] == 1.0, diffs
    assert diffs["top_probs"] < 1e-5 and diffs["kl"] < 1e-4, diffs
