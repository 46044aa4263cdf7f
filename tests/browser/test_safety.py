"""Markup in prompts stays text (no XSS), and kernel-side errors show up inside the widgets.

Uses the tiny random model (`workbench.testing.tiny_model`), so the notebook runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import NotebookPage, close_notebook, open_and_run, run_count, write_notebook

pytestmark = pytest.mark.browser

IMG = '<img src=x onerror="window.__xss=1">'
SCRIPT = "<script>window.__xss=2</script>"
EVIL = f"Hi {IMG} and {SCRIPT} end"
TIMEOUT = 120

SETUP = f"""\
from IPython.display import display
from workbench.testing import tiny_model
from workbench.widgets import AttentionHeads, NeuronHeatmap, SteeringPanel

model = tiny_model("llama")
EVIL = {EVIL!r}
"""
CELLS = [
    SETUP,
    "att = AttentionHeads(model, EVIL)\natt",
    "heat = NeuronHeatmap(model, EVIL, layer=1, top_n=8)\nheat",
    "panel = SteeringPanel(model, EVIL, max_new_tokens=4)\npanel.add_neuron(0, 3)\npanel",
    "model.run(EVIL, top_k=3)  # the RunResult's own HTML view",
    "bad = NeuronHeatmap(model, 'The cat sat', layer=0, top_n=8)\nbad",
]


@pytest.fixture(scope="module")
def tiny(browser, bundles, lab) -> Iterator[NotebookPage]:
    write_notebook(lab.root / "safety.ipynb", CELLS)
    nb = open_and_run(lab, browser, "safety.ipynb", timeout=300)
    try:
        yield nb
    finally:
        close_notebook(nb)


def joined(locator) -> str:
    return "".join(locator.all_text_contents())


def test_markup_in_prompt_stays_text(tiny: NotebookPage) -> None:
    assert tiny.all_ran and tiny.error_outputs() == []
    page = tiny.page
    att = tiny.widget(".iw-attention")
    heat = tiny.widget(".iw-neurons")
    panel = tiny.widget(".iw-steering")
    for root in (att, heat, panel):
        tiny.wait_run_count(root, 0, timeout=TIMEOUT)
    assert att.get_attribute("data-rendered") == "true"
    att.locator("[data-testid=head-thumb]").first.click()
    att.locator("[data-testid=head-detail]").wait_for(state="visible")
    page.wait_for_timeout(1000)  # give an injected onerror handler time to fire

    assert page.evaluate("() => window.__xss") is None
    # the literal text is what the token views show
    assert joined(att.locator("[data-testid=head-detail] [data-testid=token]")) == EVIL
    assert att.locator("[data-testid=prompt-input]").input_value() == EVIL
    tinted = joined(heat.locator("[data-testid=tinted-text] span"))
    assert tinted == EVIL, tinted
    rows = joined(heat.locator("[data-testid=heatmap] tbody th .iw-tok"))
    assert rows == EVIL, rows
    assert panel.locator("[data-testid=prompt-input]").input_value() == EVIL
    # nothing was parsed as markup anywhere in the outputs
    for root in (att, heat, panel):
        assert root.locator("img, script").count() == 0
    assert page.locator(".jp-OutputArea-output img[src=x]").count() == 0
    assert page.locator(".jp-OutputArea-output script").count() == 0
    assert "<img src=x" in tiny.cell_output(4).inner_text()
    tiny.screenshot("xss-attention", att)
    tiny.screenshot("xss-neurons", heat)

    # typing the payload into a prompt box is just as inert
    box = att.locator("[data-testid=prompt-input]")
    n0 = run_count(att)
    box.fill(SCRIPT + IMG)
    att.locator("[data-testid=run]").click()
    tiny.wait_run_count(att, n0, timeout=TIMEOUT)
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__xss") is None
    assert joined(att.locator("[data-testid=head-detail] [data-testid=token]")) == SCRIPT + IMG


def test_layer_out_of_range_from_python_shows_error(tiny: NotebookPage) -> None:
    root = tiny.widget(".iw-neurons", index=1)  # the `bad` widget
    tiny.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator(".iw-error").count() == 0
    tiny.execute("bad.layer = 7  # the tiny model has 2 layers")
    err = root.locator(".iw-error")
    err.wait_for(timeout=TIMEOUT * 1000)
    assert "out of range" in err.inner_text() or "layer" in err.inner_text().lower()
    tiny.screenshot("error-layer", root)
    # a valid value clears the error
    n0 = run_count(root)
    tiny.execute("bad.layer = 1")
    tiny.wait_run_count(root, n0, timeout=TIMEOUT)
    assert root.locator(".iw-error").count() == 0


def test_empty_prompt_typed_shows_error(tiny: NotebookPage) -> None:
    att = tiny.widget(".iw-attention")
    tiny.wait_run_count(att, 0, timeout=TIMEOUT)
    att.locator("[data-testid=prompt-input]").fill("")
    att.locator("[data-testid=run]").click()
    err = att.locator(".iw-error")
    err.wait_for(timeout=TIMEOUT * 1000)
    assert "empty" in err.inner_text()
    tiny.screenshot("error-empty-prompt-attention", att)

    heat = tiny.widget(".iw-neurons")
    box = heat.locator("[data-testid=prompt-input]")
    box.fill("")
    heat.locator("[data-testid=run]").click()
    err = heat.locator(".iw-error")
    err.wait_for(timeout=TIMEOUT * 1000)
    assert "empty" in err.inner_text()
    tiny.screenshot("error-empty-prompt-neurons", heat)
