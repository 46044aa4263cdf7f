"""CircuitGraph in JupyterLab on a tiny random Llama: the graph draws (edges coloured by sign,
sized by magnitude), dragging the slider reruns faithfulness in the kernel, clicking an edge shows
its exact patch beside the estimate, clicking a head opens its attention pattern (AttentionHeads)
below the graph, clicking an MLP lists its top neurons, pins reach Python as ``widget.circuit``,
and the SVG export arrives in the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, write_notebook

pytestmark = pytest.mark.browser

TIMEOUT = 120

SETUP = """\
import torch
from workbench.testing import tiny_model
from workbench.circuits import faithfulness, patch_edges
from workbench.circuits.tasks import make_task
from workbench.widgets.circuit import CircuitGraph
import workbench.circuits as C

model = tiny_model("llama")
task = make_task(model, ["The cat sat on the mat", "The cat sat on a mat"], ["A dog is on a mat", "A dog is on the mat"],
                 [" the", " the"], [" a", " a"], name="toy")
scores = C.eap(model, task)
"""
CELLS = [
    SETUP,
    "w = CircuitGraph(model, scores, k=10)\nw",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    if not (REPO / "widgets" / "static" / "circuit.js").exists():
        pytest.fail("widgets/static/circuit.js is missing: run `cd js && npm install && node build.mjs`")
    write_notebook(lab.root / "circuit.ipynb", CELLS)
    page = open_and_run(lab, browser, "circuit.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def faith_value(root) -> tuple[float, int]:
    f = root.locator("[data-testid=faithfulness][data-state=done]")
    f.wait_for(timeout=TIMEOUT * 1000)
    return float(f.get_attribute("data-value")), int(f.get_attribute("data-k"))


def test_graph_draws_and_slider_reruns_faithfulness(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    root = nb.widget(".iw-circuit")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.get_attribute("data-rendered") == "true"
    nodes = root.locator("circle[data-testid=node]")
    assert nodes.count() == 16  # embed, 2 × (4 heads + 2 kv inputs + MLP), logits
    edges = root.locator("path[data-testid=edge]")
    assert edges.count() == 10 and root.get_attribute("data-drawn") == "10"
    # colour is the sign, width the magnitude
    ws = edges.evaluate_all("els => els.map(e => [Number(e.dataset.weight), e.getAttribute('stroke'), Number(e.getAttribute('stroke-width'))])")
    for w, stroke, _ in ws:
        assert stroke == ("rgb(40,95,225)" if w > 0 else "rgb(225,65,55)"), (w, stroke)
    by_mag = sorted(ws, key=lambda t: abs(t[0]))
    assert by_mag[-1][2] > by_mag[0][2]
    # the first faithfulness comes for k = 10, computed in the kernel
    f10, k10 = faith_value(root)
    assert k10 == 10
    nb.execute(f"from workbench.circuits import faithfulness\n"
               f"assert abs(faithfulness(model, task, w.top_circuit(10)) - {f10!r}) < 1e-6\nprint('f10 ok')")
    assert "f10 ok" in nb.cell_output(-1).inner_text()
    # drag the slider to the far right: every edge kept, faithfulness 1 (the full model)
    n0 = int(root.get_attribute("data-run-count"))
    slider = root.locator("[data-testid=edge-slider]")
    box = slider.bounding_box()
    nb.page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    nb.page.mouse.down()
    nb.page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2, steps=5)
    nb.page.mouse.move(box["x"] + box["width"] + 20, box["y"] + box["height"] / 2, steps=5)
    nb.page.mouse.up()
    nb.page.wait_for_function("(el) => el.dataset.k === '68'", arg=root.element_handle(), timeout=TIMEOUT * 1000)
    root.locator("[data-testid=faithfulness][data-state=done][data-k='68']").wait_for(timeout=TIMEOUT * 1000)
    f_all, _ = faith_value(root)
    assert f_all == pytest.approx(1.0, abs=1e-4)
    assert f_all != pytest.approx(f10, abs=1e-6)
    assert int(root.get_attribute("data-run-count")) > n0
    assert edges.count() == 68
    nb.execute("assert w.k == 68 and abs(w.last_faithfulness - 1) < 1e-4, (w.k, w.last_faithfulness)\nprint('k ok')")
    assert "k ok" in nb.cell_output(-1).inner_text()
    nb.screenshot("circuit-graph", root)


def test_click_edge_shows_estimate_and_exact(nb: NotebookPage) -> None:
    root = nb.widget(".iw-circuit")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    top = root.locator("path[data-testid=edge][data-rank='0']")
    name, eid = top.get_attribute("data-name"), int(top.get_attribute("data-eid"))
    top.click()
    exact = root.locator("[data-testid=edge-exact][data-state=done]")
    exact.wait_for(timeout=TIMEOUT * 1000)
    est = float(root.locator("[data-testid=edge-estimated]").get_attribute("data-value"))
    got = float(exact.get_attribute("data-value"))
    assert root.locator("[data-testid=edge-detail] h4").inner_text() == f"edge {name}"
    assert top.get_attribute("class").count("cg-sel") == 1
    # the kernel's number is the engine's exact patch of that edge alone, minus the clean metric
    nb.execute(f"from workbench.circuits import patch_edges\n"
               f"v = patch_edges(model, task, [[{name!r}], []]).double().reshape(2, -1).mean(-1)\n"
               f"assert abs((v[0] - v[1]).item() - {got!r}) < 1e-4, (v, {got!r})\n"
               f"assert abs(scores.scores[{eid}].item() - {est!r}) < 1e-5\nprint('exact ok')")
    assert "exact ok" in nb.cell_output(-1).inner_text(), nb.cell_output(-1).inner_text()
    # pin it: Python sees it as widget.circuit
    root.locator("[data-testid=edge-detail] [data-testid=pin]").click()
    nb.execute(f"assert w.circuit.edges == [{name!r}], w.circuit\nprint('pin ok')")
    assert "pin ok" in nb.cell_output(-1).inner_text()
    assert "cg-pinned" in top.get_attribute("class")
    nb.screenshot("circuit-edge", root)


def test_click_head_opens_its_attention_pattern(nb: NotebookPage) -> None:
    root = nb.widget(".iw-circuit")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    root.locator("circle[data-testid=node][data-node='a1.h2']").click(force=True)
    att = nb.page.locator(".jp-OutputArea-output .iw-attention")
    att.first.wait_for(timeout=TIMEOUT * 1000)
    nb.page.wait_for_function("(el) => el.dataset.rendered === 'true'", arg=att.first.element_handle(),
                              timeout=TIMEOUT * 1000)
    assert att.first.locator("[data-testid=head-thumb]").count() == 4  # layer 1's heads
    assert att.first.locator("[data-testid=head-detail]").is_visible()
    assert "1" in att.first.locator("[data-testid=detail-title]").inner_text()
    toks = "".join(att.first.locator("[data-testid=tokens] .iw-tok").all_text_contents())
    assert "cat sat on the mat" in toks
    assert "opened below" in root.locator("[data-testid=node-detail]").inner_text()
    nb.screenshot("circuit-head", att.first)


def test_click_mlp_lists_top_neurons(nb: NotebookPage) -> None:
    root = nb.widget(".iw-circuit")
    root.locator("circle[data-testid=node][data-node='m1']").click(force=True)
    rows = root.locator("[data-testid=neuron-row]")
    rows.first.wait_for(timeout=TIMEOUT * 1000)
    assert rows.count() == 10
    first = int(rows.first.get_attribute("data-neuron"))
    nb.execute(f"r = w.top_neurons(1)\nassert int(r['neurons'][0]) == {first}\nprint('neurons ok')")
    assert "neurons ok" in nb.cell_output(-1).inner_text()


def test_svg_export_reaches_the_kernel(nb: NotebookPage) -> None:
    root = nb.widget(".iw-circuit")
    with nb.page.expect_download() as dl:
        root.locator("[data-testid=export-svg]").click()
    assert dl.value.suggested_filename == "circuit.svg"
    nb.page.wait_for_timeout(500)
    nb.execute("assert w.svg.startswith('<svg') and w.svg.count('<path') >= 10, len(w.svg)\nprint('svg ok')")
    assert "svg ok" in nb.cell_output(-1).inner_text()
    with nb.page.expect_download() as dl:
        root.locator("[data-testid=export-png]").click()
    assert dl.value.suggested_filename == "circuit.png"
    assert root.locator("script, img").count() == 0
