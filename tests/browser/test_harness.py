"""Smoke test of the harness itself: a trivial notebook runs in JupyterLab with the venv kernel."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import nbformat
import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, write_notebook

pytestmark = pytest.mark.browser

ANYWIDGET = """\
import anywidget, traitlets

class Probe(anywidget.AnyWidget):
    _esm = \"\"\"export default { render({ model, el }) {
      const d = document.createElement('div'); d.id = 'aw-ok';
      d.textContent = 'anywidget ' + model.get('v'); el.append(d); } }\"\"\"
    v = traitlets.Int(7).tag(sync=True)

Probe()
"""


@pytest.fixture
def trivial(browser, lab) -> Iterator[NotebookPage]:
    write_notebook(lab.root / "harness.ipynb", [
        nbformat.v4.new_markdown_cell("# harness"),
        "import sys, workbench\nprint(sys.executable)\nprint(workbench.__file__)",
        "from IPython.display import HTML\nHTML('<div id=\"harness-ok\">ok</div>')",
        ANYWIDGET,
    ])
    page = open_and_run(lab, browser, "harness.ipynb", timeout=120)
    try:
        yield page
    finally:
        close_notebook(page)


def test_trivial_notebook_runs(trivial: NotebookPage) -> None:
    assert trivial.all_ran
    assert trivial.error_outputs() == []
    page = trivial.page
    page.locator(".jp-OutputArea-output #harness-ok").wait_for()
    out = trivial.cell_output(1).inner_text()
    assert sys.executable in out  # the kernel is this interpreter
    assert str(REPO / "workbench") in out  # and imports this checkout
    assert page.locator(".jp-OutputArea-output #aw-ok").inner_text(timeout=30_000) == "anywidget 7"
    # the temp user settings are in force: every cell stays in the DOM
    mode = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.notebookConfig.windowingMode")
    assert mode == "none"


def test_failing_cell_is_detected(browser, lab) -> None:
    """Run All reports a raising cell, and its traceback counts as an error output."""
    write_notebook(lab.root / "failing.ipynb", ["1 / 0", "print('not reached')"])
    page = open_and_run(lab, browser, "failing.ipynb", timeout=120)
    try:
        assert page.all_ran is False
        errors = page.error_outputs()
        assert errors and "ZeroDivisionError" in errors[0]
        assert "not reached" not in page.cell_output(1).all_inner_texts()
    finally:
        close_notebook(page)
