"""Shared helpers for benchmarks: interleaved timing and a ratio report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so drift hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, target: float | None = None) -> None:
    base = medians[baseline]
    print(f"\n{title}")
    for k, v in medians.items():
        ratio = v / base
        mark = "" if target is None or k == baseline else f"  (target ≤ {target:.2f}x: {'met' if ratio <= target else 'NOT met'})"
        print(f"  {k:<48} {v * 1000:9.2f} ms   {ratio:5.3f}x{mark}")


def chromium_page_loads(folder: Any, measure: Callable[[Any], T], repeats: int = 5) -> list[T]:
    """Serve ``folder`` over local HTTP and load its ``index.html`` ``repeats`` times in headless Chromium
    (Debian's ``chromium``); ``measure(page)`` reads each load's figures (after ``page.goto``)."""
    import functools
    import http.server
    import shutil
    import threading

    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    out: list[T] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                out.append(measure(page))
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return out


def record_graph_reply(widget: Any) -> tuple[list[dict], bytes]:
    """What a graph widget sends for its ``graph`` request: the messages (each with its buffers' spans
    in one blob) and the blob, for a static page to replay (the bytes a browser would receive)."""
    sent: list[tuple[dict, list]] = []
    widget.send = lambda msg, buffers=None: sent.append((msg, list(buffers or [])))
    widget._run(widget.rpc_graph, 1, {}, None)
    messages, blob = [], bytearray()
    for msg, bufs in sent:
        spans = []
        for b in bufs:
            spans.append([len(blob), len(bytes(b))])
            blob += bytes(b)
        messages.append({"content": msg, "buffers": spans})
    return messages, bytes(blob)
