"""PatchingHeatmap in JupyterLab: the heatmap renders, a clicked cell is replayed in the kernel,
the predictions table gains the patched column, and the exact/attribution toggle recolours cells.
The IIA heatmap of a DAS sweep (same view): a clicked cell reruns its interchange in the kernel.

Uses the tiny random model (`workbench.testing.tiny_model`), so the notebook runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import NotebookPage, close_notebook, open_and_run, write_notebook

pytestmark = pytest.mark.browser

TIMEOUT = 120
CLEAN = "The cat sat on the mat"  # 9 tokens with the tiny tokenizer
CORRUPT = "A dog is on a mat"
SOURCE = "The mat sat on the cat"  # as long as CLEAN: a counterfactual pair for DAS

SETUP = f"""\
from workbench.testing import tiny_model
from workbench.causal.patching import activation_patching, attribution_patching
from workbench.widgets.patching import PatchingHeatmap

model = tiny_model("llama")
kw = dict(answer=" the", wrong=" a", progress=False)
exact = activation_patching(model, {CLEAN!r}, {CORRUPT!r}, **kw)
attr = attribution_patching(model, {CLEAN!r}, {CORRUPT!r}, **kw)
"""
CELLS = [
    SETUP,
    "ph = PatchingHeatmap(model, exact, attr)\nph",
    f"heads = PatchingHeatmap.run(model, {CLEAN!r}, {CORRUPT!r}, site='z', attribution=False, **kw)\nheads",
    # an IIA sweep on the same view (DAS with a few steps: the test is about the view, not the subspace)
    f"""from workbench.causal.das import das_sweep
