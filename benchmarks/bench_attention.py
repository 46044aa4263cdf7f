"""AttentionHeads at 256 tokens, 30 layers x 9 heads: bytes sent per attention value, and the
time to first full render in Chromium.

The kernel's reply messages are recorded exactly as the widget sends them (JSON content plus
binary buffers), then replayed in headless Chromium into the real widget bundle through a
stand-in for the anywidget model, so the render time is the browser's own work: decode,
colour mapping and drawing of all 270 thumbnails. Targets: ≤ 2.5 bytes/value, < 1 s.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import interleaved, report

import workbench as wb
from workbench.widgets import AttentionHeads

ROOT = Path(__file__).resolve().parent.parent
N_TOKENS = 256

PAGE = """<!doctype html><html><body><div id="root"></div><script type="module">
import widget from "./attention.js";
const meta = await (await fetch("messages.json")).json();
const blob = await (await fetch("buffers.bin")).arrayBuffer();
const state = meta.state; const listeners = {};
const model = {
  get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  on(ev, cb) { (listeners[ev] ||= []).push(cb); }, off() {},
  send(msg) {
    if (msg.type !== "request") return;
    for (const m of meta.messages) {
      const bufs = m.buffers.map(([o, n]) => new DataView(blob, o, n));
      const content = { ...m.content, id: msg.id };
      setTimeout(() => (listeners["msg:custom"] || []).forEach((cb) => cb(content, bufs)), 0);
    }
  },
};
widget.render({ model, el: document.getElementById("root") });
</script></body></html>"""


def prompt_of(model: wb.Model, n: int) -> str:
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    ids = model.tokenizer(text)["input_ids"][:n]
    prompt = model.tokenizer.decode(ids)
    while len(model.tokenize(prompt).tokens[0]) > n:
        prompt = prompt[:-1]
    return prompt


def record(widget: AttentionHeads) -> tuple[list[dict], bytes]:
    sent: list[tuple[dict, list]] = []
    widget.send = lambda msg, buffers=None: sent.append((msg, list(buffers or [])))  # type: ignore[method-assign]
    widget._run(widget.rpc_patterns, 1, {}, None)
    messages, blob = [], bytearray()
    for msg, bufs in sent:
        spans = []
        for b in bufs:
            spans.append([len(blob), len(bytes(b))])
            blob += bytes(b)
        messages.append({"content": msg, "buffers": spans})
    return messages, bytes(blob)


def browser_render_ms(folder: Path, repeats: int = 5) -> list[float]:
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    times = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_selector(".iw-attention[data-rendered=true]", timeout=60_000)
                times.append(float(page.get_attribute(".iw-attention", "data-render-ms")))
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return times


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    prompt = prompt_of(model, N_TOKENS)
    n = len(model.tokenize(prompt).tokens[0])
    widget = AttentionHeads(model, prompt)
    messages, blob = record(widget)
    json_bytes = sum(len(json.dumps(m["content"])) for m in messages)
    values = model.n_layers * model.n_heads * n * n
    print(f"AttentionHeads payload, {n} tokens, {model.n_layers} layers x {model.n_heads} heads")
    print(f"  messages: {len(messages)}, binary {len(blob) / 1e6:.2f} MB, JSON {json_bytes / 1e3:.1f} kB")
    print(f"  bytes per attention value: {(len(blob) + json_bytes) / values:.3f} (target ≤ 2.5; "
          f"{(len(blob) + json_bytes) / (values * (n + 1) / (2 * n)):.3f} per causal, lower-triangle value)")

    batch = model.tokenize(prompt)

    def bare() -> None:
        with torch.no_grad():
            model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    def kernel() -> None:
        widget.send = lambda msg, buffers=None: None  # type: ignore[method-assign]
        widget._run(widget.rpc_patterns, 1, {}, None)

    report("Kernel side of a rerun (all 30 layers' patterns, packed)", interleaved(
        {"bare forward (no_grad)": bare, "AttentionHeads rerun (run + pack + send)": kernel}, repeats=5, warmup=1),
        "bare forward (no_grad)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "widgets" / "static" / "attention.js", folder / "attention.js")
        state = {"prompt": prompt, "n_layers": model.n_layers, "n_heads": model.n_heads,
                 "layers": list(range(model.n_layers)), "tokens": [], "selected": [], "error": "", "busy": False}
        (folder / "messages.json").write_text(json.dumps({"state": state, "messages": messages}))
        (folder / "buffers.bin").write_bytes(blob)
        (folder / "index.html").write_text(PAGE)
        t = time.perf_counter()
        times = browser_render_ms(folder)
    print(f"\nChromium: time from request to full render of 270 thumbnails (replayed replies), "
          f"{len(times)} page loads: median {statistics.median(times):.0f} ms, min {min(times):.0f} ms "
          f"(target < 1000 ms: {'met' if statistics.median(times) < 1000 else 'NOT met'}); "
          f"harness {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
