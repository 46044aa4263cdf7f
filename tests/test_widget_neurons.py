"""NeuronHeatmap on tiny models: ranking, matrix, ablation specs, predictions, transport, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.testing import tiny_model
from workbench.widgets._transport import pack
from workbench.widgets.neurons import NeuronHeatmap

PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def llama() -> wb.Model:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gpt2() -> wb.Model:
    return tiny_model("gpt2")


def hand(model: wb.Model, layer: int, top_n: int, interventions=None):
    """Top-N by max-over-tokens activation, computed from a plain `model.run`."""
    res = model.run(PROMPT, interventions, capture=[f"neurons.{layer}"])
    acts = res[f"neurons.{layer}"][0].float().numpy()
    peak = acts.max(axis=0)
    order = sorted(range(acts.shape[1]), key=lambda i: (-peak[i], i))[:top_n]
    return res, acts, np.array(order)


def assert_rows_equal(a: list[dict], b: list[dict]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["token"] for r in a] == [r["token"] for r in b]
    np.testing.assert_allclose([r["prob"] for r in a], [r["prob"] for r in b], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_top_neurons_and_matrix_match_hand_computation(family: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(family)
    w = NeuronHeatmap(model, PROMPT, layer=1, top_n=7)
    r = w.call("run")
    res, acts, order = hand(model, 1, 7)
    assert r["tokens"] == res.token_texts(0)
    assert r["neurons"].dtype == np.int32
    np.testing.assert_array_equal(r["neurons"], order)
    # every column shown peaks at least as high as every neuron left out
    peak = acts.max(axis=0)
    left_out = np.setdiff1d(np.arange(acts.shape[1]), order)
    assert peak[order].min() >= peak[left_out].max()
    assert r["matrix"].dtype == np.float32 and r["matrix"].shape == (len(res.tokens[0]), 7)
    np.testing.assert_allclose(r["matrix"], acts[:, order], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["baseline_matrix"], acts[:, order], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["neuron_max"], peak[order], rtol=1e-6)
    assert r["scale"] == pytest.approx(float(np.abs(acts[:, order]).max()), rel=1e-6)
    assert_rows_equal(r["baseline"], res.top.as_rows(0))
    assert_rows_equal(r["current"], res.top.as_rows(0))
    assert r["interventions"] == [] and r["tint"] is None
    assert all(c["delta"] == 0 for c in r["changes"])


def test_top_n_is_clamped_and_validated(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, top_n=10_000)
    assert w.top_n == llama.arch.d_mlp
    with pytest.raises(ValueError, match="top_n"):
        w.call("run", top_n=0)


def test_toggle_zero_ablates_with_a_zero_neurons_spec(llama: wb.Model) -> None:
    L = 1
    w = NeuronHeatmap(llama, PROMPT, layer=L, top_n=6)
    first = w.call("run")
    i = int(first["neurons"][0])
    r = w.toggle(i)
    assert w.ablated == [i]
    assert w.interventions == [wb.zero_neurons(L, [i])]
    assert [wb.core.spec_from_dict(d) for d in r["interventions"]] == [wb.zero_neurons(L, [i])]
    json.dumps(r["interventions"])  # JSON-ready
    expected = llama.run(PROMPT, [wb.zero_neurons(L, [i])], capture=[f"neurons.{L}"])
    assert_rows_equal(r["current"], expected.top.as_rows(0))
    assert_rows_equal(r["baseline"], first["baseline"])
    assert not np.allclose([c["cur"] for c in r["changes"]], [c["base"] for c in r["changes"]])
    # columns stay put; the ablated column reads zero in the current matrix
    np.testing.assert_array_equal(r["neurons"], first["neurons"])
    col = list(r["neurons"]).index(i)
    assert np.all(r["matrix"][:, col] == 0)
    np.testing.assert_allclose(r["baseline_matrix"], first["baseline_matrix"])
    np.testing.assert_allclose(r["matrix"], expected[f"neurons.{L}"][0].numpy()[:, r["neurons"]], rtol=1e-6, atol=1e-7)
    # a second neuron joins the same spec; toggling both off restores the baseline
    j = int(first["neurons"][1])
    r2 = w.toggle(j)
    assert w.ablated == sorted([i, j]) and w.interventions == [wb.zero_neurons(L, sorted([i, j]))]
    assert_rows_equal(r2["current"], llama.run(PROMPT, [wb.zero_neurons(L, sorted([i, j]))]).top.as_rows(0))
    w.toggle(i)
    r3 = w.toggle(j)
    assert w.ablated == [] and w.interventions == [] and r3["interventions"] == []
    assert_rows_equal(r3["current"], first["baseline"])


def test_scale_mode_uses_scale_neurons(llama: wb.Model) -> None:
    L = 0
    w = NeuronHeatmap(llama, PROMPT, layer=L, top_n=5, mode="scale", factor=2.5)
    first = w.call("run")
    i = int(first["neurons"][2])
    r = w.toggle(i)
    spec = wb.scale_neurons(L, [i], 2.5)
    assert w.interventions == [spec]
    assert wb.core.spec_from_dict(r["interventions"][0]) == spec
    assert_rows_equal(r["current"], llama.run(PROMPT, [spec]).top.as_rows(0))
    col = list(r["neurons"]).index(i)
    np.testing.assert_allclose(r["matrix"][:, col], 2.5 * first["matrix"][:, col], rtol=1e-5)
    # changing the factor reruns with the new factor
    w.factor = 0.5
    r = w.call("run")
    assert w.interventions == [wb.scale_neurons(L, [i], 0.5)]
    assert_rows_equal(r["current"], llama.run(PROMPT, [wb.scale_neurons(L, [i], 0.5)]).top.as_rows(0))


def test_predictions_diff_rows(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, top_n=4, top_k=5)
    first = w.call("run")
    r = w.call("run", ablated=[int(n) for n in first["neurons"]])
    spec = wb.zero_neurons(1, sorted(int(n) for n in first["neurons"]))
    base = llama.run(PROMPT, top_k=5)
    cur = llama.run(PROMPT, [spec], top_k=5)
    pb, pc = torch.softmax(base.logits[0], -1), torch.softmax(cur.logits[0], -1)
    ids = {c["id"] for c in r["changes"]}
    assert ids == {int(i) for i in base.top.ids[0]} | {int(i) for i in cur.top.ids[0]}
    for c in r["changes"]:
        assert c["base"] == pytest.approx(float(pb[c["id"]]), rel=1e-5)
        assert c["cur"] == pytest.approx(float(pc[c["id"]]), rel=1e-5)
        assert c["delta"] == pytest.approx(c["cur"] - c["base"], abs=1e-9)
        assert c["token"] == llama.tokenizer.decode([c["id"]])
    keys = [max(c["base"], c["cur"]) for c in r["changes"]]
    assert keys == sorted(keys, reverse=True)


def test_explicit_params_do_not_write_traits(llama: wb.Model) -> None:
    """The browser sends the whole state with each request; replies never move traits."""
    w = NeuronHeatmap(llama, PROMPT, layer=1)
    r = w.call("run", layer=0, ablated=[3, 1, 3], mode="scale", factor=0.25, top_n=4, selected_neuron=2)
    assert r["state"]["layer"] == 0 and r["state"]["ablated"] == [1, 3] and r["state"]["top_n"] == 4
    assert [wb.core.spec_from_dict(d) for d in r["interventions"]] == [wb.scale_neurons(0, [1, 3], 0.25)]
    assert r["tint"]["neuron"] == 2
    assert (w.layer, w.ablated, w.mode, w.selected_neuron) == (1, [], "zero", -1)


def test_baseline_cached_and_one_run_per_toggle(llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, top_n=4)
    calls: list = []
    real = llama.run

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(llama, "run", counting)
    r = w.call("run")
    assert (len(calls), r["runs"]) == (1, 1)
    i = int(r["neurons"][0])
    r = w.toggle(i)
    assert (len(calls), r["runs"]) == (2, 1)  # baseline reused, one run with the ablation
    r = w.toggle(i)
    assert (len(calls), r["runs"]) == (2, 0)  # nothing ablated: the cached baseline is the answer
    w.call("neuron", neuron=5)
    assert len(calls) == 2


def test_neuron_tint_values(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1)
    _, acts, _ = hand(llama, 1, 1)
    t = w.call("neuron", neuron=17)
    assert t["neuron"] == 17 and t["prompt"] == PROMPT
    assert t["values"].dtype == np.float32
    np.testing.assert_allclose(t["values"], acts[:, 17], rtol=1e-6, atol=1e-7)
    assert t["max_abs"] == pytest.approx(float(np.abs(acts[:, 17]).max()), rel=1e-6)
    # after an ablation of that neuron, `current` is its ablated value (zero), `values` unchanged
    w.toggle(17)
    t = w.call("neuron", neuron=17)
    np.testing.assert_allclose(t["values"], acts[:, 17], rtol=1e-6, atol=1e-7)
    assert np.all(t["current"] == 0)
    assert w.call("neuron", neuron=-1) == {"neuron": -1, "layer": 1}
    with pytest.raises(IndexError, match="out of range"):
        w.call("neuron", neuron=llama.arch.d_mlp)
    # a selected neuron's tint comes with the run reply
    w.selected_neuron = 17
    r = w.call("run")
    np.testing.assert_allclose(r["tint"]["values"], acts[:, 17], rtol=1e-6, atol=1e-7)


def test_arrays_travel_as_binary_buffers(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, top_n=5)
    body, buffers = pack(w.call("run", ablated=[0], selected_neuron=3))
    n_tok = len(llama.to_str_tokens(PROMPT))
    for key, dtype, shape in [("matrix", "float32", [n_tok, 5]), ("baseline_matrix", "float32", [n_tok, 5]),
                              ("neurons", "int32", [5]), ("neuron_max", "float32", [5])]:
        assert body[key]["dtype"] == dtype and body[key]["shape"] == shape and "__array__" in body[key]
    assert body["tint"]["values"] == {"__array__": body["tint"]["values"]["__array__"], "dtype": "float32", "shape": [n_tok]}
    assert len(buffers) == 6
    assert len(bytes(buffers[body["matrix"]["__array__"]])) == n_tok * 5 * 4
    json.dumps(body)  # the rest is plain JSON

    sent: list = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers))  # type: ignore[method-assign]
    w._run(w.rpc_run, 11, {"ablated": [0]}, None)
    msg, bufs = sent[-1]
    assert msg["type"] == "reply" and msg["id"] == 11 and msg["done"] is True
    assert msg["content"]["matrix"]["dtype"] == "float32" and len(bufs) == 4
    json.dumps(msg)


def test_bad_layer_gives_a_clear_error_reply(llama: wb.Model) -> None:
    with pytest.raises(IndexError, match=r"layer 9 is out of range: this model has layers 0\.\.1"):
        NeuronHeatmap(llama, PROMPT, layer=9)
    w = NeuronHeatmap(llama, PROMPT)
    sent: list = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers))  # type: ignore[method-assign]
    w._run(w.rpc_run, 5, {"layer": 9}, None)
    msg, _ = sent[-1]
    assert msg["id"] == 5 and msg["done"] is True and "content" not in msg
    assert msg["error"]["kind"] == "IndexError"
    assert "layer 9 is out of range" in msg["error"]["message"] and "0..1" in msg["error"]["message"]
    assert "layer 9" in w.error
    # other bad inputs are clear errors too
    for params, pattern in [({"mode": "bogus"}, "mode must be"), ({"prompt": ""}, "prompt is empty"),
                            ({"ablated": [10_000]}, "neuron 10000 is out of range"),
                            ({"factor": float("nan")}, "finite")]:
        w._run(w.rpc_run, 6, params, None)
        assert pattern in sent[-1][0]["error"]["message"]
    with pytest.raises(IndexError, match="out of range"):
        w.call("toggle", neuron=-3)
    # a good request clears the error
    w._run(w.rpc_run, 7, {}, None)
    assert "error" not in sent[-1][0] and w.error == ""


def test_browser_request_runs_in_background(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, top_n=3)
    sent: list = []
    w.send = lambda msg, buffers=None: sent.append((msg, buffers))  # type: ignore[method-assign]
    w._on_custom(w, {"type": "request", "id": 21, "method": "run", "params": {"layer": 0, "ablated": [2]}}, [])
    deadline = time.time() + 60
    while not any(m["id"] == 21 for m, _ in sent) and time.time() < deadline:
        time.sleep(0.02)
    msg, bufs = next((m, b) for m, b in sent if m["id"] == 21)
    assert "error" not in msg, msg.get("error")
    assert msg["content"]["state"]["ablated"] == [2] and msg["content"]["neurons"]["shape"] == [3]
    assert bufs


def test_layer_change_clears_ablations_and_tint(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, ablated=[4, 2])
    assert w.ablated == [2, 4] and w.layer == 1
    w.selected_neuron = 3
    w.layer = 0
    assert w.ablated == [] and w.selected_neuron == -1 and w.interventions == []
    with pytest.raises(ValueError, match="mode"):
        NeuronHeatmap(llama, PROMPT, mode="half")


def hand_grad_x_act(model: wb.Model, layer: int, target: int) -> np.ndarray:
    """Gradient × activation by hand: the down projection's input, and the target logit's gradient at it."""
    down = model.hf.model.layers[layer].mlp.down_proj
    rec = {}

    def keep(_m, args):
        rec["x"] = args[0]
        args[0].retain_grad()

    h = down.register_forward_pre_hook(keep)
    try:
        with torch.enable_grad():
            ids = model.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
            model.hf(input_ids=ids).logits[0, -1, target].backward()
    finally:
        h.remove()
        model.hf.zero_grad(set_to_none=True)
    return (rec["x"].grad * rec["x"]).detach()[0].float().numpy()


def test_colour_by_attribution_matches_hand_written_gradient_x_activation(llama: wb.Model) -> None:
    w = NeuronHeatmap(llama, PROMPT, layer=1, top_n=6, color_by="attribution")
    r = w.call("run")
    top = int(llama.run(PROMPT).top.ids[0, 0])
    ref = hand_grad_x_act(llama, 1, top)
    order = sorted(range(ref.shape[1]), key=lambda i: (-np.abs(ref[:, i]).max(), i))[:6]
    assert r["neurons"].tolist() == order  # columns: the largest |attribution|
    np.testing.assert_allclose(r["attribution"]["matrix"], ref[:, order], rtol=1e-4, atol=1e-6)
    assert r["attribution"]["target"] == llama.tokenizer.decode([top])
    assert r["attribution"]["total"] == pytest.approx(float(ref.sum()), rel=1e-4, abs=1e-6)
    _, acts, _ = hand(llama, 1, 6)
    np.testing.assert_allclose(r["baseline_matrix"], acts[:, order], rtol=1e-5, atol=1e-6)  # still activations
    # another target reruns; the activation mode has no attribution
    r2 = w.call("run", target=" the")
    ref2 = hand_grad_x_act(llama, 1, llama.token_id(" the", "t"))
    assert r2["state"]["target"] == " the" and w.target == ""  # explicit params never write traits
    np.testing.assert_allclose(r2["attribution"]["matrix"], ref2[:, r2["neurons"]], rtol=1e-4, atol=1e-6)
    assert w.call("run", color_by="activation")["attribution"] is None
    assert [p["color_by"] for _, p in [w.static_requests()[0]]] == ["attribution"]
    # integrated gradients: completeness against the logit's change from zeroed neurons
    ig = NeuronHeatmap(llama, PROMPT, layer=1, top_n=6, color_by="attribution", attribution="integrated_gradients",
                       steps=32).call("run")["attribution"]
    assert ig["method"] == "integrated_gradients" and abs(ig["gap"]) <= 1e-2 * max(abs(ig["delta"]), 1e-3)
    with pytest.raises(ValueError, match="color_by"):
        w.call("run", color_by="rainbow")
    with pytest.raises(ValueError, match="attribution must be"):
        NeuronHeatmap(llama, PROMPT, attribution="saliency")
