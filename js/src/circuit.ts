// CircuitGraph: a computation graph (or any layered graph: feature attribution graphs too)
// drawn as SVG. Nodes sit in columns by layer (inputs, heads, MLP, outputs) and rows by
// their index within the layer; edges are S-curves whose colour is the sign and width the
// magnitude of their score. The kernel sends the top edges by |score| as binary buffers;
// a log-scale slider sets how many are kept (only those are drawn) and asks the kernel for
// the faithfulness of that circuit. Clicking an edge asks for its exact patch (estimated
// and exact effect side by side); clicking a head opens its attention pattern (an
// AttentionHeads widget the kernel puts below this one); clicking an MLP lists its top
// neurons. Pins (edges and nodes) sync to Python as traits; SVG / PNG export (lib/snapshot.ts).
//
// Browser-test hooks: root .iw-root.iw-circuit[data-run-count][data-rendered][data-render-ms]
// [data-k][data-drawn]; [data-testid=edge-slider] (range input); [data-testid=k-readout];
// [data-testid=faithfulness][data-value][data-k][data-state]; svg[data-testid=graph] with
// path[data-testid=edge][data-eid][data-name][data-weight] and circle[data-testid=node]
// [data-node][data-kind]; [data-testid=edge-detail] with [data-testid=edge-estimated|edge-exact]
// [data-value]; [data-testid=node-detail] with tr[data-testid=neuron-row]; [data-testid=pin]
// (toggles the inspected edge/node); [data-testid=export-svg|export-png|clear-pins];
// [data-testid=pins]; [data-testid=errors].
import { debounce, el, showRpcError, withStyle } from "./lib/dom";
import * as L from "./lib/circuit-logic";
import { SVG_NS, svgEl as svg } from "./lib/graph-draw";
const count = L.count;
import type { NDArray } from "./lib/arrays";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { imageButtons } from "./lib/snapshot";


interface GraphReply {
  title: string;
  method: string;
  task: string;
  n_edges: number; // all edges of the graph
  nodes: { ids: string[]; labels: string[]; kinds: string[]; layer: NDArray; index: NDArray; value: NDArray | null };
  edges: { eid: NDArray; src: NDArray; dst: NDArray; weight: NDArray };
  k: number;
  max_draw: number;
  actions: { faithfulness: boolean; exact: boolean; heads: boolean; neurons: boolean };
  metric: { clean: number | null; corrupted: number | null };
}

interface FaithReply { k: number; faithfulness: number; threshold: number | null; edges: number }
interface EdgeReply {
  eid: number; name: string; estimated: number; exact: number; exact_metric: number;
  clean_metric: number; corrupted_metric: number; method: string;
}
interface NodeReply {
  id: string; kind: string; layer: number; head?: number; score: number | null; opened?: string; prompt?: string;
  neurons?: NDArray; values?: NDArray; how?: string;
}

