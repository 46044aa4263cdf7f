"""The circuits course notebook (examples/04_circuits.ipynb) runs clean in JupyterLab, and its
CircuitGraph renders edges drawn from the kernel's EAP-IG scores."""

from __future__ import annotations

import pytest

from .lab import assert_course_run, close_notebook, open_and_run

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

NOTEBOOK = "04_circuits.ipynb"


def test_circuits_notebook_runs_clean_in_jupyterlab(browser, bundles, lab) -> None:
    nb = open_and_run(lab, browser, NOTEBOOK, timeout=2400)
    try:
        assert nb.all_ran, "Run All stopped at a failing cell"
        assert_course_run(nb, "04_circuits")
        assert nb.error_outputs() == []
        prompts = [t.strip() for t in nb.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        assert prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts), prompts
        text = nb.page.locator(".jp-OutputArea").all_inner_texts()
        joined = "\n".join(text)
        assert "shared among the top 20 heads" in joined and "notebook ran in" in joined
        graph = nb.widget(".iw-circuit")
        graph.wait_for(timeout=120_000)
        nb.page.wait_for_function("() => document.querySelector('.iw-circuit')?.dataset.rendered === 'true'",
                                  timeout=240_000)
        assert graph.locator(".iw-error").count() == 0
        assert graph.locator("[data-testid=edges] path").count() > 10 and int(graph.get_attribute("data-drawn") or 0) > 10
        nb.screenshot("circuits-notebook-graph", graph)
    finally:
        close_notebook(nb)
