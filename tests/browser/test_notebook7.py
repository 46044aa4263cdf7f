"""The tour runs in Jupyter Notebook 7 (not only JupyterLab) in Chromium, and a widget reruns there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workbench import course

from .conftest import EXAMPLES
from .lab import LabServer, close_notebook, open_and_run, run_count

pytestmark = [pytest.mark.browser, pytest.mark.embedded]


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    pytest.importorskip("notebook", minversion="7")
    base = tmp_path_factory.mktemp("nb7")
    server = LabServer(base, app="notebook")
    server.root.mkdir(parents=True, exist_ok=True)
    course.fill_notebook(EXAMPLES / "01_tour.ipynb", "solution", out=server.root / "01_tour.ipynb")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_tour_runs_and_a_widget_reruns_in_notebook7(browser, bundles, notebook7) -> None:
    nb = open_and_run(notebook7, browser, "01_tour.ipynb", timeout=600)
    try:
        assert nb.all_ran, "Run All stopped at a failing cell"
        assert nb.error_outputs() == []
        assert nb.page.url.endswith("/notebooks/01_tour.ipynb")  # the Notebook 7 UI, not JupyterLab's
        assert nb.feedback() and all(nb.feedback().values()), nb.feedback()
        heat = nb.widget(".iw-neurons")
        n0 = nb.wait_run_count(heat, 0, timeout=240)
        col = heat.locator("[data-testid=neuron]").first
        col.scroll_into_view_if_needed()
        col.click()
        assert nb.wait_run_count(heat, n0, timeout=240) > n0
        assert run_count(heat) > n0
        nb.screenshot("notebook7-tour", heat)
    finally:
        close_notebook(nb)
