"""AttributionGraph in JupyterLab on a tiny random Llama with a random transcoder set: the graph draws,
moving the node threshold slider makes the kernel re-prune (the node count shown changes), shift-click
and the pin button pin nodes (``widget.pinned`` and ``graph.pinned`` in Python), an intervention on one
feature reruns the real model (the predictions shown change), a supernode and a streamed generation
with the edit reach Python, and export writes the JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, write_notebook

pytestmark = pytest.mark.browser

TIMEOUT = 120

SETUP = """\
import torch
from workbench.testing import tiny_model
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.transcoders import TranscoderSet
from workbench.graphs import attribute
from workbench.widgets import AttributionGraph

model = tiny_model("llama", n_layers=3)
gen = torch.Generator().manual_seed(0)
d = model.arch.d_model
tset = TranscoderSet({L: Dictionary(torch.randn(d, 64, generator=gen) / d**0.5, torch.randn(64, generator=gen) * 0.1,
                                    torch.randn(64, d, generator=gen) / 8, torch.randn(d, generator=gen) * 0.1,
                                    "relu", f"mlp_in.{L}", f"mlp_out.{L}") for L in (0, 2)})
g = attribute(model, "The <b>fox</b>", tset, batch_size=32, progress=False)
"""
CELLS = [SETUP, "w = AttributionGraph(g)\nw"]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    if not (REPO / "widgets" / "static" / "attribution.js").exists():
        pytest.fail("widgets/static/attribution.js is missing: run `cd js && npm install && node build.mjs`")
    write_notebook(lab.root / "attribution.ipynb", CELLS)
    page = open_and_run(lab, browser, "attribution.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def kernel_ok(nb: NotebookPage, code: str, tag: str) -> None:
    nb.execute(f"{code}\nprint({tag!r})")
    out = nb.cell_output(-1).inner_text()
    assert tag in out, out


def test_threshold_pin_intervene_export(nb: NotebookPage, lab) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    root = nb.widget(".iw-attribution")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.get_attribute("data-rendered") == "true"
    n0 = int(root.get_attribute("data-nodes"))
    assert root.locator("[data-testid=node]").count() == n0 > 0
    kernel_ok(nb, f"assert g.prune(0.8, 0.98).n_nodes == {n0}", "count ok")
    # token text is text: the prompt's markup shows as characters, no element is made of it
    labels = "".join(root.locator("[data-testid=token-label]").all_text_contents())
    assert "<b>" in labels and root.locator("svg b, .ag-main b").count() == 0

    # move the node threshold slider: the kernel re-prunes, the count shown changes
    slider = root.locator("[data-testid=node-threshold]")
    box = slider.bounding_box()
    nb.page.mouse.click(box["x"] + box["width"] * 0.93, box["y"] + box["height"] / 2)
    nb.page.wait_for_function("([el, n]) => el.dataset.rendered === 'true' && Number(el.dataset.nodes) !== n",
                              arg=[root.element_handle(), n0], timeout=TIMEOUT * 1000)
    n1 = int(root.get_attribute("data-nodes"))
    assert n1 > n0 and root.locator("[data-testid=node]").count() == n1
    assert root.locator("[data-testid=counts]").get_attribute("data-nodes") == str(n1)
    kernel_ok(nb, f"assert w.node_threshold > 0.85 and g.prune(w.node_threshold, w.edge_threshold).n_nodes == {n1}, "
                  "w.node_threshold", "prune ok")

    # pin: shift-click one feature, then select another and press "pin / unpin"
    feats = root.locator("[data-testid=node][data-kind=feature]")
    assert feats.count() >= 2
    a, b = feats.nth(0).get_attribute("data-node"), feats.nth(1).get_attribute("data-node")
    feats.nth(0).click(modifiers=["Shift"], force=True)
    pins = root.locator("[data-testid=pins]")
    nb.page.wait_for_function("(el) => el.dataset.count === '1'", arg=pins.element_handle(), timeout=TIMEOUT * 1000)
    feats.nth(1).click(force=True)
    nb.page.wait_for_function("(el) => el.dataset.count === '1'", arg=root.locator("[data-testid=selection]").element_handle(),
                              timeout=TIMEOUT * 1000)
    root.locator("[data-testid=pin-selected]").click()
    nb.page.wait_for_function("(el) => el.dataset.count === '2'", arg=pins.element_handle(), timeout=TIMEOUT * 1000)
    assert "ag-pin" in feats.nth(0).get_attribute("class")
    kernel_ok(nb, f"assert w.pinned == g.pinned == sorted([{a!r}, {b!r}]), (w.pinned, g.pinned)\n"
                  f"assert w.selected == [{b!r}], w.selected", "pins ok")

    # intervene on the selected feature (scale ×-20): the real model reruns, the predictions change
    n_runs = int(root.get_attribute("data-run-count"))
    root.locator("[data-testid=op]").select_option("scale")
    root.locator("[data-testid=factor]").fill("-20")
    root.locator("[data-testid=intervene]").click()
    res = root.locator("[data-testid=intervention][data-state=done]")
    res.wait_for(timeout=TIMEOUT * 1000)
    assert int(root.get_attribute("data-run-count")) > n_runs
    before = root.locator("[data-testid=before-row]").evaluate_all("rs => rs.map(r => [r.dataset.token, Number(r.dataset.p)])")
    after = root.locator("[data-testid=after-row]").evaluate_all("rs => rs.map(r => [r.dataset.token, Number(r.dataset.p)])")
    assert len(before) == len(after) == 5 and before != after
    rows = root.locator("[data-testid=logit-row]").evaluate_all(
        "rs => rs.map(r => [Number(r.dataset.measured), Number(r.dataset.predicted)])")
    assert len(rows) == 10 and max(abs(m) for m, _ in rows) > 0
    kernel_ok(nb, f"r = w.last_intervention\nassert r.nodes == {{{b!r}: -20.0}}, r.nodes\n"
                  f"assert [t for t, _ in r.after] == {[t for t, _ in after]!r}", "intervene ok")

    # group the selected node into a supernode; generate with the edit (streamed)
    root.locator("[data-testid=group-label]").fill("my group")
    root.locator("[data-testid=group]").click()
    root.locator("[data-testid=supernode][data-label='my group']").wait_for(timeout=TIMEOUT * 1000)
    root.locator("[data-testid=generate]").click()
    gen = root.locator("[data-testid=generated][data-state=done]")
    gen.wait_for(timeout=TIMEOUT * 1000)
    kernel_ok(nb, f"assert w.supernodes == g.supernodes == [['my group', {b!r}]], g.supernodes\n"
                  f"assert w.generated == {gen.text_content()!r}, w.generated", "group ok")

    # export: the file exists, with the pins and the supernode in its qParams
    root.locator("[data-testid=export-path]").fill("attr_export.json")
    root.locator("[data-testid=export]").click()
    nb.page.wait_for_function("(el) => !!el.dataset.path", arg=root.locator("[data-testid=export-result]").element_handle(),
                              timeout=TIMEOUT * 1000)
    out = lab.root / "attr_export.json"
    assert out.exists()
    q = json.loads(out.read_text())["qParams"]
    assert sorted(q["pinnedIds"]) == sorted([a, b]) and q["supernodes"] == [["my group", b]]
    assert root.locator(".iw-error").count() == 0
    nb.screenshot("attribution-graph", root)
