"""Fixtures for the browser tests: one JupyterLab server and one headless Chromium per session.

Run: ``PYTHONPATH=. .venv/bin/python -m pytest tests/browser -q -x``. Needs Chromium on
PATH (Debian: ``apt-get install -y chromium``); Playwright's own browser download is not
used. Every test leaves a screenshot in ``test-artifacts/`` (also when it fails).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest

from workbench import course

from .lab import CHROMIUM_ARGS, REPO, LabServer, NotebookPage, chromium_path

try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - the browser fixture skips
    sync_api = None

EXAMPLES = REPO / "examples"
BUNDLES = ("attention", "neurons", "steering", "lens", "patching", "neuron-dashboard", "feature-list", "feature-dashboard", "agent",
           "circuit", "attribution", "static-runtime")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """A running JupyterLab whose root holds copies of examples/*.ipynb (solutions filled in), kernels with QUICK=1."""
    base = tmp_path_factory.mktemp("lab")
    server = LabServer(base)
    server.root.mkdir(parents=True, exist_ok=True)
    for nb in EXAMPLES.glob("*.ipynb"):
        # Course notebooks run here with their reference solutions filled in (every check passes);
        # tests/test_course_notebooks.py runs them with the wrong answers under nbclient.
        if course.exercise_cells(nbformat.read(str(nb), as_version=4)):
            course.fill_notebook(nb, "solution", out=server.root / nb.name)
        else:
            shutil.copy(nb, server.root / nb.name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bundles() -> None:
    """Fail early, with the fix, when the widgets' JS was not built."""
    missing = [w for w in BUNDLES if not (REPO / "widgets" / "static" / f"{w}.js").exists()]
    if missing:
        pytest.fail(f"widget bundles missing ({', '.join(missing)}): run `cd js && npm install && node build.mjs`")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install playwright; no browser download needed)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(autouse=True)
def _screenshot(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test, screenshot each notebook page it used into test-artifacts/."""
    yield
    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    for value in list(request.node.funcargs.values()):
        if isinstance(value, NotebookPage):
            value.screenshot(f"{name}{'-FAILED' if failed else ''}")
            if failed:
                value.save_logs(name)
