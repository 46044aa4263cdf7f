"""A notebook's static HTML copy, opened from disk in Chromium with no kernel and the network cut off.

Each example notebook that exists of `NOTEBOOKS` is run and exported once (`wb.export_html`, with
``QUICK=1``); the page is opened from ``file://`` with every other request aborted and recorded.
Every widget view renders from the saved state, the attention thumbnails hold pixels, nothing left
the page, and a control that needs the kernel says "static copy: open the notebook to rerun".
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from workbench.widgets.export import STATE_MIME, VIEW_MIME, export_html

from .lab import ARTIFACTS, REPO

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

NOTEBOOKS = ["01_tour.ipynb", "06_dictionaries.ipynb"]
STATIC_NOTE = "static copy: open the notebook to rerun"
LOCAL = ("file:", "data:", "blob:")


def scripts(html: str, mime: str) -> list[Any]:
    return [json.loads(m) for m in re.findall(rf'<script type="{re.escape(mime)}">\s*(.*?)\s*</script>', html, re.S)]


@pytest.fixture(scope="module", params=NOTEBOOKS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, bundles: None) -> Iterator[dict]:
    """The notebook's static page (run with QUICK=1), its view count and how long the export took."""
    name = request.param
    out = tmp_path_factory.mktemp("static") / name.replace(".ipynb", ".html")
    old = os.environ.get("QUICK")
    os.environ["QUICK"] = "1"
    try:
        t0 = time.perf_counter()
        export_html(REPO / "examples" / name, out, timeout=1200)
        took = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("QUICK", None)
        else:
            os.environ["QUICK"] = old
    html = out.read_text()
    (state,) = scripts(html, STATE_MIME)
    views = [v["model_id"] for v in scripts(html, VIEW_MIME)]
    anywidget = [v for v in views if state["state"].get(v, {}).get("model_module") == "anywidget"]
    print(f"{name}: exported in {took:.1f} s, {out.stat().st_size / 2**20:.2f} MiB, "
          f"{len(views)} views ({len(anywidget)} workbench)")
    yield {"name": name, "path": out, "views": views, "anywidget": anywidget, "took": took}


@pytest.fixture
def page(browser: Any, exported: dict) -> Iterator[tuple[Any, list[str]]]:
    """The static page opened from disk; every request that is not a local file is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    left: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(LOCAL):
            r.continue_()
        else:
            left.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    p = context.new_page()
    p.on("request", lambda req: None if req.url.startswith(LOCAL) else left.append(req.url))
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(exported["path"].as_uri())
    p.wait_for_selector("body[data-static-state=done]", timeout=60_000)
    try:
        yield p, left
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / f"static-{exported['name'].replace('.ipynb', '')}.png"), full_page=True)
        context.close()
    assert errors == [], errors


def test_static_page_renders_every_widget_offline(page: tuple[Any, list[str]], exported: dict) -> None:
    p, left = page
    assert exported["anywidget"], "the notebook shows no workbench widget"
    assert p.locator(".iw-static").count() == len(exported["views"])  # one host per widget view
    assert int(p.evaluate("document.body.dataset.staticWidgets")) == len(exported["anywidget"])
    assert p.evaluate("document.body.dataset.staticFailed") == "0"
    rendered = p.locator(".iw-static[data-rendered=true]")
    assert rendered.count() == len(exported["anywidget"])
    for i in range(rendered.count()):
        host = rendered.nth(i)
        assert host.locator(".iw-static-banner").inner_text() == STATIC_NOTE
        assert host.locator(".iw-root").count() >= 1
        # the first render replayed the recorded replies: no view shows an error
        assert host.locator(".iw-error").count() == 0, host.locator(".iw-error").first.inner_text()
    if p.locator(".iw-attention").count():
        blank = p.evaluate("""() => [...document.querySelectorAll('[data-testid=head-thumb]')].map((c) => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const colors = new Set();
            for (let i = 0; i < d.length; i += 4) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            return colors.size; })""")
        assert blank and min(blank) > 2, blank  # every thumbnail drawn, with more than a flat fill
    p.wait_for_timeout(500)
    assert left == [], left


def test_local_controls_work_and_kernel_controls_say_static(page: tuple[Any, list[str]], exported: dict) -> None:
    p, left = page
    host = p.locator(".iw-static[data-rendered=true]").filter(has=p.locator("button", has_text="Run")).first
    if p.locator(".iw-attention").count():  # a recorded head enlarges from the static copy
        root = p.locator(".iw-attention").first
        root.locator("[data-testid=head-thumb]").nth(1).click()
        detail = root.locator("[data-testid=head-detail]")
        detail.wait_for(state="visible")
        p.wait_for_function("el => ['done', 'error'].includes(el.dataset.state)", arg=detail.element_handle())
        assert detail.get_attribute("data-state") == "done", detail.inner_text()
        colors = detail.locator("[data-testid=detail-canvas]").evaluate("""(c) => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const s = new Set(); for (let i = 0; i < d.length; i += 4) s.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            return s.size; }""")
        assert colors > 2
        host = p.locator(".iw-static").filter(has=root).first
    prompt = host.locator("input[type=text], textarea").first
    prompt.fill("A prompt the kernel never saw")
    host.locator("button", has_text="Run").first.click()
    alert = host.locator(".iw-error", has_text=STATIC_NOTE)
    alert.first.wait_for(timeout=10_000)
    assert alert.count() >= 1
    assert left == [], left
