"""SteeringPanel: directions, `wb.steer` specs, streaming generation and cancellation (tiny models)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import workbench as wb
from workbench.widgets._transport import pack
from workbench.widgets.steering import RANGE_FACTOR, SteeringPanel, nice_ceil

PROMPT = "The object is"
N = 12


@pytest.fixture
def llama(tiny: Callable[..., Any]) -> wb.Model:
    return tiny("llama")


def panel(model: wb.Model, **kwargs: Any) -> SteeringPanel:
    return SteeringPanel(model, PROMPT, max_new_tokens=kwargs.pop("max_new_tokens", N), **kwargs)


def drain(gen: Any) -> tuple[list[dict], dict]:
    """All partial replies of a generator rpc method, and its final reply."""
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            return parts, stop.value


def slow_generate(monkeypatch: pytest.MonkeyPatch, model: wb.Model, delay: float) -> list[list]:
    """Make `model.generate` sleep ``delay`` per token (on this model only); record its specs."""
    real = model.generate
    calls: list[list] = []

    def generate(prompt: str, interventions: Any = None, **kw: Any) -> Any:
        calls.append(list(interventions or []))
        cb = kw.get("on_token")

        def on_token(tid: int, text: str) -> None:
            time.sleep(delay)
            if cb is not None:
                cb(tid, text)

        kw["on_token"] = on_token
        return real(prompt, interventions, **kw)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def test_state_is_small_json_and_default_layer(llama: wb.Model, tiny: Callable[..., Any]) -> None:
    w = panel(llama)
    assert w.default_layer == llama.arch.n_layers // 3
    assert panel(tiny("llama", n_layers=6)).default_layer == 2
    w.add_neuron(1, 3).add_direction("mine", torch.randn(llama.d_model), layer=0)
    assert [d["name"] for d in w.directions] == ["L1N3", "mine"]
    for d in w.directions:
        assert set(d) == {"name", "layer", "kind", "min", "max", "strength"}
        assert d["min"] == -d["max"] and d["strength"] == 0.0
    assert [d["kind"] for d in w.directions] == ["neuron", "vector"]
    state = json.dumps({k: v for k, v in w.get_state().items() if not k.startswith("_")})
    assert len(state) < 2000, "direction vectors must not travel in the synced state"


def test_slider_range_follows_residual_norm(llama: wb.Model) -> None:
    w = panel(llama)
    res = llama.run(PROMPT, capture=["resid_post.1"], top_k=1)
    norm = float(res.activations["resid_post.1"][0, 1:].norm(dim=-1).median())
    assert w.resid_norm(1) == pytest.approx(norm, rel=1e-5)
    unit = wb.causal.neuron_direction(llama, 1, 0)
    w.add_direction("unit", unit, layer=1)
    w.add_direction("double", 2 * unit, layer=1)
    w.add_direction("fixed", unit, layer=1, max_strength=3.0)
    d = {x["name"]: x for x in w.directions}
    assert d["unit"]["max"] == nice_ceil(RANGE_FACTOR * norm)
    assert RANGE_FACTOR * norm <= d["unit"]["max"] <= 2.5 * RANGE_FACTOR * norm
    assert d["double"]["max"] == nice_ceil(RANGE_FACTOR * norm / 2)
    assert (d["fixed"]["min"], d["fixed"]["max"]) == (-3.0, 3.0)


def test_nice_ceil() -> None:
    assert [nice_ceil(x) for x in (0.7, 1, 1.2, 2.2, 3, 7, 134.8)] == [1, 1, 2, 2.5, 5, 10, 200]
    assert nice_ceil(0) == 1.0 and nice_ceil(math.nan) == 1.0


def test_interventions_are_steer_specs(llama: wb.Model) -> None:
    w = panel(llama)
    vec = torch.randn(llama.d_model)
    w.add_direction("mine", vec, layer=0).add_neuron(1, 7)
    w.add_mean_difference("mood", ["I love this", "great fun"], ["I hate this", "awful pain"], layer=1)
    assert w.interventions == []
    w.strengths = {"mine": 2.5, "mood": -1.0}
    assert w.strengths == {"mine": 2.5, "L1N7": 0.0, "mood": -1.0}
    md = wb.mean_difference(llama, ["I love this", "great fun"], ["I hate this", "awful pain"], 1)
    assert w.interventions == [
        wb.steer(0, vec, 2.5, name="mine"),
        wb.steer(1, md, -1.0, name="mood"),
    ]
    w.set_strength("L1N7", 4.0)
    assert w.interventions[1] == wb.steer(1, wb.causal.neuron_direction(llama, 1, 7), 4.0, name="L1N7")
    w.reset()
    assert set(w.strengths.values()) == {0.0} and w.interventions == []


def test_strength_outside_range_widens_it(llama: wb.Model) -> None:
    w = panel(llama).add_direction("d", torch.ones(llama.d_model), layer=0, max_strength=1.0)
    w.set_strength("d", -3.0)
    (d,) = w.directions
    assert d["min"] <= -3.0 and d["max"] >= 3.0 and d["strength"] == -3.0
    with pytest.raises(KeyError, match="no direction named 'nope'"):
        w.set_strength("nope", 1.0)


def test_re_adding_a_name_replaces_it(llama: wb.Model) -> None:
    w = panel(llama).add_direction("d", torch.ones(llama.d_model), layer=0, max_strength=1.0)
    w.add_direction("d", -torch.ones(llama.d_model), layer=1, max_strength=2.0, strength=0.5)
    assert len(w.directions) == 1 and w.directions[0]["layer"] == 1
    assert torch.equal(w.vector("d"), -torch.ones(llama.d_model))
    w.remove_direction("d")
    assert w.directions == [] and w.interventions == []


def test_wrong_width_is_a_clear_error(llama: wb.Model) -> None:
    w = panel(llama)
    with pytest.raises(ValueError, match=r"has shape \(47,\).*d_model=48"):
        w.add_direction("short", torch.randn(47))
    with pytest.raises(ValueError, match="all zeros"):
        w.add_direction("zero", torch.zeros(48))
    with pytest.raises(ValueError, match="NaN"):
        w.add_direction("nan", torch.full((48,), float("nan")))
    with pytest.raises(IndexError, match="layer 5"):
        w.add_direction("far", torch.randn(48), layer=5)
    assert w.directions == []
    # a (1, d) tensor or a numpy array / list is fine
    w.add_direction("row", torch.randn(1, 48)).add_direction("list", [1.0] * 48)
    assert len(w.directions) == 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steered_text_equals_direct_generate(tiny: Callable[..., Any], family: str) -> None:
    model = tiny(family)
    w = panel(model)
    w.add_neuron(1, 2).add_direction("mine", torch.randn(model.d_model), layer=0)
    out = w.call("generate", strengths={"L1N2": 8.0, "mine": -3.0})
    direct = model.generate(PROMPT, [wb.steer(1, wb.causal.neuron_direction(model, 1, 2), 8.0),
                                     wb.steer(0, w.vector("mine"), -3.0)], max_new_tokens=N)
    assert out["text"] == direct.text
    assert out["baseline"] == model.generate(PROMPT, max_new_tokens=N).text
    assert out["text"] != out["baseline"], "a strong steer changes a tiny model's text"
    assert out["strengths"] == {"L1N2": 8.0, "mine": -3.0} == w.strengths
    assert w.steered_text == out["text"] and w.baseline_text == out["baseline"]
    assert out["steered"] is True and out["ms"] >= 0
    body, buffers = pack(out)
    assert buffers == [] and json.dumps(body)


def test_zero_strengths_give_the_cached_baseline(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = llama.generate(PROMPT, max_new_tokens=N).text
    calls = slow_generate(monkeypatch, llama, 0.0)
    w = panel(llama).add_neuron(0, 1)
    first = w.call("generate")
    assert first["text"] == first["baseline"] == expected
    assert first["steered"] is False
    assert len(calls) == 1 and calls[0] == []
    w.call("generate", strengths={"L0N1": 5.0})
    assert len(calls) == 2 and calls[1] == w.interventions, "baseline reused, only the steered run"
    again = w.call("generate", strengths={"L0N1": 0.0})
    assert again["text"] == first["baseline"] and len(calls) == 2
    w.call("generate", max_new_tokens=N + 2)
    assert len(calls) == 3 and w.max_new_tokens == N + 2, "a new length needs a new baseline"
    w.call("generate", prompt="Another prompt")
    assert len(calls) == 4 and w.prompt == "Another prompt"


def test_partial_replies_stream_before_the_final_one(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_generate(monkeypatch, llama, 0.02)
    w = panel(llama, max_new_tokens=20).add_neuron(1, 4)
    w.call("generate")  # caches the baseline
    t0 = time.perf_counter()
    parts, final = drain(w.rpc_generate(strengths={"L1N4": 6.0}))
    elapsed = time.perf_counter() - t0
    texts = [p["text"] for p in parts if "text" in p]
    assert len(texts) >= 2, parts
    assert all(final["text"].startswith(t) for t in texts)
    assert len(texts[0]) < len(final["text"])
    # throttled: at most ~20 partials per second, far fewer than the 20 tokens
    assert len(texts) <= elapsed * 20 + 2 and len(texts) < 20
    # an uncached baseline streams as {"baseline": ...} partials first
    parts, final = drain(w.rpc_generate(prompt="Fresh prompt", strengths={"L1N4": 0.0}))
    assert parts and all("baseline" in p for p in parts)
    assert parts[-1]["baseline"] == final["baseline"] == final["text"]


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_a_newer_request_cancels_the_older(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    w = panel(llama, max_new_tokens=30).add_neuron(1, 4)
    w.call("generate")  # baseline cached: both requests below only steer
    slow_generate(monkeypatch, llama, 0.03)
    sent: list[dict] = []
    lock = threading.Lock()

    def send(msg: dict, buffers: Any = None) -> None:
        with lock:
            sent.append(msg)

    monkeypatch.setattr(w, "send", send)
    req = {"type": "request", "method": "generate"}
    w._on_custom(w, {**req, "id": 1, "params": {"strengths": {"L1N4": 5.0}}}, [])
    _wait(lambda: any(m["id"] == 1 and not m["done"] for m in sent))  # 1 is streaming
    w._on_custom(w, {**req, "id": 2, "params": {"strengths": {"L1N4": -5.0}}}, [])
    _wait(lambda: any(m["id"] == 2 and m["done"] for m in sent))
    _wait(lambda: not w._jobs)
    time.sleep(0.2)
    cancelled = [m for m in sent if m["done"] and m.get("error", {}).get("kind") == "Cancelled"]
    assert [m["id"] for m in cancelled] == [1], sent  # the view learns its request was superseded
    finals = [m for m in sent if m["done"] and m not in cancelled]
    assert [m["id"] for m in finals] == [2], finals
    assert "error" not in finals[0]
    expected = llama.generate(PROMPT, [wb.steer(1, wb.causal.neuron_direction(llama, 1, 4), -5.0)], max_new_tokens=30)
    assert finals[0]["content"]["text"] == expected.text
    assert w.steered_text == expected.text and w.strengths == {"L1N4": -5.0}
    partials_1 = [m for m in sent if m["id"] == 1 and m not in cancelled]
    assert partials_1 and all(not m["done"] for m in partials_1)
    assert not w.busy


def test_cancel_message_stops_a_request(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    w = panel(llama, max_new_tokens=30).add_neuron(1, 4)
    w.call("generate")
    slow_generate(monkeypatch, llama, 0.03)
    sent: list[dict] = []
    monkeypatch.setattr(w, "send", lambda msg, buffers=None: sent.append(msg))
    w._on_custom(w, {"type": "request", "method": "generate", "id": 7, "params": {"strengths": {"L1N4": 2.0}}}, [])
    _wait(lambda: any(m["id"] == 7 for m in sent))
    w._on_custom(w, {"type": "cancel", "id": 7}, [])
    _wait(lambda: not w._jobs, timeout=5)
    finals = [m for m in sent if m["done"]]
    assert [(m["id"], m["error"]["kind"]) for m in finals] == [(7, "Cancelled")], finals


def test_errors_reach_the_browser(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    w = panel(llama).add_neuron(0, 0)
    sent: list[dict] = []
    monkeypatch.setattr(w, "send", lambda msg, buffers=None: sent.append(msg))
    w._on_custom(w, {"type": "request", "method": "generate", "id": 3, "params": {"strengths": {"nope": 1.0}}}, [])
    _wait(lambda: bool(sent))
    (msg,) = sent
    assert msg["id"] == 3 and msg["done"] and "no direction named 'nope'" in msg["error"]["message"]
    assert msg["error"]["kind"] == "KeyError"
    with pytest.raises(ValueError, match="prompt is empty"):
        w.call("generate", prompt="")


def test_constructor_checks(llama: wb.Model) -> None:
    with pytest.raises(IndexError):
        SteeringPanel(llama, PROMPT, layer=9)
    with pytest.raises(ValueError):
        SteeringPanel(llama, PROMPT, max_new_tokens=0)


# -- dictionary features and semi-NMF components as directions --------------------------------------
def _sae(model: wb.Model, site: str = "resid_post.1", out_site: str | None = None, d_sae: int = 32) -> Any:
    from workbench.dictionaries.dictionary import Dictionary

    g = torch.Generator().manual_seed(0)
    d_in = model.arch.size(wb.Site.parse(site))
    d_out = model.arch.size(wb.Site.parse(out_site)) if out_site else d_in
    return Dictionary(W_enc=torch.randn(d_in, d_sae, generator=g) * 0.2, b_enc=torch.zeros(d_sae),
                      W_dec=torch.randn(d_sae, d_out, generator=g), b_dec=torch.zeros(d_out), architecture="relu",
                      site=site, out_site=out_site)


def test_add_feature_steers_the_unit_decoder_row(llama: wb.Model) -> None:
    from workbench.dictionaries.features import (
        feature_direction,
        register_dictionary,
        steer_feature,
    )

    d = _sae(llama)
    name = register_dictionary(d)
    w = panel(llama).add_feature(d, 5)
    (entry,) = w.directions
    assert entry["name"] == f"{name}[5]" and entry["kind"] == "feature" and entry["layer"] == 1
    assert "site" not in entry, "resid_post.<layer> needs no site"
    assert torch.equal(w.vector(entry["name"]), feature_direction(d, 5))
    assert entry["max"] == nice_ceil(RANGE_FACTOR * w.resid_norm(1))
    w.set_strength(entry["name"], 6.0)
    assert w.interventions == [steer_feature(d, 5, 6.0)]
    out = w.call("generate")
    assert out["text"] == llama.generate(PROMPT, [steer_feature(d, 5, 6.0)], max_new_tokens=N).text
    assert out["text"] != out["baseline"]
    # (dictionary, latent) given as a direction goes the same way
    w.add_direction("pair", (d, 7), strength=2.0)
    assert w.directions[1]["kind"] == "feature"
    assert w.interventions[1] == wb.Steer("resid_post.1", feature_direction(d, 7), 2.0, name="pair")


def test_nmf_components_and_transcoders_steer_their_write_site(llama: wb.Model) -> None:
    from workbench.dictionaries.features import feature_direction, steer_feature
    from workbench.dictionaries.nmf import semi_nmf

    res = llama.run([PROMPT, "Hello world, this is", "A dog is on a mat"], capture=["neurons.1"])
    A = torch.cat([res["neurons.1"][b, :L] for b, L in enumerate(res.lengths)]).T
    nmf = semi_nmf(A, 6, iters=10, progress=False)
    nd = nmf.to_dictionary(site="neurons.1")
    w = panel(llama).add_feature(nd, 2, name="comp2")
    (entry,) = w.directions
    assert entry["site"] == "neurons.1" and entry["kind"] == "nmf" and entry["layer"] == 1
    x = llama.run(PROMPT, capture=["neurons.1"], top_k=1)["neurons.1"][0, 1:].float()
    assert w.site_norm("neurons.1") == pytest.approx(float(x.norm(dim=-1).median()), rel=1e-5)
    assert entry["max"] == nice_ceil(RANGE_FACTOR * w.site_norm("neurons.1"))
    w.set_strength("comp2", 20.0)
    (spec,) = w.interventions
    assert spec == wb.Steer("neurons.1", feature_direction(nd, 2), 20.0, name="comp2")
    assert spec.direction == steer_feature(nd, 2, 20.0).direction
    out = w.call("generate")
    assert out["text"] == llama.generate(PROMPT, [spec], max_new_tokens=N).text
    assert out["text"] != out["baseline"]
    # a transcoder writes mlp_out.L; an NMFResult made from a site can be passed as is
    tc = _sae(llama, "mlp_in.1", "mlp_out.1")
    w.add_feature(tc, 0, name="tc0", strength=1.0)
    assert w.directions[-1]["site"] == "mlp_out.1"
    assert w.interventions[-1] == wb.Steer("mlp_out.1", feature_direction(tc, 0), 1.0, name="tc0")
    nmf.site = "neurons.1"
    w.add_feature(nmf, 1, name="raw")
    assert w.directions[-1]["site"] == "neurons.1"


def test_add_feature_errors(llama: wb.Model, tiny: Callable[..., Any]) -> None:
    w = panel(llama)
    with pytest.raises(IndexError, match="out of range"):
        w.add_feature(_sae(llama), 32)
    with pytest.raises(TypeError, match="Dictionary"):
        w.add_feature(torch.randn(48), 0)
    far = _sae(tiny("llama", n_layers=6), "resid_post.4")
    with pytest.raises(ValueError, match="layers 0..1"):
        w.add_feature(far, 0)
    with pytest.raises(ValueError, match="neurons.1 has width=96"):
        w.add_direction("wide", torch.randn(48), site="neurons.1")
    assert w.directions == []


def test_a_subspace_direction_steers_like_any_other(llama: wb.Model) -> None:
    from workbench.causal import Subspace

    g = torch.Generator().manual_seed(0)
    sub = Subspace.from_directions("resid_post.1", torch.randn(2, llama.d_model, generator=g))
    w = panel(llama)
    w.add_subspace(sub, name="sub0").add_subspace(sub, coords=[0.0, 2.0], name="sub1")
    w.strengths = {"sub0": 1.5, "sub1": -1.0}
    assert w.interventions == [wb.steer(1, sub.basis[0], 1.5, name="sub0"),
                               wb.steer(1, 2.0 * sub.basis[1], -1.0, name="sub1")]
    with pytest.raises(ValueError, match="k=2"):
        w.add_subspace(sub, coords=[1.0])
