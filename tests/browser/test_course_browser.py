"""Every course notebook runs clean in JupyterLab (Chromium) with its reference solutions filled in:
no error output, every exercise check passes, and at least the expected number of widget views render.

The tour, circuits and attribution-graph notebooks have their own browser tests (which click and drag
as well); they assert the same through `assert_course_run`.
"""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES
from .lab import assert_course_run, close_notebook, open_and_run

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

OWN_TESTS = {"01_tour", "04_circuits", "07_attribution_graphs"}
NOTEBOOKS = sorted(p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.ipynb") if p.stem not in OWN_TESTS)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_course_notebook_runs_clean_with_solutions(browser, bundles, lab, stem: str) -> None:
    nb = open_and_run(lab, browser, f"{stem}.ipynb", timeout=1500)
    try:
        assert_course_run(nb, stem)
        nb.screenshot(f"course-{stem}")
    finally:
        close_notebook(nb)