pairs = [({CLEAN!r}, {SOURCE!r}, " the", " a"), ({SOURCE!r}, {CLEAN!r}, " a", " the")] * 4
sweep = das_sweep(model, ["resid_post.0", "resid_post.1"], [2, -1], pairs, k=[1, 2], steps=4, lr=5e-2, progress=False)
iia = sweep.show(model, pairs[0])
iia""",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    write_notebook(lab.root / "patching.ipynb", CELLS)
    page = open_and_run(lab, browser, "patching.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def cell(root, layer: int, col: int):
    return root.locator(f"[data-testid=patch-cell][data-layer='{layer}'][data-col='{col}']")


def test_heatmap_renders_with_token_labels(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    root = nb.widget(".iw-patching")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    cells = root.locator("[data-testid=patch-cell]")
    assert cells.count() == 2 * 9
    assert root.get_attribute("data-method") == "exact"
    # column labels are the clean prompt's tokens, as text
    labels = "".join(root.locator("[data-testid=heatmap] thead th.ph-col .iw-tok").all_text_contents())
    assert labels == CLEAN
    # cells are coloured; 1.0 (clean restored: last layer, last position) is blue
    last = cell(root, 1, 8)
    assert float(last.get_attribute("data-value")) == pytest.approx(1.0, abs=1e-3)
    bg = last.evaluate("e => getComputedStyle(e).backgroundColor")
    r, g, b = (int(x) for x in bg[bg.index("(") + 1: bg.index(")")].split(",")[:3])
    assert b > r + 100, bg
    # hover shows the value
    cell(root, 0, 2).hover()
    readout = root.locator("[data-testid=cell-readout]")
    assert "layer 0" in readout.inner_text() and "position 2" in readout.inner_text()
    # clean and corrupted predictions are there before any click; patched is not
    rows = root.locator("[data-testid=prediction-row]")
    assert rows.count() == 10
    assert root.locator("[data-testid=col-patched]").count() == 0
    assert rows.first.locator("[data-testid=pred-clean] .iw-tok").count() == 1
    assert root.locator("img, script").count() == 0
    nb.screenshot("patching-heatmap", root)


def test_click_cell_reruns_and_shows_patched_predictions(nb: NotebookPage) -> None:
    root = nb.widget(".iw-patching")
    n0 = nb.wait_run_count(root, 0, timeout=TIMEOUT)
    cell(root, 0, 2).click()
    n1 = nb.wait_run_count(root, n0, timeout=TIMEOUT)
    assert root.get_attribute("data-selected") == "0,2"
    assert root.locator("[data-testid=col-patched]").count() == 1
    first = root.locator("[data-testid=prediction-row]").first.locator("[data-testid=pred-patched]")
    assert first.locator(".iw-tok").count() == 1
    metric = root.locator("[data-testid=patched-metric]")
    norm1 = float(metric.get_attribute("data-normalized"))
    assert norm1 == pytest.approx(float(cell(root, 0, 2).get_attribute("data-value")), abs=1e-3)
    probs1 = root.locator("[data-testid=pred-patched]").evaluate_all("els => els.map(e => e.dataset.prob)")

    # the clean-restoring cell: patched predictions become the clean ones
    cell(root, 1, 8).click()
    nb.wait_run_count(root, n1, timeout=TIMEOUT)
    assert root.get_attribute("data-selected") == "1,8"
    assert float(metric.get_attribute("data-normalized")) == pytest.approx(1.0, abs=1e-3)
    probs2 = root.locator("[data-testid=pred-patched]").evaluate_all("els => els.map(e => e.dataset.prob)")
    assert probs2 != probs1
    clean = root.locator("[data-testid=pred-clean]").evaluate_all("els => els.map(e => e.dataset.id)")
    patched = root.locator("[data-testid=pred-patched]").evaluate_all("els => els.map(e => e.dataset.id)")
    assert patched == clean
    nb.screenshot("patching-clicked", root)

    # Python reads the selection back
    nb.execute("assert ph.selected == [1, 8], ph.selected\n"
               "assert ph.selected_specs == exact.cell_specs(1, 8)\nprint('selected ok')")
    assert nb.error_outputs() == []
    assert "selected ok" in nb.cell_output(-1).inner_text()


def test_method_toggle_recolours_cells(nb: NotebookPage) -> None:
    root = nb.widget(".iw-patching")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    toggle = root.locator("[data-testid=method-toggle]")
    assert toggle.is_visible()
    target = cell(root, 0, 0)
    before = (target.get_attribute("data-value"), target.evaluate("e => e.style.backgroundColor"))
    toggle.locator("button[data-method=attribution]").click()
    root.locator("[data-testid=heatmap][data-method=attribution]").wait_for(timeout=TIMEOUT * 1000)
    assert root.get_attribute("data-method") == "attribution"
    after = (cell(root, 0, 0).get_attribute("data-value"), cell(root, 0, 0).evaluate("e => e.style.backgroundColor"))
    assert after[0] != before[0] and after[1] != before[1]
    nb.screenshot("patching-attribution", root)
    nb.execute("assert ph.method == 'attribution', ph.method\nprint('method ok')")
    assert "method ok" in nb.cell_output(-1).inner_text()
    toggle.locator("button[data-method=exact]").click()
    root.locator("[data-testid=heatmap][data-method=exact]").wait_for(timeout=TIMEOUT * 1000)


def test_heads_sweep_and_python_selection(nb: NotebookPage) -> None:
    root = nb.widget(".iw-patching", index=1)
    n0 = nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator("[data-testid=patch-cell]").count() == 2 * 4
    assert root.locator("[data-testid=method-toggle]").is_hidden()
    labels = root.locator("[data-testid=heatmap] thead th.ph-col .iw-tok").all_text_contents()
    assert labels == ["H0", "H1", "H2", "H3"]
    # selecting from Python makes the view replay that cell
    nb.execute("heads.selected = [1, 2]")
    nb.wait_run_count(root, n0, timeout=TIMEOUT)
    assert root.get_attribute("data-selected") == "1,2"
    assert root.locator("[data-testid=col-patched]").count() == 1


def test_bad_cell_from_python_shows_error(nb: NotebookPage) -> None:
    root = nb.widget(".iw-patching", index=1)
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    nb.execute("heads.selected = [7, 0]  # the tiny model has 2 layers")
    err = root.locator(".iw-error")
    err.wait_for(timeout=TIMEOUT * 1000)
    assert "layer 7 is not in this sweep" in err.inner_text()
    nb.screenshot("patching-error", root)


def test_iia_sweep_cell_click_reruns_the_interchange(nb: NotebookPage) -> None:
    root = nb.widget(".iw-patching", index=2)
    n0 = nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator("[data-testid=patch-cell]").count() == 2 * 2
    rows = root.locator("[data-testid=heatmap] th.ph-row").all_text_contents()
    assert rows == ["resid_post.0", "resid_post.1"]
    assert root.locator("[data-testid=col-clean]").inner_text() == "source"
    assert root.locator("[data-testid=col-corrupted]").inner_text() == "base"
    assert root.get_attribute("data-method") == "k=1"
    base = root.locator("[data-testid=pred-corrupted]").evaluate_all("els => els.map(e => e.dataset.prob)")
    cell(root, 1, 8).click()
    n1 = nb.wait_run_count(root, n0, timeout=TIMEOUT)
    assert root.get_attribute("data-selected") == "1,8"
    assert root.locator("[data-testid=col-patched]").count() == 1
    patched1 = root.locator("[data-testid=pred-patched]").evaluate_all("els => els.map(e => e.dataset.prob)")
    assert patched1 != base  # the interchange changed the base run's predictions
    assert "resid_post.1" in root.locator("[data-testid=cell-specs]").inner_text()
    assert root.locator("[data-testid=status]").inner_text().startswith("patched resid_post.1,")
    cell(root, 0, 2).click()
    nb.wait_run_count(root, n1, timeout=TIMEOUT)
    patched2 = root.locator("[data-testid=pred-patched]").evaluate_all("els => els.map(e => e.dataset.prob)")
    assert patched2 != patched1
    nb.execute("assert iia.selected == [0, 2], iia.selected\n"
               "assert iia.selected_specs[0].site == 'resid_post.0'\nprint('iia ok')")
    assert "iia ok" in nb.cell_output(-1).inner_text()
    root.locator("[data-testid=method-toggle] button[data-method='k=2']").click()
    root.locator("[data-testid=heatmap][data-method='k=2']").wait_for(timeout=TIMEOUT * 1000)
    nb.screenshot("iia-heatmap", root)
