// NeuronHeatmap: tokens × top MLP neurons at a layer, click a column header to
// ablate that neuron (kernel reruns with wb.zero_neurons / wb.scale_neurons),
// shift-click a header or click a cell to tint the prompt by that neuron. "Colour by
// attribution" reruns in the kernel and colours the cells by each neuron's attribution to the
// target token's logit (gradient × activation, or integrated gradients).
//
// Browser-test hooks: root .iw-root.iw-neurons[data-run-count][data-color-by]; controls
// [data-testid=prompt-input|run|layer-select|top-n|ablate-mode|scale-factor|color-by|attr-target|clear-ablations];
// heatmap table[data-color-by] headers th[data-testid=neuron][data-neuron=N][data-ablated][data-selected];
// cells td[data-testid=cell][data-neuron=N][data-token=T][data-value][data-attr]; [data-testid=legend]; [data-testid=tinted-text]
// spans; table[data-testid=predictions] tr[data-testid=prediction-row].
import type { NDArray } from "./lib/arrays";
import { debounce, el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as L from "./lib/neurons-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { imageButtons } from "./lib/snapshot";

interface TopRow { token: string; id: number; prob: number; logit: number }

interface TintReply {
  neuron: number;
  layer: number;
  prompt?: string;
  tokens?: string[];
  values?: NDArray;
  current?: NDArray;
  max_abs?: number;
}

interface RunReply {
  state: L.ViewState;
  n_layers: number;
  d_mlp: number;
  tokens: string[];
  neurons: NDArray;
  neuron_max: NDArray;
  matrix: NDArray;
  baseline_matrix: NDArray;
  scale: number;
  baseline: TopRow[];
  current: TopRow[];
  changes: L.ChangeRow[];
  interventions: Record<string, any>[];
  tint: TintReply | null;
  runs: number;
  /** In "attribution" colour mode: each shown neuron's attribution [tokens, top_n] and its facts. */
  attribution?: {
    matrix: NDArray; scale: number; method: string; metric: string; target: string; foil: string | null;
    total: number; delta: number; gap: number;
  } | null;
}

const CSS = `
.iw-neurons .nh-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 4px; }
.iw-neurons .nh-controls label { display: inline-flex; gap: 3px; align-items: center; }
.iw-neurons textarea.nh-prompt { flex: 1 1 320px; min-width: 200px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; resize: vertical; }
.iw-neurons input[type=number] { width: 64px; }
.iw-neurons .nh-help { color: var(--jp-ui-font-color2, #666); font-size: 11px; margin: 2px 0 4px; }
.iw-neurons .nh-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-neurons .nh-heatwrap { overflow: auto; max-height: 480px; max-width: 100%; }
.iw-neurons table.nh-heat { border-collapse: separate; border-spacing: 1px; font-size: 11px; }
.iw-neurons table.nh-heat th.nh-col { cursor: pointer; user-select: none; font-weight: normal; font-variant-numeric: tabular-nums;
  writing-mode: vertical-rl; transform: rotate(180deg); padding: 3px 1px; min-width: 18px; position: sticky; top: 0; background: var(--jp-layout-color1, #fafafa); }
.iw-neurons table.nh-heat th.nh-col:hover { background: rgba(40,95,225,0.2); }
.iw-neurons table.nh-heat th.nh-col.nh-ablated { text-decoration: line-through; color: var(--iw-down); background: rgba(225,65,55,0.12); }
.iw-neurons table.nh-heat th.nh-col.nh-selected { outline: 2px solid #f0a020; }
.iw-neurons table.nh-heat th.nh-row { text-align: right; font-weight: normal; padding-right: 4px; white-space: nowrap; position: sticky; left: 0; background: var(--jp-layout-color1, #fafafa); }
.iw-neurons table.nh-heat th.nh-row .nh-pos { color: var(--jp-ui-font-color2, #999); font-size: 9px; margin-right: 3px; }
.iw-neurons table.nh-heat td.nh-cell { width: 18px; min-width: 18px; height: 16px; cursor: crosshair; padding: 0; }
.iw-neurons table.nh-heat td.nh-ablated { background-image: repeating-linear-gradient(45deg, rgba(0,0,0,0.35) 0 2px, transparent 2px 6px); }
.iw-neurons table.nh-heat td.nh-selected { box-shadow: inset 1px 0 #f0a020, inset -1px 0 #f0a020; }
.iw-neurons .nh-tintlabel { font-size: 11px; color: var(--jp-ui-font-color2, #555); margin: 6px 0 2px; }
.iw-neurons .nh-tinted { line-height: 1.9; max-width: 720px; padding: 4px; border: 1px solid var(--jp-border-color2, #eee); border-radius: 4px; }
.iw-neurons .nh-tinted .iw-tok { padding: 1px 1px; }
.iw-neurons .nh-up { color: var(--iw-up); }
.iw-neurons .nh-down { color: var(--iw-down); }
.iw-neurons .nh-same { color: var(--jp-ui-font-color2, #888); }
.iw-neurons .nh-intv { font-size: 11px; color: var(--jp-ui-font-color1, #444); margin: 2px 0; font-family: var(--jp-code-font-family, monospace); }
.iw-neurons .nh-legend { display: inline-block; width: 120px; height: 8px; vertical-align: middle;
  background: linear-gradient(to right, rgb(225,65,55), #fff, rgb(40,95,225)); border: 1px solid var(--jp-border-color2, #ddd); }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-neurons", "data-run-count": "0" });
  withStyle(root, CSS);
  host.append(root);

  let state: L.ViewState = L.readState((k) => model.get(k));
  let pendingRun: number | null = null;
  let pendingTint: number | null = null;
  let last: RunReply | null = null;
  let pushing = false;
  let tintKey = ""; // prompt and layer of the tint on screen

  // -- controls ------------------------------------------------------------------
  const promptInput = el("textarea", { class: "nh-prompt", rows: "2", "data-testid": "prompt-input", placeholder: "prompt", "aria-label": "prompt" });
  promptInput.value = state.prompt;
  const runBtn = el("button", { class: "iw-btn", "data-testid": "run", type: "button" }, "Run");
  const layerSelect = el("select", { "data-testid": "layer-select", "aria-label": "layer" });
  const topN = el("input", { type: "number", min: "1", step: "1", "data-testid": "top-n", "aria-label": "top N neurons" });
  const modeSelect = el("select", { "data-testid": "ablate-mode", "aria-label": "ablation mode" },
    el("option", { value: "zero" }, "zero"), el("option", { value: "scale" }, "scale"));
  const factorInput = el("input", { type: "number", step: "0.1", "data-testid": "scale-factor", "aria-label": "scale factor" });
  const clearBtn = el("button", { class: "iw-btn", "data-testid": "clear-ablations", type: "button" }, "Clear ablations");
  const colorSelect = el("select", { "data-testid": "color-by", "aria-label": "colour by" },
    el("option", { value: "activation" }, "activation"), el("option", { value: "attribution" }, "attribution"));
  const targetInput = el("input", { type: "text", size: "8", "data-testid": "attr-target", placeholder: "top token",
    "aria-label": "attribution target token", title: "the token whose logit the attribution explains (blank: the top prediction)" });
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  const controls = el("div", { class: "nh-controls" },
    promptInput, runBtn,
    el("label", {}, "layer", layerSelect),
    el("label", {}, "top", topN),
    el("label", {}, "ablate by", modeSelect),
    el("label", {}, "factor", factorInput),
    el("label", {}, "colour by", colorSelect),
    el("label", {}, "target", targetInput),
    clearBtn, imageButtons(rpc, root, "neurons"), status);
  const help = el("div", { class: "nh-help" },
    "Click a neuron's column header to ablate it (click again to restore). ",
    "Shift-click a header, or click any cell of a column, to tint the prompt by that neuron. ",
    "Colours: ", el("span", { class: "nh-legend" }));
  const legendText = el("span", { "data-testid": "legend" }, L.colorLegend("activation"));
  help.append(legendText);
  const errors = el("div", { "data-testid": "errors" });
  const intv = el("div", { class: "nh-intv", "data-testid": "interventions" });
  const heatWrap = el("div", { class: "nh-heatwrap" });
  const tintLabel = el("div", { class: "nh-tintlabel", "data-testid": "tint-label" });
  const tinted = el("div", { class: "nh-tinted", "data-testid": "tinted-text", "data-neuron": "-1" });
  const predTable = el("table", { class: "iw-table nh-preds", "data-testid": "predictions" });
  const left = el("div", {}, heatWrap, tintLabel, tinted);
  const right = el("div", {}, el("div", { class: "nh-tintlabel" }, "Next-token predictions (baseline → with ablations)"), predTable);
  root.append(controls, help, errors, intv, el("div", { class: "nh-main" }, left, right));

  function syncControls(): void {
    const n = Math.max(1, Number(model.get("n_layers")) || state.layer + 1);
    if (layerSelect.options.length !== n) {
      layerSelect.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: String(i) }, String(i))));
    }
    layerSelect.value = String(state.layer);
    if (document.activeElement !== topN) topN.value = String(state.top_n);
    modeSelect.value = state.mode;
    colorSelect.value = state.color_by;
    if (document.activeElement !== targetInput) targetInput.value = state.target;
    targetInput.disabled = state.color_by !== "attribution";
    root.dataset.colorBy = state.color_by;
    if (document.activeElement !== factorInput) factorInput.value = String(state.factor);
    factorInput.title = state.mode === "scale" ? "ablated neurons are multiplied by this factor" : "used in scale mode";
    root.dataset.mode = state.mode;
    root.dataset.ablated = state.ablated.join(",");
    root.dataset.selected = String(state.selected_neuron);
  }

  /** Push our state into the traits (so Python reads back what was clicked). */
  function pushTraits(keys: (keyof L.ViewState)[] = L.STATE_KEYS): void {
    pushing = true; // model.set fires change events at once; they are ours, not Python's
    try {
      for (const k of keys) model.set(k, Array.isArray(state[k]) ? [...(state[k] as number[])] : state[k]);
      model.save_changes();
    } finally {
      pushing = false;
    }
  }

  const bump = runCounter(root);
  const showError = (err: unknown): void => showRpcError(errors, err, status);

  // -- rendering -----------------------------------------------------------------
  function markColumns(): void {
    const abl = new Set(state.ablated);
    root.querySelectorAll<HTMLElement>("[data-neuron]").forEach((node) => {
      if (node === tinted) return;
      const n = Number(node.dataset.neuron);
      const isAbl = abl.has(n);
      const isSel = n === state.selected_neuron;
      node.classList.toggle("nh-ablated", isAbl);
      node.classList.toggle("nh-selected", isSel);
      if (node.dataset.testid === "neuron") {
        node.dataset.ablated = String(isAbl);
        node.dataset.selected = String(isSel);
        node.setAttribute("aria-pressed", String(isAbl));
      }
    });
    root.dataset.ablated = state.ablated.join(",");
    root.dataset.selected = String(state.selected_neuron);
  }

  function renderHeatmap(r: RunReply): void {
    const T = r.tokens.length;
    const cols = Array.from(r.neurons.data as Int32Array);
    const N = cols.length;
    const m = r.matrix.data;
    const bm = r.baseline_matrix.data;
    const peak = r.neuron_max.data;
    const attr = r.attribution ?? null;
    const table = el("table", { class: "nh-heat", "data-testid": "heatmap", "data-layer": String(r.state.layer),
      "data-color-by": attr ? "attribution" : "activation" });
    const head = el("tr", {}, el("th", { class: "nh-corner" }, `L${r.state.layer}`));
    cols.forEach((n, j) => {
      head.append(el("th", {
        class: "nh-col", "data-testid": "neuron", "data-neuron": String(n), role: "button", tabindex: "0",
        title: `neuron ${n} (max activation ${fmt(peak[j])})\nclick: ablate/restore · shift-click: tint the prompt`,
      }, String(n)));
    });
    const body = el("tbody");
    for (let t = 0; t < T; t++) {
      const label = el("th", { class: "nh-row" }, el("span", { class: "nh-pos" }, String(t)), tokenSpan(r.tokens[t]));
      const row = el("tr", { "data-testid": "heat-row" }, label);
      for (let j = 0; j < N; j++) {
        const v = L.at(m, N, t, j);
        const b = L.at(bm, N, t, j);
        const a = attr ? L.at(attr.matrix.data, N, t, j) : NaN;
        const cell = el("td", {
          class: "nh-cell", "data-testid": "cell", "data-neuron": String(cols[j]), "data-token": String(t),
          "data-value": String(v), ...(attr ? { "data-attr": String(a) } : {}),
          title: `neuron ${cols[j]} at token ${t}: ${fmt(v)}` + (v !== b ? ` (baseline ${fmt(b)})` : "") +
            (attr ? `\nattribution to ${attr.metric}: ${fmt(a)}` : ""),
        });
        cell.style.backgroundColor = attr ? L.heatColor(a, attr.scale) : L.heatColor(v, r.scale);
        row.append(cell);
      }
      body.append(row);
    }
    table.append(el("thead", {}, head), body);
    heatWrap.replaceChildren(table);
  }

  function renderTint(t: TintReply | null): void {
    const tokens = t?.tokens ?? last?.tokens ?? [];
    const n = t && t.neuron >= 0 && t.values ? t.neuron : -1;
    tinted.dataset.neuron = String(n);
    tintKey = t && t.prompt !== undefined ? `${t.layer}|${t.prompt}` : "";
    const spans = tokens.map((tok, i) => {
      const s = tokenSpan(tok);
      s.dataset.token = String(i);
      if (n >= 0 && t?.values) {
        const v = t.values.data[i];
        const scale = t.max_abs ?? L.maxAbs(t.values.data);
        s.style.backgroundColor = L.heatColor(v, scale);
        s.style.color = L.textColorFor(v, scale);
        s.dataset.value = String(v);
        const cur = t.current ? t.current.data[i] : undefined;
        s.title = `neuron ${n}: ${fmt(v)}` + (cur !== undefined && cur !== v ? ` (with ablations ${fmt(cur)})` : "");
      }
      return s;
    });
    tinted.replaceChildren(...spans);
    tintLabel.textContent = n >= 0
      ? `Prompt tinted by neuron ${n} at layer ${t!.layer} (unablated activation, max |a| = ${fmt(t!.max_abs ?? 0)})`
      : "Shift-click a neuron header (or click a cell) to tint the prompt by that neuron.";
  }

  function renderPredictions(rows: L.ChangeRow[]): void {
    const head = el("tr", {}, el("th", {}, "token"), el("th", {}, "baseline"), el("th", {}, "current"), el("th", {}, "change"));
    const trs = L.sortChanges(rows).map((r) => {
      const info = L.changeInfo(r.delta);
      const tok = el("td", {}, tokenSpan(r.token));
      const tr = el("tr", {
        "data-testid": "prediction-row", "data-token": r.token, "data-id": String(r.id),
        "data-base": String(r.base), "data-current": String(r.cur), "data-delta": String(r.delta),
        "data-change": info.cls,
      },
      tok,
      el("td", { class: "num", "data-testid": "prob-base" }, L.formatProb(r.base)),
      el("td", { class: "num", "data-testid": "prob-current" }, L.formatProb(r.cur)),
      el("td", { class: `num nh-${info.cls}`, "data-testid": "prob-change" }, `${info.arrow} ${info.text}`));
      return tr;
    });
    predTable.replaceChildren(el("thead", {}, head), el("tbody", {}, ...trs));
  }

  function apply(r: RunReply): void {
    last = r;
    // the reply's state is what we sent; keep a selection made since then
    state = L.updateState(state, { ...r.state, selected_neuron: state.selected_neuron });
    syncControls();
    renderHeatmap(r);
    legendText.textContent = L.colorLegend(r.attribution ? "attribution" : "activation", r.attribution?.metric) +
      (r.attribution ? ` ${r.attribution.method.replace(/_/g, " ")}: Σ ${fmt(r.attribution.total)} of Δ ${fmt(r.attribution.delta)} (unablated run)` : "");
    renderPredictions(r.changes);
    intv.textContent = r.interventions.length ? `interventions: ${r.interventions.map(L.describeSpec).join("; ")}` : "interventions: none";
    const key = `${r.state.layer}|${r.state.prompt}`;
    if (r.tint && r.tint.neuron === state.selected_neuron) renderTint(r.tint);
    else if (state.selected_neuron < 0) renderTint(null);
    else if (tintKey !== key && pendingTint === null) select(state.selected_neuron); // selection made mid-run
    markColumns();
    errors.replaceChildren();
    const nA = r.state.ablated.length;
    status.textContent = `${r.tokens.length} tokens · layer ${r.state.layer} · ${nA} ablated · ${r.runs} model run${r.runs === 1 ? "" : "s"}`;
  }

  // -- kernel requests -----------------------------------------------------------
  function run(): void {
    state = L.updateState(state, { prompt: promptInput.value });
    pushTraits();
    if (pendingRun !== null) rpc.cancel(pendingRun);
    const req = rpc.request<RunReply>("run", L.runParams(state));
    pendingRun = req.id;
    status.textContent = "running…";
    root.dataset.busy = "true";
    req.promise.then((r) => {
      if (pendingRun !== req.id) return;
      pendingRun = null;
      root.dataset.busy = "false";
      apply(r);
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (pendingRun === req.id) pendingRun = null;
      root.dataset.busy = "false";
      showError(err);
    });
  }
  const runSoon = debounce(run, 250);

  function select(n: number): void {
    state = L.updateState(state, { selected_neuron: n });
    pushTraits(["selected_neuron"]);
    markColumns();
    if (pendingTint !== null) rpc.cancel(pendingTint);
    const req = rpc.request<TintReply>("neuron", { neuron: n, prompt: state.prompt, layer: state.layer, top_k: state.top_k });
    pendingTint = req.id;
    req.promise.then((t) => {
      if (pendingTint !== req.id) return;
      pendingTint = null;
      if (t.neuron === state.selected_neuron) renderTint(t);
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (pendingTint === req.id) pendingTint = null;
      showError(err);
    });
  }

  function toggleAblation(n: number): void {
    state = L.updateState(state, { ablated: L.toggleIndex(state.ablated, n) });
    markColumns(); // optimistic; the reply re-renders
    run();
  }

  // -- events --------------------------------------------------------------------
  heatWrap.addEventListener("click", (ev) => {
    const target = (ev.target as HTMLElement).closest<HTMLElement>("[data-neuron]");
    if (!target) return;
    const n = Number(target.dataset.neuron);
    if (target.dataset.testid === "neuron" && !ev.shiftKey) toggleAblation(n);
    else select(L.toggleSelected(state.selected_neuron, n));
  });
  heatWrap.addEventListener("keydown", (ev) => {
    const target = ev.target as HTMLElement;
    if (target.dataset?.testid !== "neuron" || (ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault();
    const n = Number(target.dataset.neuron);
    if (ev.shiftKey) select(L.toggleSelected(state.selected_neuron, n));
    else toggleAblation(n);
  });
  runBtn.addEventListener("click", () => run());
  promptInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      run();
    }
  });
  layerSelect.addEventListener("change", () => {
    state = L.updateState(state, { layer: Number(layerSelect.value) });
    run();
  });
  colorSelect.addEventListener("change", () => {
    state = L.updateState(state, { color_by: colorSelect.value === "attribution" ? "attribution" : "activation" });
    run();
  });
  targetInput.addEventListener("change", () => {
    if (targetInput.value === state.target) return;
    state = L.updateState(state, { target: targetInput.value });
    run();
  });
  modeSelect.addEventListener("change", () => {
    state = L.updateState(state, { mode: modeSelect.value === "scale" ? "scale" : "zero" });
    run();
  });
  const onCount = () => {
    const v = L.parseCount(topN.value, Number(model.get("d_mlp")) || Infinity);
    if (v === null || v === state.top_n) return;
    state = L.updateState(state, { top_n: v });
    runSoon();
  };
  topN.addEventListener("input", onCount);
  topN.addEventListener("change", onCount);
  const onFactor = () => {
    const v = L.parseNumber(factorInput.value);
    if (v === null || v === state.factor) return;
    state = L.updateState(state, { factor: v });
    runSoon();
  };
  factorInput.addEventListener("input", onFactor);
  factorInput.addEventListener("change", onFactor);
  clearBtn.addEventListener("click", () => {
    state = L.updateState(state, { ablated: [] });
    markColumns();
    run();
  });

  // Traits changed from Python (or another view): follow them.
  const onTraits = () => {
    if (pushing) return;
    const fromModel = L.readState((k) => model.get(k));
    const changed = L.changedKeys(state, fromModel);
    if (changed.length === 0) return;
    const patch: Partial<L.ViewState> = {};
    for (const k of changed) (patch as any)[k] = fromModel[k];
    const onlySelection = changed.every((k) => k === "selected_neuron");
    state = L.updateState(state, patch);
    if (patch.prompt !== undefined) promptInput.value = state.prompt;
    syncControls();
    markColumns();
    if (onlySelection) select(state.selected_neuron);
    else runSoon();
  };
  const traitEvents = L.STATE_KEYS.map((k) => `change:${k}`);
  for (const e of traitEvents) model.on(e, onTraits);
  const onLayers = () => syncControls();
  model.on("change:n_layers", onLayers);

  syncControls();
  renderTint(null);
  run();

  return () => {
    for (const e of traitEvents) model.off(e, onTraits);
    model.off("change:n_layers", onLayers);
    rpc.dispose();
  };
}

export default { render };
