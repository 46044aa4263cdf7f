"""Peer comparisons with the real sae-lens package: files both ways, and a transcoder spliced into the model.

- SAELens writes (``save_model``) -> the workbench loads: encode and reconstruction against SAELens's own.
- the workbench writes (``Dictionary.save``) -> SAELens loads (``SAE.load_from_disk``): the same numbers.
- a SAELens transcoder on ``blocks.L.ln2.hook_normalized`` -> ``hook_mlp_out``, spliced into a tiny GPT-2,
  against ``HookedSAETransformer.run_with_saes`` on the same model converted by transformer-lens.

Each ``*_diffs`` function returns the max abs differences, which ``scripts/peer_compare.py`` prints.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from workbench.dictionaries import Splice, load_dictionary

pytestmark = pytest.mark.filterwarnings("ignore:the dictionary was trained on", "ignore::DeprecationWarning",
                                        "ignore:.*model_from_pretrained_kwargs")
sae_lens = pytest.importorskip("sae_lens")
pytest.importorskip("transformer_lens")

D_IN, D_SAE = 24, 40
ARCHS = ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder"]
TOL = 2e-5


def make_sae(arch: str, seed: int = 0):
    """A SAELens SAE of ``arch`` with random weights (positive thresholds), built by sae-lens itself."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    cls, cfg_cls = get_sae_class(arch)
    kw = dict(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu")
    md = dict(model_name="tiny", hook_name="blocks.0.hook_resid_post")
    if "transcoder" in arch:
        kw.update(d_out=D_IN + 8 if arch == "transcoder" else D_IN, apply_b_dec_to_input=False)
        md.update(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out")
    if arch == "topk":
        kw["k"] = 6
    cfg = cfg_cls(**kw, metadata=SAEMetadata(**md))
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name in ("threshold", "log_threshold"):
                p.copy_(p.abs() * 0.5 if name == "threshold" else p - 1.5)
    return sae.eval()


def load_theirs(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sae_lens.SAE.load_from_disk(str(path)).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def file_diffs(arch: str, tmp) -> dict[str, float]:
    """Max abs differences of latents and outputs: theirs -> ours, and ours -> theirs."""
    sae = make_sae(arch)
    sae.save_model(tmp / "theirs")
    d = load_dictionary(tmp / "theirs")
    x = torch.randn(9, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_acts, want_out = sae.encode(x), sae(x)
    ours_out, ours_acts = d.forward(x)
    out = {"load_acts": max_diff(ours_acts, want_acts), "load_out": max_diff(ours_out, want_out)}
    d.save(tmp / "ours")
    back = load_theirs(tmp / "ours")
    assert type(back).__name__ == type(sae).__name__
    with torch.no_grad():
        out["save_acts"] = max_diff(back.encode(x), ours_acts)
        out["save_out"] = max_diff(back(x), ours_out)
    out["active"] = float((want_acts > 0).float().mean())  # the comparison is not all zeros
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_files_both_ways(arch, tmp_path):
    diffs = file_diffs(arch, tmp_path)
    assert diffs["active"] > 0.05
    for key in ("load_acts", "load_out", "save_acts", "save_out"):
        assert diffs[key] < TOL, (key, diffs)


def transcoder_splice_diffs(tmp) -> dict[str, float]:
    """A SAELens transcoder ln2.hook_normalized -> hook_mlp_out spliced in the workbench vs HookedSAETransformer."""
    from sae_lens import HookedSAETransformer, Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata
    from test_tl_processing import NO_PROCESSING, PROMPT, gpt2, hooked

    model = gpt2()
    dm = model.arch.d_model
    cfg = TranscoderConfig(d_in=dm, d_sae=96, d_out=dm, dtype="float32", device="cpu", apply_b_dec_to_input=False,
                           metadata=SAEMetadata(model_name="tiny-gpt2", hook_name="blocks.1.ln2.hook_normalized",
                                                hook_name_out="blocks.1.hook_mlp_out"))
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    tc.save_model(tmp / "tc")
    d = load_dictionary(tmp / "tc", model=model)
    assert (d.site, d.out_site) == ("ln2_normalized.1", "mlp_out.1")
    ht = hooked(model, NO_PROCESSING, cls=HookedSAETransformer)
    ids = model.tokenize(PROMPT).input_ids
    with torch.no_grad():
        clean_tl = ht(ids)
        spliced_tl = ht.run_with_saes(ids, saes=[load_theirs(tmp / "tc")])
    clean = model.run(PROMPT, logits="all")
    res = model.run(PROMPT, [Splice(d)], logits="all")
    wrong = load_dictionary(tmp / "tc", site="mlp_in.1", out_site="mlp_out.1")  # the norm's output, after its weight
    res_wrong = model.run(PROMPT, [Splice(wrong)], logits="all")
    return {"spliced_logits": max_diff(res.logits, spliced_tl), "clean_logits": max_diff(clean.logits, clean_tl),
            "splice_effect": max_diff(spliced_tl, clean_tl), "mlp_in_instead": max_diff(res_wrong.logits, spliced_tl)}


def test_transcoder_on_ln2_normalized_against_hooked_sae_transformer(tmp_path):
    diffs = transcoder_splice_diffs(tmp_path)
    assert diffs["spliced_logits"] < 1e-4 and diffs["clean_logits"] < 1e-4, diffs
    assert diffs["splice_effect"] > 0.1 and diffs["mlp_in_instead"] > 0.1, diffs  # the test can tell