const CSS = `
.iw-circuit .cg-title { font-weight: 600; margin-bottom: 4px; }
.iw-circuit .cg-controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 4px 0; }
.iw-circuit .cg-controls input[type=range] { width: 280px; }
.iw-circuit .cg-k { font-variant-numeric: tabular-nums; min-width: 220px; }
.iw-circuit .cg-faith { font-weight: 600; font-variant-numeric: tabular-nums; min-width: 150px; }
.iw-circuit .cg-faith[data-state=running] { color: var(--jp-ui-font-color2, #888); }
.iw-circuit .cg-main { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.iw-circuit .cg-wrap { overflow: auto; max-width: 100%; border: 1px solid var(--jp-border-color2, #eee); }
.iw-circuit svg text { font-family: var(--jp-ui-font-family, sans-serif); }
.iw-circuit svg { color: var(--jp-ui-font-color2, #555); }
.iw-circuit rect.cg-bg { fill: var(--jp-layout-color0, #fff); }
.iw-circuit path.cg-edge { fill: none; cursor: pointer; }
.iw-circuit path.cg-edge:hover { stroke-opacity: 1 !important; }
.iw-circuit path.cg-sel { stroke: #f0a020 !important; stroke-opacity: 1 !important; }
.iw-circuit circle.cg-node { cursor: pointer; stroke: #555; stroke-width: 0.8; }
.iw-circuit circle.cg-node.cg-dim { opacity: 0.35; }
.iw-circuit circle.cg-sel { stroke: #f0a020; stroke-width: 3; }
.iw-circuit .cg-pinned { stroke: #f0a020 !important; stroke-dasharray: 0; }
.iw-circuit .cg-side { min-width: 300px; max-width: 420px; }
.iw-circuit .cg-box { border: 1px solid var(--jp-border-color2, #e4e4e4); border-radius: 4px; padding: 6px 8px; margin-bottom: 8px; }
.iw-circuit .cg-box h4 { margin: 0 0 4px; font-size: 12px; }
.iw-circuit .cg-side table td { font-variant-numeric: tabular-nums; }
.iw-circuit .cg-readout { font-size: 11px; min-height: 15px; color: var(--jp-ui-font-color1, #333); font-family: var(--jp-code-font-family, monospace); white-space: pre; }
.iw-circuit .cg-help { color: var(--jp-ui-font-color2, #666); font-size: 11px; }
.iw-circuit .cg-pins { font-size: 11px; font-family: var(--jp-code-font-family, monospace); word-break: break-all; }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-circuit", "data-run-count": "0", "data-rendered": "false", "data-k": "0", "data-drawn": "0" });
  withStyle(root, CSS);
  host.append(root);

  let data: GraphReply | null = null;
  let lay: L.Layout | null = null;
  let k = 0;
  let scale = 1;
  let faithReq: number | null = null;
  let edgeReq: number | null = null;
  let nodeReq: number | null = null;
  let inspected: { type: "edge"; eid: number; name: string } | { type: "node"; id: string } | null = null;
  let runCount = 0;
  const edgeEls = new Map<number, SVGPathElement>(); // rank -> path
  const nodeEls = new Map<string, SVGCircleElement>();

  const title = el("div", { class: "cg-title", "data-testid": "title" });
  const slider = el("input", { type: "range", min: "0", max: String(L.SLIDER_STEPS), step: "1", "data-testid": "edge-slider", "aria-label": "number of kept edges" });
  const kBox = el("span", { class: "cg-k", "data-testid": "k-readout" });
  const faith = el("span", { class: "cg-faith", "data-testid": "faithfulness", "data-state": "idle" }, "faithfulness —");
  const clearBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "clear-pins", title: "unpin everything" }, "clear pins");
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  const controls = el("div", { class: "cg-controls" }, el("span", {}, "edges kept"), slider, kBox, faith,
    imageButtons(rpc, root, "circuit", { svg: () => wrap.querySelector("svg") }), clearBtn, status);
  const help = el("div", { class: "cg-help" },
    "Blue edges raise the metric, red lower it; width is |score|. Click an edge for its exact patch, a head for its attention pattern, an MLP for its top neurons.");
  const errors = el("div", { "data-testid": "errors" });
  const wrap = el("div", { class: "cg-wrap" });
  const readout = el("div", { class: "cg-readout", "data-testid": "readout" });
  const edgeBox = el("div", { class: "cg-box", "data-testid": "edge-detail", hidden: "" });
  const nodeBox = el("div", { class: "cg-box", "data-testid": "node-detail", hidden: "" });
  const pinBox = el("div", { class: "cg-box" }, el("h4", {}, "Pinned (widget.circuit)"));
  const pinList = el("div", { class: "cg-pins", "data-testid": "pins" });
  pinBox.append(pinList);
  const side = el("div", { class: "cg-side" }, edgeBox, nodeBox, pinBox);
  root.append(title, controls, help, errors, el("div", { class: "cg-main" }, el("div", {}, wrap, readout), side));
  const showError = (err: unknown): void => showRpcError(errors, err, status);
  const bump = (): void => {
    runCount++;
    root.dataset.runCount = String(runCount);
  };

  const pins = (name: "pinned_edges" | "pinned_nodes"): string[] => [...((model.get(name) as string[] | undefined) ?? [])];
  const nodeId = (i: number): string => (data ? data.nodes.ids[i] : String(i));
  const edgeNameOf = (rank: number): string => {
    if (!data) return "";
    return L.edgeName(nodeId(data.edges.src.data[rank]), nodeId(data.edges.dst.data[rank]));
  };

  // -- drawing ------------------------------------------------------------------------
  function draw(): void {
    if (!data) return;
    const nodes = data.nodes;
    lay = L.layout(nodes.layer.data, nodes.kinds, nodes.index.data, { width: Math.max(600, (host.clientWidth || 1000) - 440) });
    const s = svg("svg", {
      xmlns: SVG_NS, width: Math.ceil(lay.width), height: Math.ceil(lay.height),
      viewBox: `0 0 ${Math.ceil(lay.width)} ${Math.ceil(lay.height)}`, "data-testid": "graph", "font-size": 10,
    });
    s.append(svg("rect", { x: 0, y: 0, width: Math.ceil(lay.width), height: Math.ceil(lay.height), class: "cg-bg" }));
    // column labels: every column when they fit, else inputs, outputs and each layer's heads
    const crowded = lay.colWidth < 18;
    let lastLabelX = -Infinity;
    const labels = svg("g", { fill: "currentColor", "text-anchor": "middle" });
    for (let c = 0; c < lay.cols.count; c++) {
      if (crowded && L.kindRank(lay.cols.kind[c]) === 2) continue;
      const x = lay.cols.count === 1 ? lay.width / 2 : 40 + c * lay.colWidth;
      if (x - lastLabelX < 22) continue; // would overlap the previous label
      lastLabelX = x;
      const t = svg("text", { x: x.toFixed(1), y: 14 });
      t.textContent = L.columnLabel(lay.cols.layer[c], lay.cols.kind[c]);
      labels.append(t);
    }
    const maxRows = Math.max(1, ...Array.from(lay.cols.rows));
    const rowNames = L.rowLabels(nodes.ids, nodes.index.data, maxRows);
    for (let r = 0; r < maxRows && maxRows > 1; r++) {
      if (!rowNames[r]) continue;
      const t = svg("text", { x: 4, y: (28 + (r + 0.5) * lay.rowHeight + 3).toFixed(1), "text-anchor": "start" });
      t.textContent = rowNames[r];
      labels.append(t);
    }
    s.append(labels);
    const edges = svg("g", { "data-testid": "edges" });
    const nodeG = svg("g", { "data-testid": "nodes" });
    s.append(edges, nodeG);
    nodeEls.clear();
    const values = nodes.value?.data;
    const vScale = values ? L.maxAbs(values) : 1;
    for (let i = 0; i < nodes.ids.length; i++) {
      const fill = values ? L.edgeColor(values[i]) : "#fff";
      const c = svg("circle", {
        class: "cg-node", cx: lay.x[i].toFixed(1), cy: lay.y[i].toFixed(1), r: lay.radius.toFixed(1), fill,
        "fill-opacity": values ? L.edgeOpacity(values[i], vScale).toFixed(2) : 1,
        "data-testid": "node", "data-node": nodes.ids[i], "data-kind": nodes.kinds[i], "data-index": i,
      });
      const tt = svg("title");
      tt.textContent = `${nodes.ids[i]} · ${nodes.labels[i]}`;
      c.append(tt);
      nodeEls.set(nodes.ids[i], c);
      nodeG.append(c);
      const caption = L.nodeCaption(nodes.kinds[i], nodes.layer.data[i]);
      if (caption) {  // an MLP's row has no label of its own (it sits centred among the head rows)
        const t = svg("text", { x: lay.x[i].toFixed(1), y: (lay.y[i] + lay.radius + 10).toFixed(1),
          "text-anchor": "middle", fill: "currentColor", "font-size": 9, "data-testid": "node-caption" });
        t.textContent = caption;
        labels.append(t);
      }
    }
    wrap.replaceChildren(s);
    drawEdges();
  }

  function drawEdges(): void {
    if (!data || !lay) return;
    const s = wrap.querySelector("svg");
    const g = s?.querySelector("g[data-testid=edges]");
    if (!g) return;
    const E = data.edges;
    const n = L.drawnCount(k, E.weight.data.length, data.max_draw);
    // Draw the weakest first so the strongest edges lie on top (and take the clicks).
    const frag = document.createDocumentFragment();
    edgeEls.clear();
    const pinned = new Set(pins("pinned_edges"));
    for (let r = n - 1; r >= 0; r--) {
      const a = E.src.data[r], b = E.dst.data[r], w = E.weight.data[r];
      const name = edgeNameOf(r);
      const p = svg("path", {
        class: pinned.has(name) ? "cg-edge cg-pinned" : "cg-edge",
        d: L.edgePath(lay.x[a], lay.y[a], lay.x[b], lay.y[b]),
        stroke: L.edgeColor(w), "stroke-width": L.edgeWidth(w, scale).toFixed(2),
        "stroke-opacity": L.edgeOpacity(w, scale).toFixed(2),
        "data-testid": "edge", "data-rank": r, "data-eid": E.eid.data[r], "data-name": name, "data-weight": w,
      });
      edgeEls.set(r, p);
      frag.append(p);
    }
    g.replaceChildren(frag);
    root.dataset.k = String(k);
    root.dataset.drawn = String(n);
    const t = L.thresholdAt(E.weight.data, k);
    kBox.textContent = `${count(k)} of ${count(data.n_edges)}` + (t !== null ? ` · |score| ≥ ${L.magnitude(t)}` : "") +
      (n < k ? ` · drawing the top ${count(n)}` : "");
    markSelection();
  }

  function markSelection(): void {
    const pinnedNodes = new Set(pins("pinned_nodes"));
    for (const [id, c] of nodeEls) {
      c.classList.toggle("cg-sel", inspected?.type === "node" && inspected.id === id);
      c.classList.toggle("cg-pinned", pinnedNodes.has(id));
    }
    for (const p of edgeEls.values()) p.classList.toggle("cg-sel", inspected?.type === "edge" && Number(p.dataset.eid) === inspected.eid);
  }

  function renderPins(): void {
    const e = pins("pinned_edges"), n = pins("pinned_nodes");
    pinList.textContent = e.length + n.length === 0 ? "nothing pinned (inspect an edge or node, then pin it)" :
      [...n.map((x) => `node ${x}`), ...e.map((x) => `edge ${x}`)].join("\n");
    pinList.dataset.edges = String(e.length);
    pinList.dataset.nodes = String(n.length);
    const pinned = new Set(e);
    for (const p of edgeEls.values()) p.classList.toggle("cg-pinned", pinned.has(p.dataset.name ?? ""));
    markSelection();
    const pb = root.querySelector<HTMLButtonElement>("[data-testid=pin]");
    if (pb && inspected) pb.textContent = isPinned() ? "unpin" : "pin";
  }

  function isPinned(): boolean {
    if (!inspected) return false;
    return inspected.type === "edge" ? pins("pinned_edges").includes(inspected.name) : pins("pinned_nodes").includes(inspected.id);
  }

  function pinButton(): HTMLButtonElement {
    const b = el("button", { class: "iw-btn", type: "button", "data-testid": "pin" }, isPinned() ? "unpin" : "pin");
    b.addEventListener("click", () => {
      if (!inspected) return;
      const name = inspected.type === "edge" ? "pinned_edges" : "pinned_nodes";
      model.set(name, L.togglePin(pins(name), inspected.type === "edge" ? inspected.name : inspected.id));
      model.save_changes();
      renderPins();
    });
    return b;
  }

  // -- kernel requests -------------------------------------------------------------------
  function load(): void {
    status.textContent = "loading…";
    root.dataset.rendered = "false";
    const t0 = performance.now();
    rpc.request<GraphReply>("graph", {}).promise.then((r) => {
      data = r;
      scale = L.maxAbs(r.edges.weight.data);
      k = Math.max(0, Math.min(r.n_edges, Math.round(r.k)));
      slider.value = String(L.kToSlider(k, r.n_edges));
      slider.disabled = r.n_edges === 0;
      title.textContent = r.title;
      draw();
      renderPins();
      errors.replaceChildren();
      status.textContent = `${count(r.nodes.ids.length)} nodes · ${count(r.n_edges)} edges · top ${count(r.edges.weight.data.length)} sent`;
      // after the frame that paints it: decode, layout, SVG build, style, layout and paint
      requestAnimationFrame(() => setTimeout(() => {
        root.dataset.renderMs = String(Math.round(performance.now() - t0));
        root.dataset.rendered = "true";
        bump();
      }, 0));
      if (r.actions.faithfulness) askFaithfulness();
    }).catch(showError);
  }

  function askFaithfulness(): void {
    if (!data?.actions.faithfulness) return;
    if (faithReq !== null) rpc.cancel(faithReq);
    const want = k;
    const req = rpc.request<FaithReply>("faithfulness", { k: want });
    faithReq = req.id;
    faith.dataset.state = "running";
    faith.textContent = `faithfulness … (${count(want)} edges)`;
    req.promise.then((f) => {
      if (faithReq !== req.id) return;
      faithReq = null;
      faith.dataset.state = "done";
      faith.dataset.value = String(f.faithfulness);
      faith.dataset.k = String(f.k);
      faith.textContent = `faithfulness ${L.signed(f.faithfulness)} (${count(f.k)} edges)`;
      errors.replaceChildren();
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (faithReq === req.id) faithReq = null;
      faith.dataset.state = "error";
      showError(err);
    });
  }
  const askFaithfulnessSoon = debounce(askFaithfulness, 150);

  function inspectEdge(rank: number): void {
    if (!data) return;
    const eid = data.edges.eid.data[rank];
    const name = edgeNameOf(rank);
    inspected = { type: "edge", eid, name };
    markSelection();
    const w = data.edges.weight.data[rank];
    const est = el("td", { class: "num", "data-testid": "edge-estimated", "data-value": String(w) }, L.signed(w));
    const exact = el("td", { class: "num", "data-testid": "edge-exact", "data-state": "running" }, "running…");
    const table = el("table", { class: "iw-table" },
      el("tr", {}, el("th", {}, "effect on the metric"), el("th", {}, `estimated (${data.method})`), el("th", {}, "exact patch")),
      el("tr", {}, el("td", {}, "patch this edge"), est, exact));
    const note = el("div", { class: "cg-help", "data-testid": "edge-note" });
    const head = el("h4", {}, `edge ${name}`);
    edgeBox.replaceChildren(head, table, note, pinButton());
    edgeBox.hidden = false;
    edgeBox.dataset.eid = String(eid);
    if (!data.actions.exact) {
      exact.textContent = "—";
      exact.dataset.state = "none";
      note.textContent = "no model or task: exact patching is not available";
      return;
    }
    if (edgeReq !== null) rpc.cancel(edgeReq);
    const req = rpc.request<EdgeReply>("edge", { eid });
    edgeReq = req.id;
    req.promise.then((r) => {
      if (edgeReq !== req.id) return;
      edgeReq = null;
      exact.textContent = L.signed(r.exact);
      exact.dataset.value = String(r.exact);
      exact.dataset.state = "done";
      note.textContent = `metric: clean ${L.signed(r.clean_metric)}, corrupted ${L.signed(r.corrupted_metric)}, ` +
        `with this edge patched ${L.signed(r.exact_metric)}`;
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (edgeReq === req.id) edgeReq = null;
      exact.textContent = "error";
      exact.dataset.state = "error";
      showError(err);
    });
  }

  function inspectNode(i: number): void {
    if (!data) return;
    const id = nodeId(i);
    inspected = { type: "node", id };
    markSelection();
    const v = data.nodes.value?.data[i];
    const body = el("div", { "data-testid": "node-body" }, "…");
    nodeBox.replaceChildren(el("h4", {}, `${id} · ${data.nodes.labels[i]}`),
      el("div", {}, `kind ${data.nodes.kinds[i]} · layer ${data.nodes.layer.data[i]}` + (v !== undefined ? ` · score ${L.signed(v)}` : "")),
      body, pinButton());
    nodeBox.hidden = false;
    nodeBox.dataset.node = id;
    const kind = data.nodes.kinds[i];
    const wants = (kind === "attn" || kind === "head") ? data.actions.heads : kind === "mlp" ? data.actions.neurons : false;
    if (!wants) {
      body.textContent = "";
      return;
    }
    if (nodeReq !== null) rpc.cancel(nodeReq);
    const req = rpc.request<NodeReply>(kind === "mlp" ? "neurons" : "node", { node: id });
    nodeReq = req.id;
    nodeBox.dataset.state = "running";
    req.promise.then((r) => {
      if (nodeReq !== req.id) return;
      nodeReq = null;
      nodeBox.dataset.state = "done";
      if (r.neurons && r.values) {
        const rows = Array.from(r.neurons.data).map((n, j) => el("tr", { "data-testid": "neuron-row", "data-neuron": String(n) },
          el("td", { class: "num" }, String(j + 1)), el("td", {}, `neuron ${n}`),
          el("td", { class: "num", "data-value": String(r.values!.data[j]) }, L.signed(r.values!.data[j]))));
        body.replaceChildren(el("div", { class: "cg-help" }, r.how ?? ""),
          el("table", { class: "iw-table", "data-testid": "neuron-table" },
            el("tr", {}, el("th", {}, "#"), el("th", {}, "neuron"), el("th", {}, "effect")), ...rows));
      } else {
        body.textContent = r.opened ? `attention pattern of L${r.layer} H${r.head} opened below, on the prompt:` : "";
        if (r.prompt) body.append(el("div", { class: "cg-pins" }, r.prompt));
      }
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (nodeReq === req.id) nodeReq = null;
      nodeBox.dataset.state = "error";
      body.textContent = "";
      showError(err);
    });
  }

  // -- events ------------------------------------------------------------------------------
  slider.addEventListener("input", () => {
    if (!data) return;
    k = L.sliderToK(Number(slider.value), data.n_edges);
    drawEdges();
    askFaithfulnessSoon();
  });
  wrap.addEventListener("click", (ev) => {
    const t = ev.target as Element;
    const p = t.closest?.("path[data-testid=edge]") as SVGPathElement | null;
    if (p) {
      inspectEdge(Number(p.dataset.rank));
      return;
    }
    const c = t.closest?.("circle[data-testid=node]") as SVGCircleElement | null;
    if (c) inspectNode(Number(c.dataset.index));
  });
  wrap.addEventListener("mouseover", (ev) => {
    const t = ev.target as Element;
    const p = t.closest?.("path[data-testid=edge]") as SVGPathElement | null;
    if (p && data) {
      const r = Number(p.dataset.rank);
      readout.textContent = `${p.dataset.name} · score ${L.signed(data.edges.weight.data[r])} · rank ${r + 1}`;
      return;
    }
    const c = t.closest?.("circle[data-testid=node]") as SVGCircleElement | null;
    if (c && data) {
      const i = Number(c.dataset.index);
      const v = data.nodes.value?.data[i];
      readout.textContent = `${data.nodes.ids[i]} · ${data.nodes.labels[i]}` + (v !== undefined ? ` · score ${L.signed(v)}` : "");
    }
  });
  clearBtn.addEventListener("click", () => {
    model.set("pinned_edges", []);
    model.set("pinned_nodes", []);
    model.save_changes();
    renderPins();
  });

  const onPins = () => renderPins();
  const onK = () => {
    if (!data) return;
    const want = Math.max(0, Math.min(data.n_edges, Number(model.get("k") ?? k)));
    if (want === k) return;
    k = want;
    slider.value = String(L.kToSlider(k, data.n_edges));
    drawEdges();
    askFaithfulness();
  };
  const onScores = () => load();
  model.on("change:pinned_edges", onPins);
  model.on("change:pinned_nodes", onPins);
  model.on("change:k", onK);
  model.on("change:version", onScores);

  load();

  return () => {
    model.off("change:pinned_edges", onPins);
    model.off("change:pinned_nodes", onPins);
    model.off("change:k", onK);
    model.off("change:version", onScores);
    rpc.dispose();
    root.remove();
  };
}

export default { render };
