"""AttributionGraph widget: render of a pruned graph of ~1,000 nodes and ~5,000 edges in headless
Chromium, and the bytes sent (target: < 1 s to first render).

The graph is synthetic (no model needed; the drawing does not depend on where the weights came
from): 8 layers × 12 positions, features spread over the cells, every feature with an incoming
and an outgoing edge, random edges from earlier to later layers (never backwards in position),
heavy-tailed weights of both signs. Shown at thresholds (1.0, 1.0), pruning keeps every node and
edge, so the drawn sizes are the ones asked for. The kernel's reply to the view's ``graph``
request is recorded exactly as the widget sends it (JSON plus binary buffers) and replayed in
headless Chromium into the real bundle through a stand-in for the anywidget model; the render
time runs from the request to the frame after the paint (decode, layout, canvas edges, SVG nodes).

Baselines in the same run: the same edges as a JSON list (what binary buffers save), a graph of a
few thousand nodes (3,000 / 15,000), and the kernel's re-prune at a new threshold (the slider).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import chromium_page_loads, record_graph_reply

from workbench.graphs import AttributionGraph as Graph
from workbench.widgets.attribution import AttributionGraph

ROOT = Path(__file__).resolve().parent.parent

PAGE = """<!doctype html><html><body style="width:1400px"><div id="root"></div><script type="module">
import widget from "./attribution.js";
const meta = await (await fetch("messages.json")).json();
const blob = await (await fetch("buffers.bin")).arrayBuffer();
const state = meta.state; const listeners = {};
const model = {
  get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  on(ev, cb) { (listeners[ev] ||= []).push(cb); }, off() {},
  send(msg) {
    if (msg.type !== "request" || msg.method !== "graph") return;
    for (const m of meta.messages) {
      const bufs = m.buffers.map(([o, n]) => new DataView(blob, o, n));
      const content = { ...m.content, id: msg.id };
      setTimeout(() => (listeners["msg:custom"] || []).forEach((cb) => cb(content, bufs)), 0);
    }
  },
};
widget.render({ model, el: document.getElementById("root") });
</script></body></html>"""


def synthetic_graph(n_nodes: int, n_edges: int, n_layers: int = 8, n_pos: int = 12, seed: int = 0) -> Graph:
    """A DAG attribution graph with about ``n_nodes`` nodes and ``n_edges`` edges (see the module doc)."""
    gen = torch.Generator().manual_seed(seed)
    n_logits = 10
    nf = n_nodes - n_layers * n_pos - n_pos - n_logits
    layer = torch.randint(0, n_layers, (nf,), generator=gen)
    pos = torch.randint(0, n_pos, (nf,), generator=gen)
    feats = torch.stack([layer, pos, torch.randperm(50_000, generator=gen)[:nf]], 1)
    n = nf + n_layers * n_pos + n_pos + n_logits
    ts, lg = nf + n_layers * n_pos, nf + n_layers * n_pos + n_pos
    # (layer, pos) of every node: errors per cell, tokens at layer -1, logits above the top layer
    L = torch.cat([layer, torch.arange(n_layers).repeat_interleave(n_pos), torch.full((n_pos,), -1),
                   torch.full((n_logits,), n_layers)])
    P = torch.cat([pos, torch.arange(n_pos).repeat(n_layers), torch.arange(n_pos), torch.full((n_logits,), n_pos - 1)])
    idx = torch.arange(n)
    inner = idx < ts  # features and errors
    sink = (idx < ts) | (idx >= lg)  # what a feature or error may feed: later features, errors, logits
    source = idx < lg  # what may feed a feature: features, errors, tokens

    def ok(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (L[s] < L[t]) & (P[s] <= P[t]) & sink[t] & source[s] & (t < ts) | ((t >= lg) & source[s] & (L[s] < L[t]))

    src, dst = [], []
    for s in inner.nonzero().flatten().tolist():  # every feature and error node feeds something later
        c = ((L > L[s]) & (P >= P[s]) & sink).nonzero().flatten()
        src.append(s)
        dst.append(int(c[torch.randint(len(c), (1,), generator=gen)]))
    for t in range(nf):  # every feature has an input (a token or an earlier node)
        c = ((L < L[t]) & (P <= P[t]) & source).nonzero().flatten()
        src.append(int(c[torch.randint(len(c), (1,), generator=gen)]))
        dst.append(t)
    pairs = set(zip(src, dst, strict=True))
    while len(pairs) < n_edges:  # random valid pairs, in batches
        s = torch.randint(0, n, (8 * n_edges,), generator=gen)
        t = torch.randint(0, n, (8 * n_edges,), generator=gen)
        keep = ok(s, t)
        for a, b in zip(s[keep].tolist(), t[keep].tolist(), strict=True):
            pairs.add((a, b))
            if len(pairs) >= n_edges:
                break
    s, t = (torch.tensor(x) for x in zip(*sorted(pairs), strict=True))
    w = torch.randn(len(s), generator=gen) * torch.rand(len(s), generator=gen) ** 3
    adj = torch.zeros(n, n)
    adj[t, s] = torch.where(w == 0, torch.full_like(w, 1e-3), w)
    probs = torch.softmax(torch.randn(n_logits, generator=gen), 0)
    return Graph(prompt=" ".join(f"w{i}" for i in range(n_pos)), tokens=[f" w{i}" for i in range(n_pos)],
                 token_ids=list(range(100, 100 + n_pos)), n_layers=n_layers, features=feats,
                 activations=torch.rand(nf, generator=gen) + 0.1, logit_ids=list(range(200, 200 + n_logits)),
                 logit_probs=probs, logit_tokens=[f" t{i}" for i in range(n_logits)], adjacency=adj,
                 values=torch.zeros(n), bias=torch.zeros(n), model_name="synthetic")


def record(widget: AttributionGraph) -> tuple[list[dict], bytes]:
    return record_graph_reply(widget)


def measure(widget: AttributionGraph, folder: Path, repeats: int) -> tuple[list[tuple[float, int, int]], list[dict], bytes]:
    messages, blob = record(widget)
    state = {"title": widget.title, "pinned": [], "supernodes": [], "selected": [], "version": 0,
             "node_threshold": widget.node_threshold, "edge_threshold": widget.edge_threshold, "error": "", "busy": False}
    (folder / "messages.json").write_text(json.dumps({"state": state, "messages": messages}))
    (folder / "buffers.bin").write_bytes(blob)

    def read(page) -> tuple[float, int, int]:
        page.wait_for_selector(".iw-attribution[data-rendered=true]", timeout=60_000)
        return (float(page.get_attribute(".iw-attribution", "data-render-ms")),
                int(page.get_attribute(".iw-attribution", "data-nodes")),
                int(page.get_attribute(".iw-attribution", "data-edges")))

    return chromium_page_loads(folder, read, repeats), messages, blob


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "widgets" / "static" / "attribution.js", folder / "attribution.js")
        (folder / "index.html").write_text(PAGE)
        results = {}
        for name, (nn, ne, reps) in {"1k": (1020, 5800, 7), "3k": (3060, 17000, 3)}.items():
            t = time.perf_counter()
            g = synthetic_graph(nn, ne)
            build = time.perf_counter() - t
            w = AttributionGraph(g, node_threshold=1.0, edge_threshold=1.0)
            t = time.perf_counter()
            w.payload()
            first = time.perf_counter() - t
            t = time.perf_counter()
            w.call("prune", node_threshold=0.9, edge_threshold=0.99)
            reprune = time.perf_counter() - t
            w.call("prune", node_threshold=1.0, edge_threshold=1.0)
            runs, messages, blob = measure(w, folder, reps)
            results[name] = (g, runs, messages, blob, build, first, reprune)
    for name, (g, runs, messages, blob, build, first, reprune) in results.items():
        content = messages[0]["content"]
        json_bytes = sum(len(json.dumps(m["content"]).encode()) for m in messages)
        ms = [r[0] for r in runs]
        nodes, edges = runs[0][1], runs[0][2]
        a = g.adjacency
        t, s = a.nonzero(as_tuple=True)
        as_json = len(json.dumps({"nodes": g.node_ids, "edges": [[int(x), int(y), float(f"{v:.7g}")] for x, y, v in
                                                                 zip(s.tolist(), t.tolist(), a[t, s].tolist(), strict=True)]}).encode())
        print(f"\n{name}: synthetic graph of {g.n_nodes} nodes ({g.n_features} features), "
              f"{int((a != 0).sum())} edges (built in {build:.1f} s); drawn at thresholds (1.0, 1.0): "
              f"{nodes} nodes, {edges} edges")
        print(f"  payload: {len(messages)} message(s), binary {len(blob) / 1e3:.1f} kB + JSON {json_bytes / 1e3:.1f} kB = "
              f"{(len(blob) + json_bytes) / 1e3:.1f} kB sent ({(len(blob) + json_bytes) / max(edges, 1):.1f} bytes per edge); "
              f"ids and edges as a JSON list instead: {as_json / 1e3:.1f} kB ({(len(blob) + json_bytes) / as_json:.2f}x of it)")
        print(f"  kernel: first payload (prune + pack) {first * 1000:.0f} ms; re-prune at a new threshold "
              f"{reprune * 1000:.0f} ms")
        med = statistics.median(ms)
        print(f"  Chromium, request to first full render (painted), {len(ms)} page loads: median {med:.0f} ms, "
              f"min {min(ms):.0f} ms, max {max(ms):.0f} ms" +
              (f" (target < 1000 ms: {'met' if med < 1000 else 'NOT met'})" if name == "1k" else ""))
        assert content["type"] == "reply"


if __name__ == "__main__":
    main()
