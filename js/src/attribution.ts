// AttributionGraph: an attribution graph of one prompt (features, error nodes, tokens, logits),
// pruned live by the kernel. Input tokens run along the bottom by position, the logits along the
// top; features and error nodes sit at (position, layer), spread over their cell. Node size is
// influence; edges (on a canvas, under the SVG nodes) are blue when positive, red when negative,
// and as wide as |weight|. The node / edge threshold sliders ask the kernel to re-prune. Hover a
// node for its label and (with a scan store) its top exemplars; click it to select it and, for a
// feature, open its FeatureDashboard below; shift-click pins it. The selected nodes can be pinned,
// grouped into a supernode, or edited (zero / scale ×k) on the real model: top next tokens before
// and after, each logit's measured change beside the graph's prediction, and a streamed
// generation with the edit. Export writes the attribution-graph JSON in the kernel.
//
// Browser-test hooks: root .iw-root.iw-attribution[data-run-count][data-rendered][data-render-ms]
// [data-nodes][data-edges]; [data-testid=node-threshold|edge-threshold] (range inputs, 1..100);
// [data-testid=counts][data-nodes][data-edges]; svg[data-testid=graph] with
// [data-testid=node][data-node][data-kind]; canvas[data-testid=edges][data-drawn];
// [data-testid=hover]; [data-testid=selection]; [data-testid=pin-selected|clear-selection];
// [data-testid=group-label] + [data-testid=group]; [data-testid=propose]; [data-testid=pins];
// [data-testid=supernodes]; [data-testid=op] (select zero/scale), [data-testid=factor];
// [data-testid=intervene]; [data-testid=intervention][data-state] with tr[data-testid=before-row|
// after-row|logit-row]; [data-testid=generate] and [data-testid=generated][data-state];
// [data-testid=export-path], [data-testid=export], [data-testid=export-result][data-path];
// [data-testid=errors].
import { debounce, el, showRpcError, tokenSpan, visibleToken, withStyle } from "./lib/dom";
import * as A from "./lib/attribution-logic";
import * as D from "./lib/graph-draw";
import type { NDArray } from "./lib/arrays";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { imageButtons } from "./lib/snapshot";

interface Payload {
  thresholds: { node: number; edge: number };
  counts: { nodes: number; edges: number; sent_edges: number; total_nodes: number; total_features: number };
  scores: { replacement: number | null; completeness: number | null };
  nodes: { index: NDArray; kind: NDArray; layer: NDArray; pos: NDArray; feature: NDArray; influence: NDArray; activation: NDArray };
  labels: Record<string, string>;
  edges: { src: NDArray; dst: NDArray; weight: NDArray };
}

interface GraphReply extends Payload {
  title: string;
  prompt: string;
  n_layers: number;
  n_pos: number;
  tokens: string[];
  token_ids: number[];
  logit_tokens: string[];
  logit_ids: number[];
  logit_probs: NDArray;
  actions: { intervene: boolean; generate: boolean; dashboard: boolean; exemplars: boolean; propose: boolean };
}

interface Exemplar { value: number | null; position: number; tokens: string[] }
interface HoverReply { id: string; label: string; exemplars: Exemplar[] }
interface InterveneReply {
  nodes: Record<string, number>; op: string; factor: number;
  before: [string, number][]; after: [string, number][];
  logit_tokens: string[]; measured: NDArray; predicted: NDArray;
}

