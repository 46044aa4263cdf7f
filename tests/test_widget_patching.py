"""PatchingHeatmap on tiny models: binary payloads, cell replay, clean/corrupted predictions, errors."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.causal.patching import PatchingResult, activation_patching, attribution_patching
from workbench.widgets._transport import pack
from workbench.widgets.patching import PatchingHeatmap

CLEAN = "The cat sat on the mat"  # 9 tokens with the tiny tokenizer
CORRUPT = "A dog is on a mat"  # 9 tokens
KW = dict(answer=" the", wrong=" a", progress=False)


@pytest.fixture(scope="module")
def llama(tiny: Callable[..., wb.Model]) -> wb.Model:
    return tiny("llama")


@pytest.fixture(scope="module")
def sweeps(llama: wb.Model) -> tuple[PatchingResult, PatchingResult]:
    return activation_patching(llama, CLEAN, CORRUPT, **KW), attribution_patching(llama, CLEAN, CORRUPT, **KW)


def assert_pred(pred: dict, run: wb.RunResult) -> None:
    assert pred["tokens"] == list(run.top.tokens[0])
    np.testing.assert_array_equal(np.asarray(pred["ids"]), run.top.ids[0].numpy())
    np.testing.assert_allclose(pred["probs"], run.top.probs[0].numpy(), rtol=1e-5, atol=1e-7)


def buffers_only(reply: dict) -> tuple[dict, list]:
    """Pack a reply as the kernel sends it; assert no float/int list leaked into the JSON."""
    body, buffers = pack(reply)

    def walk(x: object) -> None:
        if isinstance(x, list):
            assert not (x and all(isinstance(v, float) for v in x)), f"numeric list sent as JSON: {x[:5]}"
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(body)
    return body, buffers


def test_heatmap_payload_is_binary(llama: wb.Model, sweeps) -> None:
    exact, attr = sweeps
    w = PatchingHeatmap(llama, exact, attr)
    assert w.methods == ["exact", "attribution"] and w.method == "exact" and w.selected == []
    r = w.call("heatmap")
    body, buffers = buffers_only(r)
    assert [g["method"] for g in r["grids"]] == ["exact", "attribution"]
    g = body["grids"][0]
    assert g["values"]["dtype"] == "float32" and g["values"]["shape"] == [2, 9]
    assert g["layers"]["dtype"] == "int32" and g["columns"]["dtype"] == "int32"
    assert body["predictions"]["clean"]["probs"]["dtype"] == "float32"
    assert len(buffers) >= 2 * 4 + 2 * 3
    np.testing.assert_allclose(r["grids"][0]["values"], exact.values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(r["grids"][1]["values"], attr.values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(r["grids"][1]["raw"], attr.raw.numpy(), rtol=1e-6)
    assert r["tokens"] == exact.tokens and r["column_kind"] == "position"
    assert r["metric"] == "logit_diff" and r["clean_metric"] == pytest.approx(exact.clean_metric)
    # the attribution heatmap really differs from the exact one (the toggle changes colours)
    assert not np.allclose(r["grids"][0]["values"], r["grids"][1]["values"])


def test_clean_and_corrupted_predictions_match_direct_runs(llama: wb.Model, sweeps) -> None:
    exact, _ = sweeps
    w = PatchingHeatmap(llama, exact, top_k=7)
    r = w.call("heatmap")
    assert_pred(r["predictions"]["clean"], llama.run(CLEAN, top_k=7))
    assert_pred(r["predictions"]["corrupted"], llama.run(CORRUPT, top_k=7))
    assert w.methods == ["exact"]


@pytest.mark.parametrize("cell", [(0, 2), (1, 8), (1, 0)])
def test_apply_cell_equals_direct_patched_run(llama: wb.Model, sweeps, cell: tuple[int, int]) -> None:
    exact, attr = sweeps
    w = PatchingHeatmap(llama, exact, attr)
    layer, col = cell
    r = w.call("apply", layer=layer, col=col)
    specs = exact.base_specs + exact.cell_specs(layer, col)
    direct = llama.run(exact.base_prompt, specs, top_k=10)
    assert_pred(r["predictions"]["patched"], direct)
    assert_pred(r["predictions"]["clean"], llama.run(CLEAN))
    assert_pred(r["predictions"]["corrupted"], llama.run(CORRUPT))
    assert [wb.core.spec_from_dict(d) for d in r["specs"]] == exact.cell_specs(layer, col)
    # the patched run's metric is the sweep's value for that cell
    i, j = exact.layers.index(layer), exact.columns.index(col)
    assert r["metric"]["patched"] == pytest.approx(float(exact.raw[i, j]), abs=1e-4)
    assert r["metric"]["normalized"] == pytest.approx(float(exact.values[i, j]), abs=1e-4)
    assert r["sweep"]["exact"] == pytest.approx(float(exact.values[i, j]))
    assert r["sweep"]["attribution"] == pytest.approx(float(attr.values[i, j]))
    body, _ = buffers_only(r)
    assert body["predictions"]["patched"]["probs"]["dtype"] == "float32"


def test_final_position_last_layer_restores_clean(llama: wb.Model, sweeps) -> None:
    exact, _ = sweeps
    w = PatchingHeatmap(llama, exact)
    r = w.apply(1, 8)  # resid_post of the last layer at the last position = the clean run
    assert w.selected == [1, 8]
    assert w.selected_specs == exact.cell_specs(1, 8)
    assert r["metric"]["normalized"] == pytest.approx(1.0, abs=1e-4)
    assert [p for p in r["predictions"]["patched"]["tokens"]] == r["predictions"]["clean"]["tokens"]


def test_noise_corruption_and_heads(llama: wb.Model) -> None:
    res = activation_patching(llama, CLEAN, noise=3.0, subject=" cat", site="z", seed=1, **KW)
    w = PatchingHeatmap(llama, res)
    r = w.call("heatmap")
    assert r["column_kind"] == "head" and r["grids"][0]["values"].shape == (2, llama.arch.n_heads)
    assert_pred(r["predictions"]["corrupted"], llama.run(CLEAN, res.base_specs))
    a = w.call("apply", layer=0, col=3)
    assert_pred(a["predictions"]["patched"], llama.run(CLEAN, res.base_specs + res.cell_specs(0, 3)))
    assert a["metric"]["normalized"] == pytest.approx(float(res.values[0, 3]), abs=1e-4)


def test_noising_direction(llama: wb.Model) -> None:
    res = activation_patching(llama, CLEAN, CORRUPT, direction="noising", metric="prob", layers=[1], **KW)
    w = PatchingHeatmap(llama, res)
    r = w.call("heatmap")
    assert_pred(r["predictions"]["clean"], llama.run(CLEAN))
    assert_pred(r["predictions"]["corrupted"], llama.run(CORRUPT))
    a = w.call("apply", layer=1, col=4)
    assert_pred(a["predictions"]["patched"], llama.run(CLEAN, res.cell_specs(1, 4)))
    assert a["metric"]["patched"] == pytest.approx(float(res.raw[0, 4]), abs=1e-5)


def test_bad_cell_gives_clear_errors(llama: wb.Model, sweeps) -> None:
    exact, _ = sweeps
    w = PatchingHeatmap(llama, exact)
    with pytest.raises(IndexError, match="layer 5 is not in this sweep"):
        w.call("apply", layer=5, col=0)
    with pytest.raises(IndexError, match="position 42 is not in this sweep"):
        w.call("apply", layer=0, col=42)
    with pytest.raises(ValueError, match="two integers"):
        w.call("apply", layer="x", col=0)
    # through the message path, the browser gets an error reply (not an exception in the kernel)
    sent: list[dict] = []
    w.send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    w._on_custom(w, {"type": "request", "id": 7, "method": "apply", "params": {"layer": 9, "col": 0}}, [])
    for _ in range(200):
        if sent:
            break
        time.sleep(0.01)
    assert sent and sent[0]["id"] == 7 and "error" in sent[0]
    assert "layer 9 is not in this sweep" in sent[0]["error"]["message"]
    assert sent[0]["error"]["kind"] == "IndexError"


def test_constructor_checks_and_show(llama: wb.Model, sweeps) -> None:
    exact, attr = sweeps
    with pytest.raises(ValueError, match="both results"):
        PatchingHeatmap(llama, exact, exact)
    other = activation_patching(llama, CLEAN, CORRUPT, site="mlp_out", **KW)
    with pytest.raises(ValueError, match="different sweep"):
        PatchingHeatmap(llama, other, attr)
    import workbench.widgets  # noqa: F401  (registers the viewer)

    w = exact.show(model=llama)
    assert isinstance(w, PatchingHeatmap)
    assert exact.model is llama and isinstance(exact.show(), PatchingHeatmap)  # the result carries its model
    detached = dataclasses.replace(exact, model=None)
    with pytest.raises(ValueError, match="needs the model"):
        detached.show()
    only_attr = PatchingHeatmap(llama, attr)
    assert only_attr.methods == ["attribution"] and only_attr.method == "attribution"


def test_run_convenience_computes_both(llama: wb.Model, sweeps) -> None:
    exact, attr = sweeps
    w = PatchingHeatmap.run(llama, CLEAN, CORRUPT, **KW)
    assert w.methods == ["exact", "attribution"]
    torch.testing.assert_close(w.results["exact"].values, exact.values)
    torch.testing.assert_close(w.results["attribution"].values, attr.values)
    assert PatchingHeatmap.run(llama, CLEAN, CORRUPT, attribution=False, **KW).methods == ["exact"]


# -- IIAHeatmap: a DAS sweep on the same view ------------------------------------------------------
BASE, SOURCE = "The cat sat on the mat", "The mat sat on the cat"  # 9 tokens each


@pytest.fixture(scope="module")
def das(llama: wb.Model):
    from workbench.causal.das import das_sweep

    pairs = [(BASE, SOURCE, " the", " a"), (SOURCE, BASE, " a", " the")] * 4
    return das_sweep(llama, ["resid_post.0", "resid_post.1"], [2, -1], pairs, k=[1, 2], steps=4, lr=5e-2,
                     progress=False)


def hook_interchange(model: wb.Model, layer: int, pos: int, basis: torch.Tensor) -> torch.Tensor:
    """The reference by hand: the base run with ``h[pos] += ((h_src - h) @ B.T) @ B`` at decoder layer ``layer``."""
    hf, block = model.hf, model.hf.model.layers[layer]
    ids = {p: model.tokenizer(p, return_tensors="pt")["input_ids"] for p in (BASE, SOURCE)}
    rec = {}

    def grab(_m, _a, out):
        rec["h"] = (out[0] if isinstance(out, tuple) else out)[0, pos].detach().clone()

    def put(_m, _a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, pos] += ((rec["h"] - h[0, pos]) @ basis.T) @ basis
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for fn, p in ((grab, SOURCE), (put, BASE)):
        hd = block.register_forward_hook(fn)
        try:
            with torch.no_grad():
                logits = hf(input_ids=ids[p]).logits[0, -1]
        finally:
            hd.remove()
    return logits


def test_iia_heatmap_shows_the_sweep_and_replays_a_cell(llama: wb.Model, das) -> None:
    from workbench.widgets import IIAHeatmap

    w = das.show(llama, (BASE, SOURCE, " the", " a"), top_k=5)
    assert isinstance(w, IIAHeatmap) and w.methods == ["k=1", "k=2"] and w.method == "k=1"
    n = len(llama.tokenize(BASE).tokens[0])
    body, buffers = buffers_only(w.call("heatmap"))
    assert buffers and body["names"] == {"clean": "source", "corrupted": "base"}
    assert body["row_labels"] == ["resid_post.0", "resid_post.1"]
    r = w.call("heatmap")
    for grid, k in zip(r["grids"], [1, 2], strict=True):
        np.testing.assert_array_equal(grid["values"], das.grid(k).numpy())
        np.testing.assert_array_equal(grid["columns"], [2, n - 1])  # -1 shown at its token
        np.testing.assert_array_equal(grid["layers"], [0, 1])
    assert_pred(r["predictions"]["corrupted"], llama.run(BASE, top_k=5))
    assert_pred(r["predictions"]["clean"], llama.run(SOURCE, top_k=5))
    for k in (1, 2):
        w.method = f"k={k}"
        a = w.apply(1, n - 1)
        assert w.selected == [1, n - 1] and a["sweep"] == {"k=1": float(das.grid(1)[1, 1]), "k=2": float(das.grid(2)[1, 1])}
        basis = das.results[("resid_post.1", -1, k)].subspace.basis.float()
        ref = hook_interchange(llama, 1, n - 1, basis)
        probs = torch.softmax(ref, -1)
        np.testing.assert_allclose(a["predictions"]["patched"]["probs"], probs.topk(5).values.numpy(), rtol=1e-4, atol=1e-6)
        tid = {t: llama.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" the", " a")}
        assert a["metric"]["patched"] == pytest.approx(float(ref[tid[" a"]] - ref[tid[" the"]]), abs=1e-4)
    assert w.selected_specs[0].kind == "subspace_interchange"
    assert [m for m, _ in w.static_requests()] == ["heatmap", "apply"]
    with pytest.raises(IndexError, match="position 5 is not in this sweep"):
        w.apply(0, 5)
    with pytest.raises(IndexError, match="row 7"):
        w.apply(7, 2)
    with pytest.raises(ValueError, match="text prompts"):
        IIAHeatmap(llama, das, ([1, 2], [3, 4], 1, 2))
    with pytest.raises(TypeError, match="DASSweep"):
        IIAHeatmap(llama, object(), (BASE, SOURCE, " the", " a"))
