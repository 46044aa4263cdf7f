"""LogitLens in JupyterLab: the grid renders, clicking a cell pins it, a new prompt reruns.

Uses the tiny random model (`workbench.testing.tiny_model`), so the notebook runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import NotebookPage, close_notebook, open_and_run, run_count, write_notebook

pytestmark = pytest.mark.browser
TIMEOUT = 120

CELLS = [
    "from workbench.testing import tiny_model\nfrom workbench.widgets import LogitLens\nmodel = tiny_model('llama')",
    "lens = LogitLens(model, 'The quick brown fox jumps', targets=[' the'])\nlens",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    write_notebook(lab.root / "lens.ipynb", CELLS)
    page = open_and_run(lab, browser, "lens.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def test_grid_pin_and_rerun(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    root = nb.widget(".iw-lens")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator(".iw-error").count() == 0
    labels = root.locator("[data-testid=token-label]")
    tokens0 = [t for t in labels.all_text_contents()]
    cells = root.locator("[data-testid=lens-cell]")
    assert cells.count() == 2 * len(tokens0) and len(tokens0) >= 3
    assert "".join(tokens0) == "The quick brown fox jumps"
    assert all(t != "" for t in cells.all_text_contents()), "every cell shows its top token"
    nb.screenshot("lens-grid", root)

    # hover shows the top-k tooltip
    cell = root.locator("[data-testid=lens-cell][data-layer='0'][data-pos='2']")
    cell.hover()
    tip = root.locator("[data-testid=lens-tooltip]")
    tip.wait_for(state="visible")
    assert tip.locator("[data-testid=tooltip-row]").count() == 5

    # click pins: the panel shows that cell's top-k and Python reads it back
    cell.click()
    panel = root.locator("[data-testid=pin-panel]")
    panel.locator("[data-testid=pin-row]").first.wait_for()
    assert panel.get_attribute("data-layer") == "0" and panel.get_attribute("data-pos") == "2"
    assert panel.locator("[data-testid=pin-row]").count() == 5
    first = panel.locator("[data-testid=pin-row]").first.get_attribute("data-token")
    assert first == cell.get_attribute("data-top")
    assert cell.get_attribute("data-pinned") == "true"
    nb.screenshot("lens-pinned", root)
    nb.execute("print('PINNED', lens.pinned, lens.pinned_site)")
    out = nb.cell_output(-1).inner_text()
    assert "PINNED [0, 2] resid_post.0" in out, out

    # colour by the target recolours without a rerun
    n0 = run_count(root)
    before = cell.get_attribute("data-value")
    root.locator("[data-testid=color-by]").select_option(" the")
    nb.page.wait_for_function("([el, v]) => el.getAttribute('data-value') !== v",
                              arg=[cell.element_handle(), before], timeout=10_000)
    assert run_count(root) == n0

    # a new prompt + Run reruns through the kernel
    root.locator("[data-testid=prompt-input]").fill("Hello world, again and again")
    root.locator("[data-testid=run]").click()
    nb.wait_run_count(root, n0, timeout=TIMEOUT)
    tokens1 = labels.all_text_contents()
    assert tokens1 != tokens0 and "".join(tokens1) == "Hello world, again and again"
    assert root.locator("[data-testid=lens-cell]").count() == 2 * len(tokens1)
    assert root.locator(".iw-error").count() == 0
    nb.screenshot("lens-rerun", root)
