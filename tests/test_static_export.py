"""Static HTML export: widgets record their first-render replies; the page loads nothing from the network."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _remove_buffers

from workbench.widgets import AttentionHeads, LogitLens, NeuronHeatmap, SteeringPanel
from workbench.widgets._transport import unpack
from workbench.widgets.attention import thumbnails
from workbench.widgets.export import (
    SNAPSHOT_TAG,
    STATE_MIME,
    VIEW_MIME,
    StaticExportError,
    export_html,
    snapshot_widgets,
    static_html,
    strip_remote,
)

PROMPT = "The cat sat on the mat because it"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
REMOTE = re.compile(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)


@pytest.fixture
def llama(tiny):
    return tiny("llama")


def saved_model(widget) -> dict:
    """The widget's model as a notebook saves it: state without buffers, buffers as base64 at their paths."""
    state, paths, buffers = _remove_buffers(widget.get_state())
    json.dumps(state)  # what a notebook stores must be JSON
    return {"model_name": state["_model_name"], "model_module": state["_model_module"],
            "model_module_version": state["_model_module_version"], "state": state,
            "buffers": [{"path": p, "data": base64.b64encode(bytes(b)).decode(), "encoding": "base64"}
                        for p, b in zip(paths, buffers, strict=True)]}


def notebook_with(widgets: list) -> nbformat.NotebookNode:
    """A notebook whose cells display `widgets`, with their saved widget state (as nbclient leaves it)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells.append(nbformat.v4.new_markdown_cell("# Static\n[a link](https://example.com) and $x^2$"))
    for w in widgets:
        out = nbformat.v4.new_output("display_data", data={
            "text/plain": repr(w), VIEW_MIME: {"version_major": 2, "version_minor": 0, "model_id": w.model_id}})
        nb.cells.append(nbformat.v4.new_code_cell("w", outputs=[out]))
    nb.metadata["widgets"] = {STATE_MIME: {"version_major": 2, "version_minor": 0,
                                           "state": {w.model_id: saved_model(w) for w in widgets}}}
    return nb


def test_attention_snapshot_round_trips_its_streamed_replies(llama):
    w = AttentionHeads(llama, PROMPT, selected=[1, 2])
    assert w._static == {}  # nothing is recorded in live use
    w.static_head_bytes = 1  # only the selected head's full pattern
    rec = w.snapshot()["replies"]
    assert [(r["method"], r["params"]) for r in rec] == [
        ("patterns", {"prompt": PROMPT, "layers": [0, 1]}), ("head", {"prompt": PROMPT, "layer": 1, "head": 2})]
    patterns = rec[0]
    assert "error" not in patterns and len(patterns["partials"]) == 2  # one streamed reply per layer
    assert patterns["content"]["tokens"] == w.tokens and len(w.tokens) > 3
    # the saved state keeps every array as a binary buffer (none inlined in the JSON), and they decode back
    saved = saved_model(w)
    paths = [b["path"] for b in saved["buffers"]]
    assert ["_static", "replies", 0, "partials", 1, "buffers", 0] in paths and len(paths) == 3
    restored = json.loads(json.dumps(saved["state"]))["_static"]["replies"]
    for b in saved["buffers"]:
        node = {"_static": {"replies": restored}}
        for key in b["path"][:-1]:
            node = node[key]
        node[b["path"][-1]] = base64.b64decode(b["data"])
    res = w.result
    seq = len(res.tokens[0])
    for L, part in enumerate(restored[0]["partials"]):
        thumbs = unpack(part["content"], part["buffers"])["thumbs"]
        expected = thumbnails(res.activations[f"pattern.{L}"], seq).float().numpy()
        np.testing.assert_array_equal(thumbs.astype(np.float32), expected)
    head = unpack(restored[1]["content"], restored[1]["buffers"])
    assert head["seq"] == seq and head["pattern"].shape == (seq * (seq + 1) // 2,)


def test_attention_keeps_every_small_head_for_the_static_copy(llama):
    w = AttentionHeads(llama, PROMPT, selected=[1, 2])
    rec = w.snapshot()["replies"]
    heads = [(r["params"]["layer"], r["params"]["head"]) for r in rec if r["method"] == "head"]
    assert heads[0] == (1, 2) and sorted(heads) == [(L, h) for L in range(2) for h in range(4)]
    assert all("error" not in r for r in rec)


def test_snapshot_records_failures_and_oversized_replies_as_errors(llama):
    w = AttentionHeads(llama, PROMPT)
    w.prompt = ""
    (rec,) = w.snapshot()["replies"]
    assert rec["error"]["kind"] == "ValueError" and "prompt is empty" in rec["error"]["message"]
    w.prompt = PROMPT
    w.static_max_bytes, w.static_head_bytes = 100, 1
    (rec,) = w.snapshot()["replies"]
    assert "content" not in rec and rec["error"]["message"].startswith("static copy:")


def test_each_widget_records_its_first_render_without_errors(llama):
    panel = SteeringPanel(llama, "I think", max_new_tokens=3).add_direction("d", torch.ones(llama.d_model), layer=0, strength=0.5)
    widgets = [LogitLens(llama, PROMPT, top_k=3), NeuronHeatmap(llama, PROMPT, layer=1, top_n=5), panel]
    widgets[1].selected_neuron = 2
    for w in widgets:
        (rec,) = w.snapshot()["replies"]
        assert "error" not in rec, (type(w).__name__, rec.get("error"))
    assert widgets[1]._static["replies"][0]["content"]["tint"]["neuron"] == 2  # the selected neuron's tint rides along
    assert widgets[2]._static["replies"][0]["params"] == {"strengths": {"d": 0.5}, "prompt": "I think"}
    assert isinstance(widgets[2]._static["replies"][0]["content"]["text"], str)


def test_patching_and_graph_widgets_record_their_follow_up_requests(llama):
    from workbench.causal.patching import activation_patching
    from workbench.widgets import CircuitGraph, PatchingHeatmap

    exact = activation_patching(llama, "The cat sat on the mat", "A dog is on a mat", answer=" the", wrong=" a", progress=False)
    heat = PatchingHeatmap(llama, exact, top_k=4)
    heat.selected = [1, 2]
    rec = heat.snapshot()["replies"]
    assert [(r["method"], r["params"]) for r in rec] == [("heatmap", {"top_k": 4}), ("apply", {"layer": 1, "col": 2, "top_k": 4})]
    assert all("error" not in r for r in rec) and rec[0]["buffers"]  # the grids travel as buffers
    nodes = [{"id": "tok_0", "layer": -1, "kind": "token"}, {"id": "a", "layer": 0}, {"id": "logit", "layer": 2, "kind": "logits"}]
    graph = CircuitGraph.from_graph(nodes, [("tok_0", "a", 0.5), ("a", "logit", -1.5)], k=1)
    (rec,) = graph.snapshot()["replies"]  # no model: no faithfulness request to record
    assert rec["method"] == "graph" and rec["content"]["n_edges"] == 2


def test_snapshot_widgets_records_every_open_widget(llama):
    a, b = AttentionHeads(llama, PROMPT), LogitLens(llama, PROMPT, top_k=2)
    closed = AttentionHeads(llama, PROMPT)
    closed.close()
    assert snapshot_widgets() >= 2
    assert a._static["replies"] and b._static["replies"] and closed._static == {}


def test_static_html_inlines_the_runtime_and_state_and_loads_nothing_remote(llama):
    w = AttentionHeads(llama, PROMPT)
    w.snapshot()
    html = static_html(notebook_with([w]), name="static")
    assert not REMOTE.search(html), REMOTE.search(html)
    assert "require.js" not in html and "html-manager" not in html and "mathjax" not in html.lower().replace("mathjax-", "")
    assert html.count("data-iw-static-runtime") == 1 and "<\\/script" not in html.split("data-iw-static-runtime")[0]
    assert f'"model_id": "{w.model_id}"' in html and STATE_MIME in html
    assert '"_static"' in html and "https://example.com" in html  # a link stays a link


def test_strip_remote_removes_every_fetch():
    html = ('<script src="https://cdn.x/require.js"></script><link rel="stylesheet" href="//fonts.x/a.css">'
            '<img src="http://x/y.png"><style>@import url("https://x/y.css"); a { background: url(https://x/z.png) }</style>'
            '<script src="data:text/javascript,1"></script><a href="https://example.com">ok</a>')
    out = strip_remote(html)
    assert "cdn.x" not in out and "fonts.x" not in out and "x/y.png" not in out and "x/y.css" not in out
    assert "x/z.png" not in out and "data:text/javascript" in out and '<a href="https://example.com">' in out


def test_export_refuses_a_notebook_without_widget_state(tmp_path: Path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells.append(nbformat.v4.new_code_cell("1 + 1"))
    path = tmp_path / "plain.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(StaticExportError, match=r"no saved widget state.*execute=True"):
        export_html(path, execute=False)
    assert not (tmp_path / "plain.html").exists()
    with pytest.raises(FileNotFoundError):
        export_html(tmp_path / "missing.ipynb")


def test_export_html_executes_snapshots_and_drops_the_snapshot_cell(tmp_path: Path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [nbformat.v4.new_code_cell(
        "from workbench.testing import tiny_model\nfrom workbench.widgets import AttentionHeads\n"
        f"w = AttentionHeads(tiny_model('llama'), {PROMPT!r})\nw")]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    out = export_html(path, timeout=300)
    assert out == tmp_path / "tiny.html"
    html = out.read_text()
    assert not REMOTE.search(html) and SNAPSHOT_TAG not in html and "snapshot_widgets" not in html
    state = json.loads(re.search(rf'<script type="{re.escape(STATE_MIME)}">\s*(.*?)\s*</script>', html, re.S).group(1))
    (model,) = [m for m in state["state"].values() if m["model_module"] == "anywidget"]
    rec, *heads = model["state"]["_static"]["replies"]
    assert rec["method"] == "patterns" and len(rec["partials"]) == 2 and rec["content"]["tokens"]
    assert [h["method"] for h in heads] == ["head"] * 8  # 2 layers x 4 heads, each one buffer
    assert len(model["buffers"]) == 2 + 8 and model["state"]["_esm"].strip()
