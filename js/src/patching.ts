// PatchingHeatmap: an activation-patching sweep as a layers × columns heatmap (diverging
// colours on the normalized metric, 0 = corrupted, 1 = clean). Clicking a cell asks the
// kernel to apply that single patch and rerun; the predictions table then shows clean,
// corrupted and patched next-token predictions side by side. An exact/attribution toggle
// appears when both sweeps exist.
//
// Browser-test hooks: root .iw-root.iw-patching[data-run-count][data-method][data-selected];
// [data-testid=method-toggle] (buttons [data-method]); [data-testid=heatmap] with cells
// td[data-testid=patch-cell][data-layer][data-col][data-value]; [data-testid=cell-readout];
// table[data-testid=predictions] tr[data-testid=prediction-row] (cells [data-testid=pred-clean|
// pred-corrupted|pred-patched]); [data-testid=patched-metric]; [data-testid=errors].
import { el, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as L from "./lib/patching-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { imageButtons } from "./lib/snapshot";

interface HeatmapReply {
  grids: (L.Grid & { clean_metric: number; corrupted_metric: number })[];
  methods: string[];
  method: string;
  column_kind: string;
  tokens: string[];
  site: string;
  metric: string;
  direction: string;
  clean: string;
  corrupted: string | null;
  answer: string;
  wrong: string | null;
  clean_metric: number;
  corrupted_metric: number;
  title: string;
  predictions: { clean: L.Prediction; corrupted: L.Prediction };
  /** Optional (an IIA sweep): what the reference runs are called, the row labels, the help line. */
  names?: Partial<L.RunNames>;
  row_labels?: string[];
  help?: string;
}

interface ApplyReply {
  layer: number;
  col: number;
  specs: Record<string, any>[];
  predictions: { clean: L.Prediction; corrupted: L.Prediction; patched: L.Prediction };
  metric: { name: string; clean: number; corrupted: number; patched: number; normalized: number };
  sweep: Record<string, number>;
}

const CSS = `
.iw-patching .ph-title { font-weight: 600; margin-bottom: 4px; }
.iw-patching .ph-controls { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 4px; }
.iw-patching .ph-toggle button { font-size: 12px; padding: 2px 8px; border: 1px solid var(--jp-border-color1, #bbb); background: var(--jp-layout-color2, #f6f6f6); color: var(--jp-ui-font-color1, #222); cursor: pointer; }
.iw-patching .ph-toggle button[aria-pressed=true] { background: #285fe1; color: #fff; border-color: #285fe1; }
.iw-patching .ph-help { color: var(--jp-ui-font-color2, #666); font-size: 11px; margin: 2px 0 4px; }
.iw-patching .ph-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-patching .ph-heatwrap { overflow: auto; max-height: 560px; max-width: 100%; }
.iw-patching table.ph-heat { border-collapse: separate; border-spacing: 1px; font-size: 11px; }
.iw-patching table.ph-heat th.ph-col { font-weight: normal; writing-mode: vertical-rl; transform: rotate(180deg);
  padding: 3px 1px; max-height: 90px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.iw-patching table.ph-heat th.ph-row { text-align: right; font-weight: normal; padding-right: 4px; color: var(--jp-ui-font-color2, #555); }
.iw-patching table.ph-heat td.ph-cell { padding: 0; cursor: pointer; }
.iw-patching table.ph-heat td.ph-cell:hover { outline: 1px solid #333; }
.iw-patching table.ph-heat td.ph-selected { outline: 2px solid #f0a020 !important; }
.iw-patching .ph-readout { font-size: 11px; color: var(--jp-ui-font-color1, #333); min-height: 16px; margin: 4px 0; font-family: var(--jp-code-font-family, monospace); white-space: pre; }
.iw-patching .ph-legend { display: inline-block; width: 120px; height: 8px; vertical-align: middle;
  background: linear-gradient(to right, rgb(225,65,55), #fff, rgb(40,95,225)); border: 1px solid var(--jp-border-color2, #ddd); }
.iw-patching .ph-side { min-width: 320px; }
.iw-patching .ph-label { font-size: 11px; color: var(--jp-ui-font-color2, #555); margin: 4px 0 2px; }
.iw-patching table.ph-preds td.ph-empty { color: var(--jp-ui-font-color1, #555); }
.iw-patching table.ph-preds th.ph-patched, .iw-patching table.ph-preds td.ph-patched { background: rgba(40,95,225,0.12); }
.iw-patching .ph-metric { font-size: 12px; margin: 4px 0; }
.iw-patching .ph-spec { font-size: 11px; color: var(--jp-ui-font-color1, #444); font-family: var(--jp-code-font-family, monospace); }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-patching", "data-run-count": "0", "data-method": "", "data-selected": "" });
  withStyle(root, CSS);
  host.append(root);

  let data: HeatmapReply | null = null;
  let method = String(model.get("method") ?? "exact");
  let selected: number[] = [...(model.get("selected") ?? [])];
  let pendingApply: number | null = null;
  let lastApply: ApplyReply | null = null;
  let pushing = false;

  const title = el("div", { class: "ph-title", "data-testid": "title" });
  const toggle = el("div", { class: "ph-toggle", "data-testid": "method-toggle", role: "group", "aria-label": "heatmap method" });
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  const controls = el("div", { class: "ph-controls" }, toggle, imageButtons(rpc, root, "patching"), status);
  const helpText = el("span", {}, "Click a cell to apply that single patch and rerun. Colours: ");
  const legendText = el("span", {}, " negative → 0 (corrupted) → 1 (clean).");
  const help = el("div", { class: "ph-help" }, helpText, el("span", { class: "ph-legend" }), legendText);
  const errors = el("div", { "data-testid": "errors" });
  const heatWrap = el("div", { class: "ph-heatwrap" });
  const readoutBox = el("div", { class: "ph-readout", "data-testid": "cell-readout" });
  const predLabel = el("div", { class: "ph-label" }, "Next-token predictions");
  const predTable = el("table", { class: "iw-table ph-preds", "data-testid": "predictions" });
  const metricBox = el("div", { class: "ph-metric", "data-testid": "patched-metric" });
  const specBox = el("div", { class: "ph-spec", "data-testid": "cell-specs" });
  const side = el("div", { class: "ph-side" }, predLabel, predTable, metricBox, specBox);
  root.append(title, controls, help, errors, el("div", { class: "ph-main" }, el("div", {}, heatWrap, readoutBox), side));

  const bump = runCounter(root);
  const showError = (err: unknown): void => showRpcError(errors, err, status);

  // -- rendering -----------------------------------------------------------------
  function renderToggle(): void {
    const methods = data?.methods ?? [];
    toggle.hidden = methods.length < 2;
    toggle.replaceChildren(...methods.map((m) => el("button", {
      type: "button", "data-method": m, "aria-pressed": String(m === method), title: `show the ${m} heatmap`,
    }, m)));
    toggle.dataset.method = method;
    root.dataset.method = method;
  }

  function renderHeatmap(): void {
    if (!data) return;
    const grid = L.chooseGrid(data.grids, method);
    if (!grid) return;
    const layers = grid.layers.data;
    const cols = grid.columns.data;
    const R = layers.length;
    const C = cols.length;
    const vals = grid.values.data;
    const half = L.scaleHalfWidth(vals);
    const lay = L.gridLayout(R, C, Math.max(320, (host.clientWidth || 900) - 360));
    const labels = L.columnLabels(data.column_kind, cols, data.tokens);
    const stride = L.labelStride(lay.cell);
    const table = el("table", {
      class: "ph-heat", "data-testid": "heatmap", "data-method": grid.method, "data-kind": data.column_kind,
      "data-scale": String(half),
    });
    const head = el("tr", {}, el("th", { class: "ph-corner" }, data.row_labels ? "site" : "layer"));
    for (let j = 0; j < C; j++) {
      const th = el("th", { class: "ph-col", "data-col": String(cols[j]), style: `width:${lay.cell}px` });
      if (j % stride === 0) th.append(tokenSpan(labels[j]));
      th.title = data.column_kind === "position" ? `position ${cols[j]}` : L.columnName(data.column_kind, cols[j]);
      head.append(th);
    }
    const body = el("tbody");
    for (let i = 0; i < R; i++) {
      const row = el("tr", {}, el("th", { class: "ph-row" }, L.rowLabel(data.row_labels, layers, i)));
      for (let j = 0; j < C; j++) {
        const v = vals[i * C + j];
        const cell = el("td", {
          class: "ph-cell", "data-testid": "patch-cell", "data-layer": String(layers[i]), "data-col": String(cols[j]),
          "data-value": String(v), "data-raw": String(grid.raw.data[i * C + j]),
          style: `width:${lay.cell}px;height:${lay.cell}px`,
        });
        cell.style.backgroundColor = L.cellColor(v, half);
        row.append(cell);
      }
      body.append(row);
    }
    table.append(el("thead", {}, head), body);
    heatWrap.replaceChildren(table);
    markSelected();
  }

  function markSelected(): void {
    const key = selected.length === 2 ? `${selected[0]},${selected[1]}` : "";
    root.dataset.selected = key;
    heatWrap.querySelectorAll<HTMLElement>("td.ph-cell").forEach((c) => {
      c.classList.toggle("ph-selected", `${c.dataset.layer},${c.dataset.col}` === key);
    });
  }

  function predCell(p: L.PredCell | null, col: L.PredColumn): HTMLElement[] {
    const cls = col === "patched" ? "ph-patched" : "";
    if (!p) {
      return [el("td", { class: `${cls} ph-empty`, "data-testid": `pred-${col}` }, "—"), el("td", { class: `num ${cls} ph-empty` }, "")];
    }
    const tok = el("td", { class: cls, "data-testid": `pred-${col}`, "data-id": String(p.id), "data-prob": String(p.prob) }, tokenSpan(p.token));
    return [tok, el("td", { class: `num ${cls}`, "data-testid": `prob-${col}` }, L.formatProb(p.prob))];
  }

  function renderPredictions(preds: Partial<Record<L.PredColumn, L.Prediction | null>>): void {
    const hasPatched = !!preds.patched;
    const names = L.runNames(data?.names);
    const head = el("tr", {}, el("th", {}, "#"),
      el("th", { colspan: "2", "data-testid": "col-clean" }, names.clean),
      el("th", { colspan: "2", "data-testid": "col-corrupted" }, names.corrupted),
      el("th", { colspan: "2", class: "ph-patched", "data-testid": hasPatched ? "col-patched" : "col-patched-empty" },
        hasPatched ? "patched" : "patched (click a cell)"));
    const rows = L.predictionRows(preds).map((r, k) => el("tr", { "data-testid": "prediction-row", "data-rank": String(k + 1) },
      el("td", { class: "num" }, String(k + 1)),
      ...predCell(r.clean, "clean"), ...predCell(r.corrupted, "corrupted"), ...predCell(r.patched, "patched")));
    predTable.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    predTable.dataset.patched = String(hasPatched);
  }

  function renderMetric(a: ApplyReply | null): void {
    if (!data) return;
    const m = data.metric;
    const names = L.runNames(data.names);
    if (!a) {
      metricBox.textContent = `${m}: ${names.clean} ${L.formatValue(data.clean_metric)}, ${names.corrupted} ${L.formatValue(data.corrupted_metric)}`;
      specBox.textContent = "";
      return;
    }
    const sweep = Object.entries(a.sweep).map(([k, v]) => `${k} ${L.formatValue(v)}`).join(", ");
    metricBox.textContent = `${m}: ${names.clean} ${L.formatValue(a.metric.clean)}, ${names.corrupted} ${L.formatValue(a.metric.corrupted)}, ` +
      `patched ${L.formatValue(a.metric.patched)} → normalized ${L.formatValue(a.metric.normalized)}` +
      (sweep ? ` (heatmap: ${sweep})` : "");
    metricBox.dataset.patched = String(a.metric.patched);
    metricBox.dataset.normalized = String(a.metric.normalized);
    specBox.textContent = `patch: ${rowName(a.layer)}, ${L.columnName(data.column_kind, a.col)} (${a.specs.map((s) => `${s.kind} ${s.site}`).join("; ")})`;
  }

  /** A row's name in the status lines: the sweep's site label when it sent row labels, else "layer N". */
  function rowName(layer: number): string {
    if (!data?.row_labels) return `layer ${layer}`;
    return L.rowLabel(data.row_labels, L.chooseGrid(data.grids, method)?.layers.data ?? [], rowIndex(layer));
  }

  function rowIndex(layer: number): number {
    const grid = data ? L.chooseGrid(data.grids, method) : null;
    return grid ? Array.prototype.indexOf.call(grid.layers.data, layer) as number : -1;
  }

  // -- kernel requests -----------------------------------------------------------
  function load(): void {
    status.textContent = "loading…";
    rpc.request<HeatmapReply>("heatmap", { top_k: Number(model.get("top_k") ?? 10) }).promise.then((r) => {
      data = r;
      if (!r.methods.includes(method)) method = r.methods[0] ?? method;
      title.textContent = r.title;
      const names = L.runNames(r.names);
      if (r.help) helpText.textContent = `${r.help} Colours: `;
      legendText.textContent = ` negative → 0 (${names.corrupted}) → 1 (${names.clean}).`;
      renderToggle();
      renderHeatmap();
      renderPredictions(lastApply ? lastApply.predictions : r.predictions);
      renderMetric(lastApply);
      errors.replaceChildren();
      status.textContent = `${r.site} · ${r.direction} · ${r.metric} · ${r.grids[0]?.layers.data.length ?? 0} ${r.row_labels ? "sites" : "layers"} × ` +
        `${r.grids[0]?.columns.data.length ?? 0} ${r.column_kind}s`;
      bump();
      if (selected.length === 2 && !lastApply) applyCell(selected[0], selected[1]);
    }).catch(showError);
  }

  function applyCell(layer: number, col: number): void {
    if (pendingApply !== null) rpc.cancel(pendingApply);
    const req = rpc.request<ApplyReply>("apply", { layer, col, top_k: Number(model.get("top_k") ?? 10) });
    pendingApply = req.id;
    status.textContent = `applying ${rowName(layer)}, ${col}…`;
    root.dataset.busy = "true";
    req.promise.then((a) => {
      if (pendingApply !== req.id) return;
      pendingApply = null;
      root.dataset.busy = "false";
      lastApply = a;
      renderPredictions(a.predictions);
      renderMetric(a);
      errors.replaceChildren();
      status.textContent = `patched ${rowName(a.layer)}, ${data ? L.columnName(data.column_kind, a.col) : a.col}`;
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (pendingApply === req.id) pendingApply = null;
      root.dataset.busy = "false";
      showError(err);
    });
  }

  function select(layer: number, col: number): void {
    selected = [layer, col];
    pushing = true;
    try {
      model.set("selected", [layer, col]);
      model.save_changes();
    } finally {
      pushing = false;
    }
    markSelected();
    applyCell(layer, col);
  }

  function setMethod(m: string): void {
    if (m === method) return;
    method = m;
    pushing = true;
    try {
      model.set("method", m);
      model.save_changes();
    } finally {
      pushing = false;
    }
    renderToggle();
    renderHeatmap();
  }

  // -- events --------------------------------------------------------------------
  function cellOf(ev: Event): HTMLElement | null {
    return (ev.target as HTMLElement).closest<HTMLElement>("td[data-testid=patch-cell]");
  }
  heatWrap.addEventListener("click", (ev) => {
    const c = cellOf(ev);
    if (c) select(Number(c.dataset.layer), Number(c.dataset.col));
  });
  heatWrap.addEventListener("mouseover", (ev) => {
    const c = cellOf(ev);
    if (!c || !data) return;
    const col = Number(c.dataset.col);
    const label = data.column_kind === "position" ? (data.tokens[col] ?? "") : "";
    const layer = Number(c.dataset.layer);
    const row = data.row_labels ? L.rowLabel(data.row_labels, L.chooseGrid(data.grids, method)?.layers.data ?? [], rowIndex(layer)) : undefined;
    readoutBox.textContent = L.readout(data.column_kind, layer, col, label,
      Number(c.dataset.value), Number(c.dataset.raw), method, row);
    readoutBox.dataset.value = c.dataset.value ?? "";
  });
  toggle.addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement).closest<HTMLElement>("button[data-method]");
    if (b) setMethod(b.dataset.method ?? method);
  });

  // Traits changed from Python (or another view).
  const onSelected = () => {
    if (pushing) return;
    const s: number[] = [...(model.get("selected") ?? [])];
    if (s.length === 2 && (s[0] !== selected[0] || s[1] !== selected[1])) {
      selected = s;
      markSelected();
      applyCell(s[0], s[1]);
    } else if (s.length !== 2 && selected.length === 2) {
      selected = [];
      lastApply = null;
      markSelected();
      if (data) {
        renderPredictions(data.predictions);
        renderMetric(null);
      }
    }
  };
  const onMethod = () => {
    if (pushing) return;
    const m = String(model.get("method"));
    if (m !== method) {
      method = m;
      renderToggle();
      renderHeatmap();
    }
  };
  const onTopK = () => {
    lastApply = null;
    load();
  };
  model.on("change:selected", onSelected);
  model.on("change:method", onMethod);
  model.on("change:top_k", onTopK);

  load();

  return () => {
    model.off("change:selected", onSelected);
    model.off("change:method", onMethod);
    model.off("change:top_k", onTopK);
    rpc.dispose();
  };
}

export default { render };
