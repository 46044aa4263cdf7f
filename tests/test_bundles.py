"""Every widget bundle is one self-contained ES module: no `require`, no import of another file or URL,
no CDN, no network call. This is what lets JupyterLab, Notebook 7, VS Code and Colab load them the
same way (anywidget imports the `_esm` text as a module), and a static HTML export inline them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "widgets" / "static"
RUNTIME = STATIC / "static-runtime.js"  # the static HTML export's page script, not a widget module
BUNDLES = sorted(p for p in STATIC.glob("*.js") if p != RUNTIME)
URL = re.compile(r"""https?://[^\s"'`)<>]+""")
ALLOWED_URLS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml", "http://www.w3.org/1999/xlink"}


def test_there_are_bundles() -> None:
    assert len(BUNDLES) >= 11, "widgets/static is not built: cd js && npm install && node build.mjs"


@pytest.mark.parametrize("path", BUNDLES, ids=[p.stem for p in BUNDLES])
def test_bundle_is_self_contained_esm(path: Path) -> None:
    src = path.read_text(encoding="utf-8")
    assert re.search(r"\bexport\s*(default|\{)", src), "not an ES module (no export)"
    assert not re.search(r"\brequire\s*\(", src), "uses require()"
    assert not re.search(r"""(^|[;\s])import\s*(\(|[\w{*].*?from\s*["'])""", src), "imports another module"
    assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\s*\(", src), "makes a network call"
    urls = set(URL.findall(src)) - ALLOWED_URLS
    assert not urls, f"references URLs: {sorted(urls)[:5]}"


def test_static_runtime_makes_no_network_call() -> None:
    if not RUNTIME.exists():
        pytest.skip("the static-export runtime is not built")
    src = RUNTIME.read_text(encoding="utf-8")
    assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\s*\(", src)
    assert not (set(URL.findall(src)) - ALLOWED_URLS)
