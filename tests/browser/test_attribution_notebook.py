"""The attribution-graphs notebook (examples/07_attribution_graphs.ipynb) runs clean in JupyterLab on the
embedded model, with its quick transcoder recipe, and its AttributionGraph draws the traced graph."""

from __future__ import annotations

import pytest

from .lab import assert_course_run, close_notebook, open_and_run

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

NOTEBOOK = "07_attribution_graphs.ipynb"


def test_attribution_notebook_runs_clean_in_jupyterlab(browser, bundles, lab) -> None:
    nb = open_and_run(lab, browser, NOTEBOOK, timeout=2400)
    try:
        assert nb.all_ran, "Run All stopped at a failing cell"
        assert_course_run(nb, "07_attribution_graphs")
        assert nb.error_outputs() == []
        joined = "\n".join(nb.page.locator(".jp-OutputArea").all_inner_texts())
        assert "top logits: [(' Paris'" in joined
        assert "largest |sum of incoming edges + bias - value|" in joined
        assert "Verification(" in joined and "re-imported:" in joined and "notebook ran in" in joined
        root = nb.widget(".iw-attribution")
        root.wait_for(timeout=120_000)
        nb.page.wait_for_function("() => document.querySelector('.iw-attribution')?.dataset.rendered === 'true'",
                                  timeout=240_000)
        assert root.locator(".iw-error").count() == 0
        nb.screenshot("attribution-notebook-graph", root)
    finally:
        close_notebook(nb)