const CSS = `
.iw-attribution .ag-title { font-weight: 600; margin-bottom: 4px; }
.iw-attribution .ag-controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 4px 0; }
.iw-attribution .ag-controls input[type=range] { width: 160px; }
.iw-attribution .ag-num { font-variant-numeric: tabular-nums; }
.iw-attribution .ag-main { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.iw-attribution .ag-wrap { overflow: auto; max-width: 100%; max-height: 760px; border: 1px solid var(--jp-border-color2, #eee); }
.iw-attribution .ag-stage { position: relative; }
.iw-attribution .ag-stage canvas, .iw-attribution .ag-stage svg { position: absolute; left: 0; top: 0; }
.iw-attribution svg text { font-family: var(--jp-ui-font-family, sans-serif); }
.iw-attribution svg { color: var(--jp-ui-font-color1, #333); }
.iw-attribution svg .ag-labels { color: var(--jp-ui-font-color2, #555); }
.iw-attribution .ag-node { cursor: pointer; stroke: #555; stroke-width: 0.7; }
.iw-attribution .ag-node.ag-sel { stroke: #111; stroke-width: 2.5; }
.iw-attribution .ag-node.ag-pin { stroke: #f0a020; stroke-width: 2.5; }
.iw-attribution .ag-node.ag-sel.ag-pin { stroke: #b06000; stroke-width: 3.2; }
.iw-attribution .ag-node.ag-hot { stroke: #111; stroke-width: 1.6; }
.iw-attribution .ag-side { min-width: 300px; max-width: 440px; }
.iw-attribution .ag-box { border: 1px solid var(--jp-border-color2, #e4e4e4); border-radius: 4px; padding: 6px 8px; margin-bottom: 8px; }
.iw-attribution .ag-box h4 { margin: 0 0 4px; font-size: 12px; }
.iw-attribution .ag-help { color: var(--jp-ui-font-color2, #666); font-size: 11px; }
.iw-attribution .ag-mono { font-size: 11px; font-family: var(--jp-code-font-family, monospace); word-break: break-all; }
.iw-attribution .ag-ex { font-family: var(--jp-code-font-family, monospace); font-size: 11px; white-space: pre-wrap; margin: 2px 0; }
.iw-attribution .ag-ex .ag-hotok { background: #ffd27a; color: #111; border-radius: 2px; }
.iw-attribution .ag-row { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin: 3px 0; }
.iw-attribution input.ag-factor { width: 52px; }
.iw-attribution input.ag-text { width: 140px; }
.iw-attribution .ag-tables { display: flex; gap: 8px; flex-wrap: wrap; }
.iw-attribution .ag-gen { white-space: pre-wrap; font-family: var(--jp-code-font-family, monospace); font-size: 11px; }
`;

