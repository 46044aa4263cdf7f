"""Tuned lenses move both ways between the workbench and the real `tuned-lens` package (0.2).

The reference writer and reader is the library itself (installed for the tests by
``scripts/setup.sh --test``, ``pip install --no-deps tuned-lens==0.2.0``): its ``save()`` writes
``config.json`` and ``params.pt`` holding ``layer_translators.state_dict()`` (keys ``0.weight``,
``0.bias``, …; translator ``i`` reads ``hidden_states[i]``, 0 being the embeddings).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from workbench.causal.lens import EMBED, TunedLens, tuned_lens

tl = pytest.importorskip("tuned_lens", reason="the tuned-lens package: scripts/setup.sh --test installs it")

PROMPT = "The quick brown fox jumps over the lazy dog"
FAMILIES = ["llama", "gpt2"]


def _real_lens(model, seed: int = 0):
    """A TunedLens of the real library with random translators."""
    lens = tl.TunedLens.from_model(model.hf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lens.layer_translators:
            t.weight.copy_(torch.randn(t.weight.shape, generator=g) * 0.1)
            if t.bias is not None:
                t.bias.copy_(torch.randn(t.bias.shape, generator=g) * 0.1)
    return lens.float().eval()


def _hidden(model, prompt=PROMPT):
    ids = torch.tensor([model.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = model.hf(input_ids=ids, output_hidden_states=True)
    return out.hidden_states, out.logits[0].float()


def _check_translators(ours: TunedLens, real, d: int) -> None:
    """Same translator outputs on random hidden states, for every hidden state with one."""
    h = torch.randn(3, 5, d, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(ours.translate(h, "embed"), real.transform_hidden(h, 0), rtol=1e-5, atol=1e-5)
        for L in range(ours.n_layers - 1):
            torch.testing.assert_close(ours.translate(h, L), real.transform_hidden(h, L + 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_a_folder_written_by_tuned_lens(tiny, family, tmp_path):
    model = tiny(family)
    real = _real_lens(model)  # (0.2.0 cannot build bias=False lenses: its __init__ zeroes a None bias)
    real.save(tmp_path / "lens")  # the library's own writer
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["config.json", "params.pt"]
    ours = TunedLens.load(tmp_path / "lens")
    assert (ours.n_layers, ours.d_model) == (model.n_layers, model.d_model)
    _check_translators(ours, real, model.d_model)
    # and the whole lens matches the library's forward on the model's own hidden states
    hs, final = _hidden(model)
    res = tuned_lens(model, PROMPT, ours, layers=["embed", *range(model.n_layers)], top_k=5)
    assert res.layers == [EMBED, *range(model.n_layers)]
    with torch.no_grad():
        rows = [real(hs[i][0], i).float() for i in range(model.n_layers)] + [final]
    for r, lg in enumerate(rows):
        logq = torch.log_softmax(lg, -1)
        top = logq.exp().topk(5)
        assert res.top_ids[r].tolist() == top.indices.tolist(), r
        torch.testing.assert_close(res.top_probs[r], top.values, rtol=1e-4, atol=1e-5)
        p_f = torch.softmax(final, -1)
        kl = (p_f * (torch.log_softmax(final, -1) - logq)).sum(-1).clamp_min(0)
        torch.testing.assert_close(res.kl[r], kl, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_tuned_lens_loads_a_folder_we_write(tiny, family, tmp_path, caplog):
    model = tiny(family)
    ours = TunedLens.identity(model)
    g = torch.Generator().manual_seed(4)
    for t in (ours.weight, ours.bias, ours.embed_weight, ours.embed_bias):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    folder = ours.save(tmp_path / "lens", layout="tuned-lens")
    # tensors only: plain torch.load(weights_only=True) reads it
    state = torch.load(folder / "params.pt", weights_only=True)
    assert sorted(state) == sorted(f"{i}.{p}" for i in range(model.n_layers) for p in ("weight", "bias"))
    cfg = json.loads((folder / "config.json").read_text())
    assert set(cfg) <= {f.name for f in dataclasses.fields(tl.nn.TunedLensConfig)}  # nothing it would ignore
    with caplog.at_level(logging.WARNING):
        real = tl.TunedLens.from_model_and_pretrained(model.hf, str(folder)).float().eval()
    assert not [r for r in caplog.records if "Ignoring" in r.getMessage()]
    assert len(real) == model.n_layers
    _check_translators(ours, real, model.d_model)
    # and back again, unchanged
    back = TunedLens.load(folder)
    torch.testing.assert_close(back.weight, ours.weight)
    torch.testing.assert_close(back.embed_bias, ours.embed_bias)
