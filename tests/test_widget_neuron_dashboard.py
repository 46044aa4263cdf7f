"""NeuronDashboard on a tiny model and a small scan: payload vs the store, binary transport,
ablate / amplify vs the engine, streaming and cancellation, navigation, other keys, errors."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.corpus import default_corpus
from workbench.neurons.store import ScanStore
from workbench.neurons.weights import neuron_weights
from workbench.widgets import NeuronDashboard
from workbench.widgets._base import Cancelled, Job
from workbench.widgets._transport import pack
from workbench.widgets.neuron_dashboard import NeuronVocab

PROMPT = "The capital of France is"
CORPUS = default_corpus(max_passages=12)
SCAN = {"k": 4, "window": 12, "batch_size": 3, "sample": 8, "progress": False}


@pytest.fixture(scope="module")
def llama(tiny: Callable[..., Any]) -> wb.Model:
    return tiny("llama")


@pytest.fixture(scope="module")
def store(llama: wb.Model, tmp_path_factory: pytest.TempPathFactory) -> ScanStore:
    return wb.scan(llama, CORPUS, tmp_path_factory.mktemp("dash") / "s", **SCAN)


def drain(gen: Any) -> tuple[list[dict], dict]:
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            return parts, stop.value


def same_exemplar(got: dict, ref: Any) -> None:
    assert (got["window"], got["position"], got["tokens"]) == (ref.window, ref.position, ref.tokens)
    assert got["value"] == pytest.approx(ref.value, rel=0, abs=0)
    assert got["acts"].dtype == np.float32
    np.testing.assert_array_equal(got["acts"], ref.acts)


def no_numeric_lists(x: Any, path: str = "") -> None:
    """Arrays must be buffers: no JSON list of numbers anywhere in a packed body."""
    if isinstance(x, dict) and "__array__" in x:
        return  # a buffer descriptor (its shape is the one list of numbers allowed)
    if isinstance(x, dict):
        for k, v in x.items():
            no_numeric_lists(v, f"{path}.{k}")
    elif isinstance(x, list):
        assert not any(isinstance(v, int | float) and not isinstance(v, bool) for v in x), path
        for i, v in enumerate(x):
            no_numeric_lists(v, f"{path}[{i}]")


# -- what the neuron view shows ---------------------------------------------------------------------
def test_neuron_payload_equals_the_store(store: ScanStore) -> None:
    d = NeuronDashboard(store, layer=1, unit=3, n_exemplars=3)
    assert (d.site, d.layer, d.unit) == ("neurons.1", 1, 3)
    parts, r = drain(d.rpc_neuron())
    assert len(parts) == 1 and "exemplars" not in parts[0], "statistics come first, before any model run"
    assert r["state"] == {"site": "neurons.1", "layer": 1, "unit": 3, "width": store.width("neurons.1"),
                          "editable": True}
    ref_stats = store.unit_stats("neurons.1", 3)
    assert set(r["stats"]) == {"count", "mean", "std", "skew", "kurtosis", "frac_active", "max"}
    for k, v in ref_stats.items():
        assert r["stats"][k] == (v if math.isfinite(v) else None), k
    edges, counts = store.histogram("neurons.1", 3)
    np.testing.assert_array_equal(r["hist"]["edges"], edges)
    np.testing.assert_array_equal(r["hist"]["counts"], counts)
    assert r["hist"]["counts"].sum() == ref_stats["count"]
    assert r["hist"]["edges"][r["hist"]["center"]] == 0 == r["hist"]["edges"][r["hist"]["center"] + 1]
    ref = store.exemplars("neurons.1", 3, n=3)
    assert len(r["exemplars"]) == 3
    for got, e in zip(r["exemplars"], ref, strict=True):
        same_exemplar(got, e)
        assert got["acts"][got["position"]] == pytest.approx(got["value"], rel=1e-5)
    groups = store.quantile_exemplars("neurons.1", 3, groups=4, per_group=2)
    assert [g["label"] for g in r["quantiles"]] == [g.label for g in groups]
    for got, g in zip(r["quantiles"], groups, strict=True):
        assert (got["lo"], got["hi"]) == (g.lo, g.hi)
        for ge, e in zip(got["exemplars"], g.exemplars, strict=True):
            same_exemplar(ge, e)


def test_arrays_travel_as_binary_buffers(store: ScanStore) -> None:
    r = NeuronDashboard(store, layer=0, unit=5).call("neuron")
    body, buffers = pack(r)
    assert body["hist"]["counts"]["dtype"] == "float64" and body["hist"]["edges"]["dtype"] == "float64"
    assert len(buffers) == 2 + len(r["exemplars"]) + sum(len(g["exemplars"]) for g in r["quantiles"])
    for e in body["exemplars"] + [e for g in body["quantiles"] for e in g["exemplars"]]:
        assert e["acts"]["dtype"] == "float32" and "__array__" in e["acts"]
        assert all(isinstance(t, str) for t in e["tokens"])
    no_numeric_lists(body)


def test_info_comes_from_the_weights_or_is_computed_for_the_one_neuron(store: ScanStore, llama: wb.Model) -> None:
    w = neuron_weights(llama, k=10, layers=[1], progress=False)
    given = NeuronDashboard(store, weights=w, layer=1, unit=3).call("neuron")
    assert given["info"] == w.unit(1, 3)
    # a layer the weights were not computed for: computed directly, like neuron_weights would
    other = NeuronDashboard(store, weights=w, layer=0, unit=3).call("neuron")
    assert [t["id"] for t in other["info"]["promoted"]] == \
        [t["id"] for t in neuron_weights(llama, layers=[0], progress=False).promoted(0, 3)]
    direct = NeuronDashboard(store, layer=1, unit=3).call("neuron")["info"]
    assert direct["io_class"] == w.unit(1, 3)["io_class"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_neuron_vocab_equals_neuron_weights(tiny: Callable[..., Any], family: str) -> None:
    model = tiny(family)
    ref_all = neuron_weights(model, k=10, layers=[1], progress=False)
    vocab = NeuronVocab(model, k=10)
    for u in (0, 7, model.arch.d_mlp - 1):
        got, ref = vocab.unit(1, u), ref_all.unit(1, u)
        assert set(got) == set(ref)
        for side in ("promoted", "suppressed"):
            assert [t["id"] for t in got[side]] == [t["id"] for t in ref[side]], (side, u)
            assert [t["token"] for t in got[side]] == [t["token"] for t in ref[side]]
            np.testing.assert_allclose([t["score"] for t in got[side]], [t["score"] for t in ref[side]],
                                       rtol=1e-4, atol=1e-5)
        for k, v in ref.items():
            if isinstance(v, float):
                assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, u)
            elif k not in ("promoted", "suppressed"):
                assert got[k] == v, (k, u)
    # by hand for one gated neuron: scores = W_U (g * w_out)
    if family == "llama":
        hf = model.hf
        w_out = hf.model.layers[1].mlp.down_proj.weight[:, 7].detach()
        scores = hf.lm_head.weight.detach() @ (hf.model.norm.weight.detach() * w_out)
        assert [t["id"] for t in vocab.unit(1, 7)["promoted"]] == scores.topk(10).indices.tolist()
    with pytest.raises(IndexError, match="out of range"):
        vocab.unit(1, model.arch.d_mlp)


# -- ablate / amplify ---------------------------------------------------------------------------------
def test_ablate_and_amplify_equal_the_engine(store: ScanStore, llama: wb.Model) -> None:
    d = NeuronDashboard(store, layer=1, unit=3, max_new_tokens=12)
    base = llama.run(PROMPT, top_k=10)
    for mode, spec in (("ablate", wb.zero_neurons(1, [3])), ("amplify", wb.scale_neurons(1, [3], 4.0))):
        r = d.call("edit", mode=mode, prompt=PROMPT, factor=4)
        assert r["intervention"] == spec.to_dict() and d.intervention(mode) == spec
        edit = llama.run(PROMPT, [spec], top_k=10)
        p = r["predictions"]
        assert p["base"] == base.top.as_rows(0)
        assert p["edit"] == edit.top.as_rows(0)
        assert {row["id"] for row in p["rows"]} == {x["id"] for x in p["base"] + p["edit"]}
        pb = torch.softmax(base.logits[0].double(), -1)
        pe = torch.softmax(edit.logits[0].double(), -1)
        for row in p["rows"]:
            assert row["p_base"] == pytest.approx(float(pb[row["id"]]), rel=1e-9)
            assert row["p_edit"] == pytest.approx(float(pe[row["id"]]), rel=1e-9)
        assert any(row["p_base"] != row["p_edit"] for row in p["rows"]), "the edit changes the predictions"
        assert r["gen_base"] == llama.generate(PROMPT, max_new_tokens=12).text
        assert r["gen_edit"] == llama.generate(PROMPT, [spec], max_new_tokens=12).text
        no_numeric_lists({k: v for k, v in pack(r)[0].items() if k != "intervention"})  # a spec's indices
    assert d.prompt == PROMPT and d.factor == 4.0
    r = d.amplify(factor=-2.5)
    assert r["intervention"] == wb.scale_neurons(1, [3], -2.5).to_dict() and d.factor == -2.5
    assert d.ablate()["predictions"]["edit"] == llama.run(PROMPT, [wb.zero_neurons(1, [3])], top_k=10).top.as_rows(0)


def test_edit_streams_predictions_then_text(store: ScanStore, llama: wb.Model) -> None:
    d = NeuronDashboard(store, layer=0, unit=2, max_new_tokens=20)
    parts, final = drain(d.rpc_edit(mode="ablate", prompt="Once upon a time"))
    assert "predictions" in parts[0] and "gen_base" not in parts[0]
    base_parts = [p["gen_base"] for p in parts if "gen_base" in p]
    edit_parts = [p["gen_edit"] for p in parts if "gen_edit" in p]
    assert base_parts and base_parts[-1] == final["gen_base"]
    assert all(final["gen_base"].startswith(t) for t in base_parts)
    assert all(final["gen_edit"].startswith(t) for t in edit_parts)
    # the baseline continuation is cached per prompt: the second run streams only the edited one
    parts, again = drain(d.rpc_edit(mode="amplify", prompt="Once upon a time", factor=8))
    assert not any("gen_base" in p for p in parts) and again["gen_base"] == final["gen_base"]


def test_a_newer_edit_cancels_the_older(store: ScanStore, llama: wb.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    d = NeuronDashboard(store, layer=1, unit=3, max_new_tokens=30)
    d.call("edit", prompt=PROMPT)  # caches the baseline: both requests below generate the edited text only
    real = llama.generate

    def slow(prompt: str, interventions: Any = None, **kw: Any) -> Any:
        cb = kw["on_token"]
        kw["on_token"] = lambda i, t: (time.sleep(0.03), cb(i, t))
        return real(prompt, interventions, **kw)

    monkeypatch.setattr(llama, "generate", slow)
    sent: list[dict] = []
    lock = threading.Lock()

    def send(msg: dict, buffers: Any = None) -> None:
        with lock:
            sent.append(msg)

    monkeypatch.setattr(d, "send", send)
    req = {"type": "request", "method": "edit", "view": "v"}
    d._on_custom(d, {**req, "id": 1, "params": {"mode": "ablate", "prompt": PROMPT}}, [])
    deadline = time.time() + 30
    while not any(m["id"] == 1 and not m["done"] and "gen_edit" in m.get("content", {}) for m in sent):
        assert time.time() < deadline
        time.sleep(0.01)
    d._on_custom(d, {**req, "id": 2, "params": {"mode": "amplify", "prompt": PROMPT, "factor": 3}}, [])
    while not (any(m["id"] == 2 and m["done"] for m in sent) and not d._jobs):
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    done = {m["id"]: m for m in sent if m["done"]}
    assert done[1]["error"]["kind"] == "Cancelled"
    assert "error" not in done[2] and done[2]["content"]["intervention"] == wb.scale_neurons(1, [3], 3.0).to_dict()


# -- navigation -----------------------------------------------------------------------------------
def test_next_and_prev_wrap_to_the_next_and_previous_layer(store: ScanStore) -> None:
    w = store.width("neurons.0")
    d = NeuronDashboard(store, layer=0, unit=w - 2)
    assert d.lane == [{"key": "neurons.0", "layer": 0, "width": w}, {"key": "neurons.1", "layer": 1, "width": w}]
    d.next()
    assert (d.site, d.layer, d.unit) == ("neurons.0", 0, w - 1)
    d.next()
    assert (d.site, d.layer, d.unit) == ("neurons.1", 1, 0)
    d.prev()
    assert (d.site, d.layer, d.unit) == ("neurons.0", 0, w - 1)
    assert d.neighbor(1, "neurons.1", w - 1) == ("neurons.0", 0), "past the last layer: back to the first"
    assert d.neighbor(-1, "neurons.0", 0) == ("neurons.1", w - 1)
    d.go(layer=1, unit=7)
    assert (d.site, d.layer, d.unit) == ("neurons.1", 1, 7)
    assert d.call("neuron", site="neurons.0", unit=4)["state"]["unit"] == 4 and (d.site, d.unit) == ("neurons.0", 4)
    assert d.call("neuron", layer=1, unit=2.0)["state"]["site"] == "neurons.1", "a whole float from JS is fine"
    with pytest.raises(ValueError, match="delta"):
        d.neighbor(2)
    # a superseded request never moves the view (its job is checked before the traits change)
    job = Job(1, ("neuron", "v"))
    job.cancel()
    with pytest.raises(Cancelled):
        drain(d.rpc_neuron(site="neurons.0", unit=9, job=job))
    assert (d.site, d.unit) == ("neurons.1", 2)


def test_bad_input_gives_clear_errors(store: ScanStore, llama: wb.Model) -> None:
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        NeuronDashboard(store, layer=5)
    with pytest.raises(IndexError, match="unit 96 is out of range for neurons.0"):
        NeuronDashboard(store, layer=0, unit=96)
    with pytest.raises(KeyError, match="no 'pattern.0'"):
        NeuronDashboard(store, site="pattern.0")
    with pytest.raises(TypeError, match="ScanStore"):
        NeuronDashboard(llama)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the model"):
        NeuronDashboard(ScanStore.open(store.path))
    d = NeuronDashboard(store, layer=1, unit=3)
    with pytest.raises(IndexError, match="out of range"):
        d.call("neuron", layer=1, unit=-1)
    with pytest.raises(ValueError, match="unit must be an integer"):
        d.call("neuron", layer=1, unit=1.5)
    with pytest.raises(ValueError, match="unit must be an integer"):
        d.call("neuron", layer=1, unit="")  # what the browser sends for an empty box
    with pytest.raises(ValueError, match="empty"):
        d.call("edit", mode="ablate", prompt="  ")
    with pytest.raises(ValueError, match="'ablate' or 'amplify'"):
        d.call("edit", mode="boost", prompt=PROMPT)
    with pytest.raises(ValueError, match="finite"):
        d.call("edit", mode="amplify", prompt=PROMPT, factor=float("nan"))
    assert (d.site, d.unit) == ("neurons.1", 3), "a bad request does not move the view"
    # through the message path the error reaches the browser
    sent: list[dict] = []
    d.send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    d._run(d.rpc_neuron, 5, {"layer": 9, "unit": 0}, None)
    assert sent[-1]["error"]["kind"] == "IndexError" and "layer 9 is out of range" in sent[-1]["error"]["message"]
    d._run(d.rpc_edit, 6, {"mode": "ablate", "prompt": ""}, None)
    assert sent[-1]["error"]["kind"] == "ValueError" and "empty" in d.error


def test_store_show_opens_the_dashboard(store: ScanStore, llama: wb.Model) -> None:
    d = store.show(layer=1, unit=3)
    assert isinstance(d, NeuronDashboard) and (d.site, d.unit) == ("neurons.1", 3)
    reopened = ScanStore.open(store.path, llama)
    d = reopened.show(site="neurons.0", unit=2, prompt="Hello")
    assert (d.site, d.layer, d.unit, d.prompt) == ("neurons.0", 0, 2, "Hello")
    with pytest.raises(ValueError, match="another model"):
        NeuronDashboard(store, model=object())  # type: ignore[arg-type]


# -- other store keys ----------------------------------------------------------------------------------
def test_features_and_residual_keys(llama: wb.Model, tmp_path: Any) -> None:
    torch.manual_seed(0)
    W = torch.randn(llama.d_model, 5)

    def enc(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ W)

    st = wb.scan(llama, CORPUS[:4], tmp_path / "f", sites=["resid_post.0", "resid_post.1"],
                 features={"toy": ("resid_post.0", enc)}, **SCAN)
    d = NeuronDashboard(st, site="toy", unit=4)
    assert d.layer == -1 and d.lane == [{"key": "toy", "layer": -1, "width": 5}] and not d.editable
    r = d.call("neuron")
    assert r["info"] is None and r["state"]["layer"] == -1
    for got, e in zip(r["exemplars"], st.exemplars("toy", 4, n=8), strict=True):
        same_exemplar(got, e)
    d.next()
    assert (d.site, d.unit) == ("toy", 0), "a key without layers wraps on itself"
    with pytest.raises(ValueError, match="feature"):
        d.call("edit", mode="ablate", prompt=PROMPT)

    assert NeuronDashboard(st, layer=1, unit=6).site == "resid_post.1", "a bare layer: the store's family"
    d.go(site="resid_post.1", unit=6)
    assert d.layer == 1 and d.editable and [e["key"] for e in d.lane] == ["resid_post.0", "resid_post.1"]
    r = d.call("edit", mode="ablate", prompt=PROMPT)
    spec = wb.Edit("resid_post.1", [6], "zero")
    assert r["intervention"] == spec.to_dict()
    assert r["predictions"]["edit"] == llama.run(PROMPT, [spec], top_k=10).top.as_rows(0)
    d.go(layer=0, unit=1)
    assert d.site == "resid_post.0", "a layer of the current family"
    with pytest.raises(IndexError, match="resid_post at layers 0..1"):
        d.go(layer=3, unit=0)

    # reopened without the encoder: statistics still show, the exemplars say why they are missing
    r = NeuronDashboard(ScanStore.open(st.path, llama), site="toy", unit=1).call("neuron")
    assert "transform" in r["exemplar_error"] and r["exemplars"] == []
    assert r["stats"]["count"] == st.unit_stats("toy", 1)["count"]


def test_explanations_from_the_store_are_shown_best_first(llama: wb.Model, tmp_path: Any) -> None:
    from workbench.autointerp import Explanation, ExplanationStore, Score

    st = wb.scan(llama, CORPUS, tmp_path / "s", **SCAN)
    d = NeuronDashboard(st, layer=1, unit=3)
    assert d.summary("neurons.1", 1, 3)["explanations"] == []
    ex = ExplanationStore.for_store(st)
    ex.add(Explanation(("neurons.1", 3), "weak <img src=x onerror=alert(1)>", "openai",
                       {"detection": Score("detection", 0.55, 0.4, 0.7, 20)}), save=False)
    ex.add(Explanation(("neurons.1", 3), "strong", "delphi", {"detection": Score("detection", 0.9, 0.8, 0.97, 20)}),
           save=False)
    ex.add(Explanation(("neurons.1", 4), "another unit", "openai"), save=False)
    ex.save()
    got = d.summary("neurons.1", 1, 3)["explanations"]
    assert [e["text"] for e in got] == ["strong", "weak <img src=x onerror=alert(1)>"]
    assert got[0]["scores"]["detection"] == {"value": 0.9, "lo": 0.8, "hi": 0.97}
    (tmp_path / "s" / "explanations.json").write_text("{broken")
    assert "cannot be read" in d.summary("neurons.1", 1, 3)["explanations"][0]["text"]