const KIND_FILL = ["#f3a64a", "#b8b8b8", "#7bc47f", "#9b7bd4"];

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-attribution", "data-run-count": "0", "data-rendered": "false", "data-nodes": "0", "data-edges": "0" });
  withStyle(root, CSS);
  host.append(root);

  let g: GraphReply | null = null;
  let lay: A.GraphLayout | null = null;
  let ids: string[] = [];
  let localOf = new Map<string, number>();
  let scale = 1;
  let hovered = -1;
  let pruneReq: number | null = null;
  let hoverReq: number | null = null;
  let runCount = 0;
  const hoverCache = new Map<string, HoverReply>();
  const nodeEls: SVGElement[] = [];

  // -- controls -------------------------------------------------------------------------------
  const title = el("div", { class: "ag-title", "data-testid": "title" });
  const nodeSlider = el("input", { type: "range", min: "1", max: String(A.THRESHOLD_STEPS), step: "1", "data-testid": "node-threshold", "aria-label": "node threshold" });
  const edgeSlider = el("input", { type: "range", min: "1", max: String(A.THRESHOLD_STEPS), step: "1", "data-testid": "edge-threshold", "aria-label": "edge threshold" });
  const nodeVal = el("span", { class: "ag-num", "data-testid": "node-threshold-value" });
  const edgeVal = el("span", { class: "ag-num", "data-testid": "edge-threshold-value" });
  const counts = el("span", { class: "ag-num", "data-testid": "counts" });
  const scoresBox = el("span", { class: "ag-num ag-help", "data-testid": "scores" });
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  root.append(title, el("div", { class: "ag-controls" },
    el("span", {}, "nodes"), nodeSlider, nodeVal, el("span", {}, "edges"), edgeSlider, edgeVal, counts, scoresBox,
    imageButtons(rpc, root, "attribution", { svg: () => stage.querySelector("svg"), underlay: () => [canvas] }), status),
  el("div", { class: "ag-help" }, "Node size: influence on the logits. Edges: blue raise, red lower the target; width |weight|. " +
      "Click: select (a feature opens its dashboard below); shift-click: pin. Tokens at the bottom, logits on top."));
  const errors = el("div", { "data-testid": "errors" });
  const wrap = el("div", { class: "ag-wrap" });
  const stage = el("div", { class: "ag-stage" });
  const canvas = el("canvas", { "data-testid": "edges" });
  wrap.append(stage);
  const readout = el("div", { class: "ag-mono", "data-testid": "readout" });

  // side panel
  const hoverBox = el("div", { class: "ag-box", "data-testid": "hover" }, el("div", { class: "ag-help" }, "hover a node"));
  const selBox = el("div", { class: "ag-mono", "data-testid": "selection" });
  const pinSel = el("button", { class: "iw-btn", type: "button", "data-testid": "pin-selected" }, "pin / unpin");
  const clearSel = el("button", { class: "iw-btn", type: "button", "data-testid": "clear-selection" }, "clear");
  const groupLabel = el("input", { class: "ag-text", type: "text", placeholder: "supernode label", "data-testid": "group-label" });
  const groupBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "group" }, "group");
  const proposeBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "propose" }, "propose supernodes");
  const opSel = el("select", { "data-testid": "op" }, el("option", { value: "zero" }, "zero"), el("option", { value: "scale" }, "scale ×"));
  const factorIn = el("input", { class: "ag-factor", type: "text", value: "2", "data-testid": "factor" });
  const interveneBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "intervene" }, "intervene");
  const genBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "generate" }, "generate");
  const result = el("div", { "data-testid": "intervention", "data-state": "idle" });
  const genOut = el("div", { class: "ag-gen", "data-testid": "generated", "data-state": "idle" });
  const selectionPanel = el("div", { class: "ag-box" }, el("h4", {}, "Selected"), selBox,
    el("div", { class: "ag-row" }, pinSel, clearSel),
    el("div", { class: "ag-row" }, groupLabel, groupBtn, proposeBtn),
    el("div", { class: "ag-row" }, el("span", {}, "edit"), opSel, factorIn, interveneBtn, genBtn), result, genOut);
  const pinList = el("div", { class: "ag-mono", "data-testid": "pins" });
  const snList = el("div", { "data-testid": "supernodes" });
  const pinsPanel = el("div", { class: "ag-box" }, el("h4", {}, "Pinned"), pinList, el("h4", {}, "Supernodes"), snList);
  const exportPath = el("input", { class: "ag-text", type: "text", placeholder: "graph.json", "data-testid": "export-path" });
  const exportBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "export" }, "export JSON");
  const exportRes = el("div", { class: "ag-mono", "data-testid": "export-result" });
  const exportPanel = el("div", { class: "ag-box" }, el("h4", {}, "Export (attribution-graph JSON)"),
    el("div", { class: "ag-row" }, exportPath, exportBtn), exportRes);
  const side = el("div", { class: "ag-side" }, hoverBox, selectionPanel, pinsPanel, exportPanel);
  root.append(errors, el("div", { class: "ag-main" }, el("div", {}, wrap, readout), side));

  const showError = (err: unknown): void => showRpcError(errors, err, status);
  const bump = (): void => {
    runCount++;
    root.dataset.runCount = String(runCount);
  };
  const list = (name: string): string[] => [...((model.get(name) as string[] | undefined) ?? [])];
  const groups = (): A.Supernode[] => ((model.get("supernodes") as A.Supernode[] | undefined) ?? []).map((s) => [...s]);
  const kindOf = (id: string): number | undefined => {
    const i = localOf.get(id);
    return i === undefined || !g ? undefined : g.nodes.kind.data[i];
  };

  // -- data ---------------------------------------------------------------------------------
  function setPayload(p: Payload): void {
    if (!g) return;
    Object.assign(g, p);
    const N = p.nodes;
    ids = Array.from({ length: N.index.data.length }, (_, i) =>
      A.nodeId(N.kind.data[i], N.layer.data[i], N.pos.data[i], N.feature.data[i], g!.n_layers, g!.n_pos));
    localOf = new Map(ids.map((id, i) => [id, i]));
    scale = D.maxAbs(p.edges.weight.data);
    hovered = -1;
  }

  function nodeText(i: number): string {
    if (!g) return "";
    const N = g.nodes, k = N.kind.data[i];
    const where = `pos ${N.pos.data[i]}`;
    if (k === A.TOKEN) return `token "${visibleToken(g.tokens[N.pos.data[i]] ?? "")}" · ${where}`;
    if (k === A.LOGIT) {
      const j = g.logit_ids.indexOf(N.feature.data[i]);
      return `logit "${visibleToken(g.logit_tokens[j] ?? "")}" · p ${D.magnitude(g.logit_probs.data[j])}`;
    }
    const inf = `influence ${D.magnitude(N.influence.data[i])}`;
    if (k === A.ERROR) return `error L${N.layer.data[i]} · ${where} · ${inf}`;
    return `feature ${N.feature.data[i]} · L${N.layer.data[i]} · ${where} · act ${D.magnitude(N.activation.data[i])} · ${inf}`;
  }

  // -- drawing ---------------------------------------------------------------------------------
  function draw(): void {
    if (!g) return;
    const N = g.nodes;
    lay = A.graphLayout({ kind: N.kind.data, layer: N.layer.data, pos: N.pos.data, influence: N.influence.data },
      g.n_layers, g.n_pos, { width: Math.max(640, (host.clientWidth || 1100) - 470) });
    const W = Math.ceil(lay.width), H = Math.ceil(lay.height);
    stage.style.width = `${W}px`;
    stage.style.height = `${H}px`;
    const s = D.svgEl("svg", { xmlns: D.SVG_NS, width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-testid": "graph", "font-size": 10 });
    // row and column labels: layers on the left, the prompt's tokens under their columns
    const labels = D.svgEl("g", { fill: "currentColor", class: "ag-labels" });
    A.rowLabels(g.n_layers).forEach((name, r) => {
      const t = D.svgEl("text", { x: 4, y: (lay!.rowY[r] + 3).toFixed(1) });
      t.textContent = name;
      labels.append(t);
    });
    for (let p = 0; p < g.n_pos; p++) {
      const t = D.svgEl("text", { x: lay.colX[p].toFixed(1), y: (lay.rowY[0] + 20).toFixed(1), "text-anchor": "middle",
        "data-testid": "token-label" });
      t.textContent = visibleToken(g.tokens[p] ?? "");
      labels.append(t);
    }
    const boxes = D.svgEl("g", { "data-testid": "supernode-boxes" });
    const nodeG = D.svgEl("g", { "data-testid": "nodes" });
    s.append(boxes, labels, nodeG);
    nodeEls.length = 0;
    for (let i = 0; i < ids.length; i++) {
      const k = N.kind.data[i];
      const x = lay.x[i], y = lay.y[i], r = lay.r[i];
      const attrs: Record<string, string | number> = { class: "ag-node", fill: KIND_FILL[k] ?? "#ccc", "data-testid": "node",
        "data-node": ids[i], "data-kind": A.KIND_NAMES[k] ?? "", "data-local": i };
      const shape = k === A.ERROR || k === A.TOKEN
        ? D.svgEl("rect", { ...attrs, x: (x - r).toFixed(1), y: (y - r).toFixed(1), width: (2 * r).toFixed(1), height: (2 * r).toFixed(1) })
        : D.svgEl("circle", { ...attrs, cx: x.toFixed(1), cy: y.toFixed(1), r: r.toFixed(1) });
      nodeEls.push(shape);
      nodeG.append(shape);
      if (k === A.LOGIT) {
        const j = g.logit_ids.indexOf(N.feature.data[i]);
        const t = D.svgEl("text", { x: x.toFixed(1), y: (y - r - 4).toFixed(1), "text-anchor": "middle", fill: "currentColor", "data-testid": "logit-label" });
        t.textContent = visibleToken(g.logit_tokens[j] ?? "");
        labels.append(t);
      }
    }
    stage.replaceChildren(canvas, s);
    drawEdges();
    decorate();
  }

  function drawEdges(): void {
    if (!g || !lay) return;
    const ctx = D.sizeCanvas(canvas, lay.width, lay.height);
    if (!ctx) return;
    const E = g.edges;
    const x = lay.x, y = lay.y;
    const focus = hovered >= 0 ? new Set(A.incidentEdges(E.src.data, E.dst.data, hovered)) : null;
    ctx.clearRect(0, 0, lay.width, lay.height);
    ctx.lineCap = "round";
    for (const b of D.edgeBuckets(E.weight.data, scale, 8)) {
      ctx.strokeStyle = b.sign > 0 ? D.POSITIVE : b.sign < 0 ? D.NEGATIVE : D.NEUTRAL;
      ctx.lineWidth = b.width;
      ctx.globalAlpha = focus ? 0.08 : b.opacity * 0.8;
      ctx.beginPath();
      for (const e of b.edges) {
        const a = E.src.data[e], c = E.dst.data[e];
        ctx.moveTo(x[a], y[a]);
        ctx.lineTo(x[c], y[c]);
      }
      ctx.stroke();
    }
    if (focus && focus.size) {  // the hovered node's edges on top, fully opaque
      for (const b of D.edgeBuckets(E.weight.data, scale, 8, [...focus])) {
        ctx.strokeStyle = b.sign > 0 ? D.POSITIVE : b.sign < 0 ? D.NEGATIVE : D.NEUTRAL;
        ctx.lineWidth = Math.max(1, b.width);
        ctx.globalAlpha = 0.95;
        ctx.beginPath();
        for (const e of b.edges) {
          const a = E.src.data[e], c = E.dst.data[e];
          ctx.moveTo(x[a], y[a]);
          ctx.lineTo(x[c], y[c]);
        }
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    canvas.dataset.drawn = String(E.weight.data.length);
  }

  function decorate(): void {
    if (!g || !lay) return;
    const pins = new Set(list("pinned")), sel = new Set(list("selected"));
    nodeEls.forEach((c, i) => {
      c.classList.toggle("ag-pin", pins.has(ids[i]));
      c.classList.toggle("ag-sel", sel.has(ids[i]));
      c.classList.toggle("ag-hot", i === hovered);
    });
    // supernode boxes
    const boxes = stage.querySelector("g[data-testid=supernode-boxes]");
    if (boxes) {
      const items: SVGElement[] = [];
      groups().forEach((sn, j) => {
        const members = sn.slice(1).map((id) => localOf.get(id)).filter((v): v is number => v !== undefined);
        const b = A.groupBox(members, lay!.x, lay!.y, lay!.r);
        if (!b) return;
        const color = A.GROUP_COLORS[j % A.GROUP_COLORS.length];
        items.push(D.svgEl("rect", { x: b.x.toFixed(1), y: b.y.toFixed(1), width: b.w.toFixed(1), height: b.h.toFixed(1), rx: 4,
          fill: color, "fill-opacity": 0.15, stroke: color, "stroke-dasharray": "3 2", "data-testid": "supernode-box" }));
        const t = D.svgEl("text", { x: b.x.toFixed(1), y: (b.y - 2).toFixed(1), fill: color, "font-size": 9 });
        t.textContent = sn[0];
        items.push(t);
      });
      boxes.replaceChildren(...items);
    }
    renderLists();
  }

  function renderLists(): void {
    const sel = list("selected"), pins = list("pinned"), sns = groups();
    selBox.textContent = sel.length ? sel.join(", ") : "nothing selected (click nodes)";
    selBox.dataset.count = String(sel.length);
    pinList.textContent = pins.length ? pins.join(", ") : "nothing pinned (shift-click a node)";
    pinList.dataset.count = String(pins.length);
    snList.dataset.count = String(sns.length);
    snList.replaceChildren(...sns.map((sn) => {
      const x = el("button", { class: "iw-btn", type: "button", title: "ungroup", "data-testid": "ungroup" }, "×");
      x.addEventListener("click", () => call("ungroup", { label: sn[0] }));
      return el("div", { class: "ag-row", "data-testid": "supernode", "data-label": sn[0] },
        el("strong", {}, sn[0]), el("span", { class: "ag-mono" }, sn.slice(1).join(", ")), x);
    }));
    const act = g?.actions;
    interveneBtn.disabled = !act?.intervene;
    genBtn.disabled = !act?.generate;
    proposeBtn.disabled = !act?.propose;
    if (act && !act.propose) proposeBtn.title = "workbench.graphs.propose_supernodes is not available";
  }

  function showCounts(): void {
    if (!g) return;
    const c = g.counts;
    counts.textContent = `${D.count(c.nodes)} of ${D.count(c.total_nodes)} nodes · ${D.count(c.edges)} edges` +
      (c.sent_edges < c.edges ? ` (top ${D.count(c.sent_edges)} drawn)` : "");
    counts.dataset.nodes = String(c.nodes);
    counts.dataset.edges = String(c.edges);
    root.dataset.nodes = String(c.nodes);
    root.dataset.edges = String(c.edges);
    const sc = g.scores;
    scoresBox.textContent = `replacement ${D.magnitude(sc.replacement)} · completeness ${D.magnitude(sc.completeness)}`;
    nodeSlider.value = String(A.thresholdToSlider(g.thresholds.node));
    edgeSlider.value = String(A.thresholdToSlider(g.thresholds.edge));
    nodeVal.textContent = g.thresholds.node.toFixed(2);
    edgeVal.textContent = g.thresholds.edge.toFixed(2);
  }

  function painted(t0: number): void {
    requestAnimationFrame(() => setTimeout(() => {
      root.dataset.renderMs = String(Math.round(performance.now() - t0));
      root.dataset.rendered = "true";
      bump();
    }, 0));
  }

  // -- kernel requests ---------------------------------------------------------------------------
  function call(method: string, params: Record<string, unknown>): Promise<any> {
    return rpc.request(method, params).promise.then((r) => {
      errors.replaceChildren();
      return r;
    }).catch((err) => {
      showError(err);
      throw err;
    });
  }

  function load(): void {
    status.textContent = "loading…";
    root.dataset.rendered = "false";
    const t0 = performance.now();
    rpc.request<GraphReply>("graph", {}).promise.then((r) => {
      g = r;
      setPayload(r);
      title.textContent = r.title;
      exportPath.placeholder = "default: a name from the prompt";
      showCounts();
      draw();
      errors.replaceChildren();
      status.textContent = "";
      painted(t0);
    }).catch(showError);
  }

  function prune(): void {
    if (!g) return;
    const nt = A.sliderToThreshold(Number(nodeSlider.value)), et = A.sliderToThreshold(Number(edgeSlider.value));
    nodeVal.textContent = nt.toFixed(2);
    edgeVal.textContent = et.toFixed(2);
    if (pruneReq !== null) rpc.cancel(pruneReq);
    const req = rpc.request<Payload>("prune", { node_threshold: nt, edge_threshold: et });
    pruneReq = req.id;
    status.textContent = "pruning…";
    root.dataset.rendered = "false";
    const t0 = performance.now();
    req.promise.then((p) => {
      if (pruneReq !== req.id) return;
      pruneReq = null;
      setPayload(p);
      showCounts();
      draw();
      errors.replaceChildren();
      status.textContent = "";
      painted(t0);
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (pruneReq === req.id) pruneReq = null;
      showError(err);
    });
  }
  const pruneSoon = debounce(prune, 120);

  function hover(i: number): void {
    if (!g) return;
    hovered = i;
    drawEdges();
    decorate();
    const id = ids[i];
    readout.textContent = `${id} · ${nodeText(i)}`;
    const label = g.labels[String(i)] ?? "";
    const body = el("div", { "data-testid": "hover-body" });
    hoverBox.replaceChildren(el("h4", { "data-testid": "hover-id" }, id), el("div", {}, nodeText(i)),
      el("div", { "data-testid": "hover-label" }, label ? `label: ${label}` : ""), body);
    hoverBox.dataset.node = id;
    if (g.nodes.kind.data[i] !== A.FEATURE || !g.actions.exemplars) return;
    const hit = hoverCache.get(id);
    if (hit) {
      showExemplars(body, hit);
      return;
    }
    askHover(id, body);
  }
  const askHover = debounce((id: string, body: HTMLElement) => {
    if (hoverReq !== null) rpc.cancel(hoverReq);
    const req = rpc.request<HoverReply>("hover", { node: id });
    hoverReq = req.id;
    body.textContent = "exemplars…";
    req.promise.then((r) => {
      if (hoverReq === req.id) hoverReq = null;
      hoverCache.set(id, r);
      if (hoverBox.dataset.node === id) showExemplars(body, r);
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      body.textContent = "";
      showError(err);
    });
  }, 120);

  function showExemplars(body: HTMLElement, r: HoverReply): void {
    if (!r.exemplars.length) {
      body.textContent = "no exemplars in the scan store for this feature";
      return;
    }
    body.replaceChildren(el("div", { class: "ag-help" }, "top exemplars (scan store)"), ...r.exemplars.map((ex) => {
      const line = el("div", { class: "ag-ex", "data-testid": "exemplar" }, `${D.magnitude(ex.value)}  `);
      for (const seg of A.exemplarSegments(ex.tokens, ex.position)) {
        line.append(seg.hot ? tokenSpan(seg.text, "iw-tok ag-hotok") : document.createTextNode(visibleToken(seg.text)));
      }
      return line;
    }));
  }

  function click(i: number, ev: MouseEvent): void {
    if (!g) return;
    const id = ids[i];
    if (ev.shiftKey) {
      call("pin", { ids: [id] }).catch(() => undefined);
      return;
    }
    const sel = list("selected");
    const next = sel.includes(id) ? sel.filter((x) => x !== id) : [...sel, id];
    model.set("selected", next);
    model.save_changes();
    decorate();
    const opening = g.nodes.kind.data[i] === A.FEATURE && g.actions.dashboard && !sel.includes(id);
    call("node", { node: id, open: opening }).then((r) => {
      if (r.opened) status.textContent = `dashboard of ${id} opened below`;
      bump();
    }).catch(() => undefined);
  }

  function edit(): { op: string; factor: number } | null {
    const f = A.editFactor(opSel.value, factorIn.value);
    if (typeof f === "string") {
      errors.replaceChildren(el("div", { class: "iw-error" }, f));
      return null;
    }
    return { op: opSel.value, factor: f };
  }

  function intervene(): void {
    const e = edit();
    if (!e) return;
    const nodes = Object.keys(A.editNodes(list("selected"), kindOf, e.factor));
    result.dataset.state = "running";
    result.textContent = "running the real model…";
    call("intervene", { nodes, op: e.op, factor: e.factor }).then((r: InterveneReply) => {
      const tops = (rows: [string, number][], tid: string) => el("table", { class: "iw-table" },
        ...rows.map(([t, p]) => el("tr", { "data-testid": tid, "data-token": t, "data-p": String(p) },
          el("td", {}, tokenSpan(t)), el("td", { class: "num" }, D.magnitude(p)))));
      const logit = el("table", { class: "iw-table" },
        el("tr", {}, el("th", {}, "logit"), el("th", {}, "predicted Δ"), el("th", {}, "measured Δ")),
        ...r.logit_tokens.map((t, j) => el("tr", { "data-testid": "logit-row", "data-predicted": String(r.predicted.data[j]),
          "data-measured": String(r.measured.data[j]) },
        el("td", {}, tokenSpan(t)), el("td", { class: "num" }, D.signed(r.predicted.data[j])),
        el("td", { class: "num" }, D.signed(r.measured.data[j])))));
      result.replaceChildren(
        el("div", { class: "ag-help" }, `${r.op === "zero" ? "zeroed" : `scaled ×${r.factor}`}: ${Object.keys(r.nodes).join(", ")}`),
        el("div", { class: "ag-tables" },
          el("div", {}, el("h4", {}, "before"), tops(r.before, "before-row")),
          el("div", {}, el("h4", {}, "after"), tops(r.after, "after-row")),
          el("div", {}, el("h4", {}, "graph's prediction vs the real model"), logit)));
      result.dataset.state = "done";
      bump();
    }).catch(() => {
      result.dataset.state = "error";
      result.textContent = "";
    });
  }

  function generate(): void {
    const e = edit();
    if (!e) return;
    const nodes = Object.keys(A.editNodes(list("selected"), kindOf, e.factor));
    genOut.dataset.state = "running";
    genOut.textContent = "…";
    rpc.request<{ text: string }>("generate", { nodes, op: e.op, factor: e.factor }, (part) => {
      if (part && typeof part.text === "string") genOut.textContent = part.text;
    }).promise.then((r) => {
      genOut.textContent = r.text;
      genOut.dataset.state = "done";
      errors.replaceChildren();
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      genOut.dataset.state = "error";
      showError(err);
    });
  }

  // -- events ------------------------------------------------------------------------------------
  nodeSlider.addEventListener("input", pruneSoon);
  edgeSlider.addEventListener("input", pruneSoon);
  const nodeAt = (t: EventTarget | null): number => {
    const n = (t as Element | null)?.closest?.("[data-testid=node]") as SVGElement | null;
    return n ? Number(n.dataset.local) : -1;
  };
  stage.addEventListener("mouseover", (ev) => {
    const i = nodeAt(ev.target);
    if (i >= 0 && i !== hovered) hover(i);
  });
  stage.addEventListener("click", (ev) => {
    const i = nodeAt(ev.target);
    if (i >= 0) click(i, ev);
  });
  pinSel.addEventListener("click", () => {
    const sel = list("selected");
    if (sel.length) call("pin", { ids: sel }).catch(() => undefined);
  });
  clearSel.addEventListener("click", () => {
    model.set("selected", []);
    model.save_changes();
    decorate();
  });
  groupBtn.addEventListener("click", () => {
    const next = A.group(groups(), groupLabel.value, list("selected"));
    if (!next) {
      errors.replaceChildren(el("div", { class: "iw-error" }, "type a label and select nodes to group"));
      return;
    }
    call("group", { label: groupLabel.value, ids: list("selected") }).catch(() => undefined);
  });
  proposeBtn.addEventListener("click", () => {
    status.textContent = "proposing supernodes…";
    call("propose", {}).then((r) => {
      status.textContent = `${r.proposed.length} supernode(s) proposed`;
    }).catch(() => undefined);
  });
  interveneBtn.addEventListener("click", intervene);
  genBtn.addEventListener("click", generate);
  exportBtn.addEventListener("click", () => {
    exportRes.textContent = "writing…";
    call("export", { path: exportPath.value.trim() || null }).then((r) => {
      exportRes.textContent = `wrote ${r.path} (${D.count(r.bytes)} bytes; ${r.pinned} pinned, ${r.supernodes} supernodes)`;
      exportRes.dataset.path = r.path;
      bump();
    }).catch(() => {
      exportRes.textContent = "";
    });
  });

  const onState = () => decorate();
  const onVersion = () => load();
  model.on("change:pinned", onState);
  model.on("change:selected", onState);
  model.on("change:supernodes", onState);
  model.on("change:version", onVersion);

  load();

  return () => {
    model.off("change:pinned", onState);
    model.off("change:selected", onState);
    model.off("change:supernodes", onState);
    model.off("change:version", onVersion);
    rpc.dispose();
    root.remove();
  };
}

export default { render };
