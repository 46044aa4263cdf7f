"""CircuitGraph at the embedded model's full graph (30 layers × 9 heads: 392 nodes, ~44k edges):
bytes sent, and time to first full render of 2,000 visible edges in Chromium.

The kernel's reply to the view's ``graph`` request is recorded exactly as the widget sends it
(JSON content plus binary buffers: the top ``max_edges`` edges by |score| as int32 / float32),
then replayed in headless Chromium into the real widget bundle through a stand-in for the
anywidget model, so the render time is the browser's own work: decode, layout, building 2,000
SVG paths and ~400 nodes, style, layout and paint (measured until the frame after it painted).

Scores: the engine's EAP on IOI when the embedded model does the task (``--synthetic`` or no
model: heavy-tailed random scores on the same graph; render time does not depend on the values).
Baselines in the same run: the same edges as a JSON list (what binary buffers save), and the
same view redrawn at 200 edges (the fixed cost of nodes and page). Target: < 1 s to first render.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import chromium_page_loads, record_graph_reply

from workbench.widgets.circuit import CircuitGraph

ROOT = Path(__file__).resolve().parent.parent
VISIBLE = 2000

PAGE = """<!doctype html><html><body style="width:1400px"><div id="root"></div><script type="module">
import widget from "./circuit.js";
const meta = await (await fetch("messages.json")).json();
const blob = await (await fetch("buffers.bin")).arrayBuffer();
const state = meta.state; const listeners = {};
const model = {
  get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  on(ev, cb) { (listeners[ev] ||= []).push(cb); }, off() {},
  send(msg) {
    if (msg.type !== "request" || msg.method !== "graph") return;  // faithfulness requests go unanswered
    for (const m of meta.messages) {
      const bufs = m.buffers.map(([o, n]) => new DataView(blob, o, n));
      const content = { ...m.content, id: msg.id };
      setTimeout(() => (listeners["msg:custom"] || []).forEach((cb) => cb(content, bufs)), 0);
    }
  },
};
widget.render({ model, el: document.getElementById("root") });
</script></body></html>"""


def synthetic_scores():
    """Heavy-tailed random scores on the embedded model's graph shape (no model needed)."""
    from workbench.circuits import ComputationGraph, EdgeScores

    g = ComputationGraph.from_config({"model": "SmolLM2-135M", "family": "llama", "n_layers": 30, "n_heads": 9,
                                      "n_kv_heads": 3, "split_qkv": False, "parallel": False})
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(g.n_edges, generator=gen) * torch.rand(g.n_edges, generator=gen) ** 4
    return None, EdgeScores(g, s, "synthetic", None, float("nan"), float("nan"), "SmolLM2-135M")


def real_scores():
    import workbench as wb
    from workbench.circuits import eap
    from workbench.circuits.task_generators import ioi_task

    model = wb.load(progress=False)
    task = ioi_task(model, n=20)
    t = time.perf_counter()
    scores = eap(model, task)
    print(f"EAP on IOI ({task.n} pairs): {time.perf_counter() - t:.1f} s")
    return model, scores


def record(widget: CircuitGraph) -> tuple[list[dict], bytes]:
    return record_graph_reply(widget)


def browser_render_ms(folder: Path, repeats: int = 7) -> list[tuple[float, int]]:
    """(render ms, edges drawn) per page load in headless Chromium."""

    def measure(page) -> tuple[float, int]:
        page.wait_for_selector(".iw-circuit[data-rendered=true]", timeout=60_000)
        return (float(page.get_attribute(".iw-circuit", "data-render-ms")),
                int(page.get_attribute(".iw-circuit", "data-drawn")))

    return chromium_page_loads(folder, measure, repeats)


def measure(scores, model, k: int, folder: Path) -> tuple[list[tuple[float, int]], list[dict], bytes]:
    widget = CircuitGraph(model, scores, k=k, max_edges=5000, max_draw=3000)
    messages, blob = record(widget)
    state = {"title": widget.title, "k": k, "pinned_edges": [], "pinned_nodes": [], "version": 0,
             "last_faithfulness": None, "error": "", "busy": False}
    (folder / "messages.json").write_text(json.dumps({"state": state, "messages": messages}))
    (folder / "buffers.bin").write_bytes(blob)
    return browser_render_ms(folder), messages, blob


def main() -> None:
    torch.set_num_threads(1)
    model, scores = (None, None)
    if "--synthetic" not in sys.argv:
        try:
            model, scores = real_scores()
        except Exception as e:  # no embedded model here: the same graph shape with synthetic scores
            print(f"embedded model unavailable ({type(e).__name__}: {e}); using synthetic scores")
    if scores is None:
        model, scores = synthetic_scores()
    g = scores.graph
    print(f"graph: {g.n_nodes} nodes, {g.n_edges} edges ({scores.method} scores)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "widgets" / "static" / "circuit.js", folder / "circuit.js")
        (folder / "index.html").write_text(PAGE)
        t = time.perf_counter()
        runs, messages, blob = measure(scores, model, VISIBLE, folder)
        small, _, _ = measure(scores, model, 200, folder)
        harness = time.perf_counter() - t
    json_bytes = sum(len(json.dumps(m["content"]).encode()) for m in messages)
    sent = json.loads(json.dumps(messages[0]["content"]))["content"]["edges"]
    n_sent = sent["weight"]["shape"][0]
    top = scores.order()[:n_sent]
    triples = zip(g.edges[0][top].tolist(), g.edges[1][top].tolist(), scores.scores[top].tolist(), strict=True)
    as_json = len(json.dumps([[a, b, float(f"{w:.7g}")] for a, b, w in triples]).encode())
    print(f"\nCircuitGraph payload: {len(messages)} message(s), binary {len(blob) / 1e3:.1f} kB, JSON {json_bytes / 1e3:.1f} kB, "
          f"total {(len(blob) + json_bytes) / 1e3:.1f} kB for {n_sent} edges sent ({(len(blob)) / n_sent:.1f} binary bytes "
          f"per edge) and {g.n_nodes} nodes")
    print(f"  the same {n_sent} edges as a JSON list: {as_json / 1e3:.1f} kB "
          f"(binary buffers: {len(blob) / as_json:.3f}x of it)")
    ms = [r[0] for r in runs]
    ms_small = [r[0] for r in small]
    med, med_small = statistics.median(ms), statistics.median(ms_small)
    print(f"\nChromium, time from request to first full render (painted), {len(ms)} page loads each:")
    print(f"  {runs[0][1]:>5} visible edges: median {med:7.0f} ms, min {min(ms):.0f} ms "
          f"(target < 1000 ms: {'met' if med < 1000 else 'NOT met'})")
    print(f"  {small[0][1]:>5} visible edges: median {med_small:7.0f} ms, min {min(ms_small):.0f} ms "
          f"(baseline: {med / max(med_small, 1e-9):.2f}x for 10x the edges); harness {harness:.1f} s")


if __name__ == "__main__":
    main()
