"""NeuronDashboard in JupyterLab: tinted exemplars, next / go / wrapping, Ablate, errors, no XSS.

A tiny random model scans a few short passages (each ending in an ``<img onerror>`` payload)
into a temp folder, and ``store.show(layer=1, unit=3)`` opens the dashboard.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, run_count, write_notebook

pytestmark = pytest.mark.browser
TIMEOUT = 120
EVIL = '<img src=x onerror="window.__xss=1">'

CELLS = [
    f"""\
import tempfile
import workbench as wb
from workbench.core.corpus import default_corpus
from workbench.testing import tiny_model
import workbench.widgets

model = tiny_model('llama')
EVIL = {EVIL!r}
texts = [f"{{p[:80]}} {{EVIL}}" for p in default_corpus(max_passages=16)]
store = wb.scan(model, texts, tempfile.mkdtemp() + '/scan', k=4, window=256, batch_size=4, sample=8, progress=False)
store""",
    "dash = store.show(layer=1, unit=3)\ndash",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    if not (REPO / "widgets" / "static" / "neuron-dashboard.js").exists():
        pytest.fail("widgets/static/neuron-dashboard.js is missing: run `cd js && node build.mjs`")
    write_notebook(lab.root / "neuron_dashboard.ipynb", CELLS)
    page = open_and_run(lab, browser, "neuron_dashboard.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def acts(row) -> list[float]:
    return [float(a) for a in row.locator(".iw-tok").evaluate_all("els => els.map(e => e.dataset.act)")]


def test_dashboard_end_to_end(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    page = nb.page
    root = nb.widget(".iw-neuron-dashboard")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator(".iw-error").count() == 0
    assert (root.get_attribute("data-layer"), root.get_attribute("data-unit")) == ("1", "3")
    title = root.locator("[data-role=title]")
    assert title.inner_text() == "Layer 1 · neuron 3"

    # exemplars: every token tinted by its activation, the maximum outlined, markup stays text
    rows = root.locator("[data-role=top-exemplars] .iw-exemplar")
    assert rows.count() == 4
    first = rows.first
    toks = first.locator(".iw-tok")
    assert toks.count() > 5 and all(t.get_attribute("data-act") for t in toks.all())
    best = first.locator(".iw-tok[data-max=true]")
    assert best.count() == 1
    assert float(best.get_attribute("data-act")) == pytest.approx(float(first.get_attribute("data-value")), rel=1e-5)
    bg = best.evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), bg
    assert best.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    tip = best.get_attribute("title")
    assert float(tip.rsplit(": ", 1)[1]) == pytest.approx(float(best.get_attribute("data-act")), rel=1e-3, abs=1e-3)
    text = "".join(toks.all_text_contents())
    assert text.endswith(EVIL), text
    page.wait_for_timeout(500)  # time for an injected onerror handler to fire
    assert page.evaluate("() => window.__xss") is None
    assert root.locator("img, script").count() == 0
    assert root.locator("[data-role=quantile-group]").count() >= 2
    assert root.locator("[data-role=quantile-group] .iw-exemplar").count() >= 4

    # histogram, statistics, weights
    bars = root.locator("[data-role=histogram] rect[data-count]")
    assert bars.count() >= 3 and sum(float(c) for c in bars.evaluate_all("els => els.map(e => e.dataset.count)")) > 0
    assert root.locator("[data-role=histogram] [data-role=zero-mark]").count() == 1
    assert root.locator("[data-role=stats] tr[data-stat]").count() == 7
    assert root.locator("[data-role=promoted] tr[data-token]").count() == 10
    assert root.locator("[data-role=suppressed] tr[data-token]").count() == 10
    assert "io class" in root.locator("[data-role=class]").inner_text()
    nb.screenshot("neuron-dashboard", root)

    # next: the title, unit and exemplars change, and Python sees the new unit
    acts0 = acts(first)
    n0 = run_count(root)
    root.locator("[data-action=next]").click()
    nb.wait_run_count(root, n0, timeout=TIMEOUT)
    assert title.inner_text() == "Layer 1 · neuron 4" and root.get_attribute("data-unit") == "4"
    assert acts(rows.first) != acts0
    nb.execute("print('SHOWN', dash.site, dash.layer, dash.unit)")
    assert "SHOWN neurons.1 1 4" in nb.cell_output(-1).inner_text()

    # Ablate reruns the prompt: baseline vs edited predictions and continuations
    root.locator("[data-role=prompt]").fill("The capital of France is")
    n1 = run_count(root)
    root.locator("[data-action=ablate]").click()
    nb.wait_run_count(root, n1, timeout=TIMEOUT)
    assert root.locator("[data-role=edit-errors] .iw-error").count() == 0
    assert root.get_attribute("data-edit-mode") == "ablate"
    pred = root.locator("[data-role=predictions] [data-role=pred-row]")
    assert pred.count() >= 10
    pairs = pred.evaluate_all("els => els.map(e => [e.dataset.pBase, e.dataset.pEdit])")
    assert any(a != b for a, b in pairs), "zeroing the neuron changes some probability"
    assert root.locator("[data-role=gen-base]").inner_text().strip() != ""
    assert root.locator("[data-role=gen-edit]").inner_text().strip() != ""
    assert "neurons.1[4]" in root.locator("[data-role=edit-status]").inner_text()
    nb.execute("print('PROMPT', dash.prompt)")
    assert "PROMPT The capital of France is" in nb.cell_output(-1).inner_text()
    nb.screenshot("neuron-dashboard-ablate", root)

    # go to the last unit of layer 0, then next wraps to unit 0 of layer 1
    root.locator("[data-role=layer-input]").fill("0")
    root.locator("[data-role=unit-input]").fill("95")
    n2 = run_count(root)
    root.locator("[data-action=go]").click()
    nb.wait_run_count(root, n2, timeout=TIMEOUT)
    assert title.inner_text() == "Layer 0 · neuron 95"
    assert root.locator("[data-role=pred-row]").count() == 0, "the edit of another neuron is cleared"
    n3 = run_count(root)
    root.locator("[data-action=next]").click()
    nb.wait_run_count(root, n3, timeout=TIMEOUT)
    assert (root.get_attribute("data-layer"), root.get_attribute("data-unit")) == ("1", "0")

    # a bad index shows an error box and leaves the view where it was
    root.locator("[data-role=unit-input]").fill("9999")
    root.locator("[data-action=go]").click()
    err = root.locator("[data-role=errors] .iw-error")
    err.wait_for(timeout=TIMEOUT * 1000)
    assert "out of range" in err.inner_text()
    assert root.get_attribute("data-unit") == "0"
    nb.screenshot("neuron-dashboard-error", root)

    # Python moves the view too
    n4 = run_count(root)
    nb.execute("dash.go(layer=0, unit=5)")
    nb.wait_run_count(root, n4, timeout=TIMEOUT)
    assert (root.get_attribute("data-layer"), root.get_attribute("data-unit")) == ("0", "5")
    assert root.locator("[data-role=errors] .iw-error").count() == 0
    assert page.evaluate("() => window.__xss") is None
