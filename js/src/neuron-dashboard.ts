// NeuronDashboard: one unit of a scan store: top exemplars and exemplars across quantiles
// (tokens tinted by activation), the activation histogram, statistics, weight-based classes
// and promoted / suppressed tokens; Ablate / Amplify rerun a prompt (next-token top-k and a
// streamed continuation, baseline vs edited).
//
// Browser-test hooks: root .iw-root.iw-neuron-dashboard[data-run-count][data-site][data-layer]
// [data-unit]; [data-role=title]; inputs [data-role=layer-input|unit-input|prompt|factor];
// buttons [data-action=prev|next|go|ablate|amplify]; exemplar rows .iw-exemplar[data-window]
// [data-value] (inside [data-role=top-exemplars] or [data-role=quantile-group][data-label]) with
// tokens .iw-tok[data-act] (the maximum has data-max="true"); [data-role=histogram] (svg rects
// [data-bin][data-count], [data-role=zero-mark]); [data-role=stats] rows [data-stat];
// [data-role=class]; [data-role=promoted|suppressed] rows [data-token]; [data-role=predictions]
// rows [data-role=pred-row][data-token][data-p-base][data-p-edit]; [data-role=gen-base|gen-edit];
// error boxes .iw-error in [data-role=errors] / [data-role=edit-errors].
import type { NDArray } from "./lib/arrays";
import { el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as N from "./lib/neuron-dashboard-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { LatestRequest } from "./lib/steering-logic";
import { imageButtons } from "./lib/snapshot";

interface ExemplarReply { window: number; position: number; value: number | null; tokens: string[]; acts: NDArray }
interface GroupReply { label: string; lo: number | null; hi: number | null; exemplars: ExemplarReply[] }
interface TokenScore { token: string; id: number; score: number }
interface NeuronReply {
  state: { site: string; layer: number; unit: number; width: number; editable: boolean };
  stats: Record<string, number | null>;
  hist: { edges: NDArray; counts: NDArray; center: number };
  info: null | { error?: string; io_class?: string; vocab_class?: string; io_cos?: number | null;
    vocab_skew?: number | null; vocab_kurtosis?: number | null; promoted?: TokenScore[]; suppressed?: TokenScore[] };
  explanations?: { text: string; method: string; client?: string;
    scores: Record<string, { value: number | null; lo: number | null; hi: number | null }> }[];
  exemplars?: ExemplarReply[];
  quantiles?: GroupReply[];
  exemplar_error?: string;
}
interface EditReply {
  mode?: string; site?: string; unit?: number; describe?: string; prompt?: string;
  predictions?: { base: unknown[]; edit: unknown[]; rows: N.PredRow[] };
  gen_base?: string; gen_edit?: string;
}

const SVG = "http://www.w3.org/2000/svg";
const HIST_W = 340;
const HIST_H = 90;

const CSS = `
.iw-neuron-dashboard { max-width: 1200px; }
.iw-neuron-dashboard .nd-head { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 4px; }
.iw-neuron-dashboard .nd-title { font-size: 15px; font-weight: 600; margin: 0 8px 0 0; }
.iw-neuron-dashboard .nd-head input[type=number] { width: 64px; }
.iw-neuron-dashboard .nd-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-neuron-dashboard .nd-left { flex: 1 1 520px; min-width: 320px; }
.iw-neuron-dashboard .nd-right { flex: 0 1 380px; min-width: 300px; }
.iw-neuron-dashboard h4 { margin: 8px 0 3px; font-size: 12px; }
.iw-neuron-dashboard h5 { margin: 6px 0 2px; font-size: 11px; color: var(--jp-ui-font-color2, #555); font-weight: 600; }
.iw-neuron-dashboard .iw-exemplar { display: flex; gap: 6px; padding: 2px 0; border-bottom: 1px solid var(--jp-border-color2, #f0f0f0); }
.iw-neuron-dashboard .ex-val { flex: 0 0 52px; text-align: right; color: var(--jp-ui-font-color2, #555); font-variant-numeric: tabular-nums; }
.iw-neuron-dashboard .ex-text { flex: 1 1 auto; white-space: pre-wrap; word-break: break-word; line-height: 18px; }
.iw-neuron-dashboard .ex-text .iw-tok { white-space: pre-wrap; }
.iw-neuron-dashboard .iw-tok.nd-max { outline: 2px solid #c0392b; outline-offset: -1px; }
.iw-neuron-dashboard svg { color: var(--jp-ui-font-color2, #555); display: block; background: var(--jp-layout-color2, #fcfcfc); border: 1px solid var(--jp-border-color2, #eee); }
.iw-neuron-dashboard .nd-tokens { display: flex; gap: 12px; }
.iw-neuron-dashboard .nd-tokens table { flex: 1 1 0; }
.iw-neuron-dashboard .nd-class { margin: 4px 0; }
.iw-neuron-dashboard .nd-badge { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 8px; background: rgba(40,95,225,0.12); font-size: 11px; }
.iw-neuron-dashboard .nd-edit { margin-top: 10px; border-top: 1px solid var(--jp-border-color2, #ddd); padding-top: 6px; }
.iw-neuron-dashboard .nd-edit-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.iw-neuron-dashboard textarea { flex: 1 1 320px; min-width: 200px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.iw-neuron-dashboard .nd-factor { width: 56px; }
.iw-neuron-dashboard .nd-edit-body { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; margin-top: 4px; }
.iw-neuron-dashboard .nd-gen { flex: 1 1 260px; }
.iw-neuron-dashboard .nd-gen pre { white-space: pre-wrap; word-break: break-word; background: var(--jp-layout-color2, #f7f7f7); padding: 4px 6px; margin: 0 0 6px; min-height: 32px; font-size: 12px; }
.iw-neuron-dashboard .nd-gen pre.stale { opacity: 0.5; }
.iw-neuron-dashboard .up { color: var(--iw-up); }
.iw-neuron-dashboard .down { color: var(--iw-down); }
.iw-neuron-dashboard .nd-legend { display: inline-block; width: 110px; height: 8px; vertical-align: middle; border: 1px solid var(--jp-border-color2, #ddd);
  background: linear-gradient(to right, rgb(60,120,230), #fff, rgb(245,130,32)); }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-neuron-dashboard", "data-run-count": "0" });
  withStyle(root, CSS);
  host.append(root);
  const bump = runCounter(root);
  let disposed = false;

  // -- layout -----------------------------------------------------------------------------------
  const title = el("h3", { class: "nd-title", "data-role": "title" });
  const layerInput = el("input", { type: "number", min: "0", step: "1", "data-role": "layer-input", "aria-label": "layer" });
  const unitInput = el("input", { type: "number", min: "0", step: "1", "data-role": "unit-input", "aria-label": "unit" });
  const btn = (action: string, label: string, tip: string) =>
    el("button", { class: "iw-btn", type: "button", "data-action": action, title: tip }, label);
  const prevBtn = btn("prev", "◀ prev", "previous unit (wraps to the previous layer)");
  const nextBtn = btn("next", "next ▶", "next unit (wraps to the next layer)");
  const goBtn = btn("go", "Go", "show this layer and unit");
  const status = el("span", { class: "iw-status", "data-role": "status" });
  const head = el("div", { class: "nd-head" }, title, prevBtn, el("label", {}, "layer ", layerInput),
    el("label", {}, "unit ", unitInput), goBtn, nextBtn,
    imageButtons(rpc, root, "neuron-dashboard"), status);
  const errors = el("div", { "data-role": "errors" });

  const topBox = el("div", { "data-role": "top-exemplars" });
  const quantBox = el("div", { "data-role": "quantiles" });
  const exErrors = el("div", { "data-role": "exemplar-errors" });
  const left = el("div", { class: "nd-left" },
    el("h4", {}, "Top activations ", el("span", { class: "iw-status" }, " tint: "), el("span", { class: "nd-legend" }),
      el("span", { class: "iw-status" }, " negative → 0 → positive; the maximum is outlined")),
    exErrors, topBox, el("h4", {}, "Across quantiles of the window maxima (random sample of windows)"), quantBox);

  const histBox = el("div", { "data-role": "histogram" });
  const statsBox = el("div", { "data-role": "stats" });
  const classBox = el("div", { class: "nd-class", "data-role": "class" });
  const promotedBox = el("div", { "data-role": "promoted" });
  const suppressedBox = el("div", { "data-role": "suppressed" });
  const explBox = el("div", { "data-role": "explanations" });
  const right = el("div", { class: "nd-right" },
    el("h4", {}, "Explanations"), explBox,
    el("h4", {}, "Activation histogram (log counts, signed log bins)"), histBox,
    el("h4", {}, "Statistics"), statsBox, el("h4", {}, "Weights"), classBox,
    el("div", { class: "nd-tokens" }, promotedBox, suppressedBox));

  const promptInput = el("textarea", { rows: "2", "data-role": "prompt", "aria-label": "prompt", placeholder: "prompt" });
  promptInput.value = String(model.get("prompt") ?? "");
  const factorInput = el("input", { type: "number", step: "0.5", class: "nd-factor", "data-role": "factor", "aria-label": "amplify factor" });
  factorInput.value = String(model.get("factor") ?? 4);
  const ablateBtn = btn("ablate", "Ablate", "rerun the prompt with this unit set to zero");
  const amplifyBtn = btn("amplify", "Amplify", "rerun the prompt with this unit multiplied by the factor");
  const editStatus = el("span", { class: "iw-status", "data-role": "edit-status" });
  const editErrors = el("div", { "data-role": "edit-errors" });
  const predBox = el("div", { "data-role": "predictions" });
  const genBase = el("pre", { "data-role": "gen-base" });
  const genEdit = el("pre", { "data-role": "gen-edit" });
  const genEditLabel = el("h5", {}, "edited");
  const edit = el("div", { class: "nd-edit" },
    el("h4", {}, "Effect on a prompt"),
    el("div", { class: "nd-edit-controls" }, promptInput, ablateBtn, el("label", {}, "factor ", factorInput), amplifyBtn, editStatus),
    editErrors,
    el("div", { class: "nd-edit-body" }, predBox,
      el("div", { class: "nd-gen" }, el("h5", {}, "baseline continuation"), genBase, genEditLabel, genEdit)));

  root.append(head, errors, el("div", { class: "nd-main" }, left, right), edit);

  // -- state ------------------------------------------------------------------------------------
  let shown: N.Target | null = null;
  let nav: { id: number; target: { site: string; unit: number } | null } | null = null;
  const edits = new LatestRequest();

  function lane(): N.LaneEntry[] {
    const l = model.get("lane");
    return Array.isArray(l) ? (l as N.LaneEntry[]) : [];
  }

  function traitTarget(): N.Target {
    return { site: String(model.get("site") ?? ""), layer: Number(model.get("layer") ?? -1), unit: Number(model.get("unit") ?? 0) };
  }

  function showTarget(t: N.Target): void {
    title.textContent = N.unitTitle(t.site, t.layer, t.unit);
    root.dataset.site = t.site;
    root.dataset.layer = t.layer >= 0 ? String(t.layer) : "";
    root.dataset.unit = String(t.unit);
    layerInput.value = t.layer >= 0 ? String(t.layer) : "";
    layerInput.disabled = t.layer < 0;
    unitInput.value = String(t.unit);
    const editable = Boolean(model.get("editable") ?? true);
    ablateBtn.disabled = !editable;
    amplifyBtn.disabled = !editable;
  }

  // -- rendering ----------------------------------------------------------------------------------
  function exemplarRow(e: ExemplarReply, scale: number): HTMLElement {
    const text = el("span", { class: "ex-text" });
    const acts = e.acts.data;
    e.tokens.forEach((tok, i) => {
      const a = Number(acts[i]);
      const s = tokenSpan(tok);
      s.dataset.act = String(a);
      s.style.backgroundColor = N.actColor(a, scale);
      s.style.color = N.actTextColor(a, scale);
      s.title = `${JSON.stringify(tok)}: ${N.formatAct(a)}`;
      if (i === e.position) {
        s.classList.add("nd-max");
        s.dataset.max = "true";
      }
      text.append(s);
    });
    return el("div", { class: "iw-exemplar", "data-window": String(e.window), "data-value": String(e.value) },
      el("span", { class: "ex-val", title: `window ${e.window}, max at token ${e.position}` }, N.formatAct(e.value)), text);
  }

  function renderExemplars(r: NeuronReply): void {
    const ex = r.exemplars ?? [];
    const groups = r.quantiles ?? [];
    const scale = N.actScale([...ex.map((e) => e.acts.data), ...groups.flatMap((g) => g.exemplars.map((e) => e.acts.data))]);
    root.dataset.scale = String(scale);
    exErrors.replaceChildren();
    if (r.exemplar_error) showRpcError(exErrors, new Error(r.exemplar_error));
    topBox.replaceChildren(...(ex.length ? ex.map((e) => exemplarRow(e, scale)) : [el("div", { class: "iw-status" }, "no exemplars")]));
    quantBox.replaceChildren(...groups.map((g) => el("div", { "data-role": "quantile-group", "data-label": g.label },
      el("h5", {}, `${g.label}: window maxima ${N.formatAct(g.lo)} … ${N.formatAct(g.hi)}`),
      ...g.exemplars.map((e) => exemplarRow(e, scale)))));
  }

  function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function renderHist(r: NeuronReply): void {
    const edges = r.hist.edges.data;
    const counts = r.hist.counts.data;
    const range = N.histRange(counts);
    if (!range) {
      histBox.replaceChildren(el("div", { class: "iw-status" }, "no tokens counted"));
      return;
    }
    const zero = N.zeroBin(edges);
    const padL = 4, padB = 28, padT = 4;
    const box = svg("svg", { width: HIST_W + 2 * padL, height: HIST_H + padB + padT, role: "img" });
    box.setAttribute("aria-label", "activation histogram");
    const g = svg("g", { transform: `translate(${padL},${padT})` });
    for (const b of N.histBars(counts, range, HIST_W, HIST_H)) {
      const rect = svg("rect", { x: b.x.toFixed(2), y: b.y.toFixed(2), width: b.w.toFixed(2), height: b.h.toFixed(2),
        fill: b.bin === zero ? "#888" : Number(edges[b.bin]) < 0 ? "rgb(60,120,230)" : "rgb(245,130,32)",
        "data-bin": b.bin, "data-count": b.count });
      const tip = svg("title", {});
      tip.textContent = `${N.binLabel(edges, b.bin)}: ${b.count.toLocaleString("en-US")} tokens`;
      rect.append(tip);
      g.append(rect);
    }
    const zm = N.zeroMarker(range, zero, HIST_W);
    const line = svg("line", { x1: zm.x, x2: zm.x, y1: 0, y2: HIST_H, stroke: "#c0392b", "stroke-dasharray": "3,2",
      "data-role": "zero-mark", "data-side": zm.side });
    g.append(line);
    g.append(svg("line", { x1: 0, x2: HIST_W, y1: HIST_H, y2: HIST_H, stroke: "#999" }));
    const n = range.hi - range.lo;
    for (const t of N.tickBins(range, zero)) {
      const x = ((t - range.lo) * HIST_W) / n;
      const label = svg("text", { x: x.toFixed(1), y: HIST_H + 12, "font-size": 9, fill: "currentColor", "data-bin": t });
      label.textContent = t === zero ? "0" : N.shortNum(Number(edges[t] === -Infinity ? edges[t + 1] : edges[t]));
      g.append(label);
    }
    const caption = svg("text", { x: 0, y: HIST_H + 24, "font-size": 9, fill: "currentColor" });
    caption.textContent = `bins ${N.binLabel(edges, range.lo)} … ${N.binLabel(edges, range.hi - 1)}${zm.side === "in" ? "" : ` (zero: ${zm.side} of the range)`}`;
    g.append(caption);
    box.append(g);
    histBox.replaceChildren(box);
  }

  function renderStats(r: NeuronReply): void {
    const rows = N.statRows(r.stats).map(([k, label, text]) =>
      el("tr", { "data-stat": k }, el("td", {}, label), el("td", { class: "num" }, text)));
    statsBox.replaceChildren(el("table", { class: "iw-table" }, el("tbody", {}, ...rows)));
  }

  function tokenTable(rows: TokenScore[], heading: string, role: string): HTMLElement {
    const trs = rows.map((t) => el("tr", { "data-token": t.token, "data-id": String(t.id) },
      el("td", {}, tokenSpan(t.token)), el("td", { class: "num" }, fmt(t.score, 2))));
    return el("table", { class: "iw-table", "data-table": role },
      el("thead", {}, el("tr", {}, el("th", {}, heading), el("th", {}, "score"))), el("tbody", {}, ...trs));
  }

  function renderExplanations(r: NeuronReply): void {
    const list = r.explanations ?? [];
    if (list.length === 0) {
      explBox.replaceChildren(el("div", { class: "iw-status" }, "none yet: wb.explain(store, site, unit) adds them"));
      return;
    }
    explBox.replaceChildren(...list.map((e) => {
      const scores = Object.entries(e.scores).map(([k, v]) =>
        `${k} ${v.value == null ? "–" : fmt(v.value, 2)}` + (v.lo == null || v.hi == null ? "" : ` [${fmt(v.lo, 2)}, ${fmt(v.hi, 2)}]`));
      return el("div", { class: "nd-expl", "data-role": "explanation" }, el("b", {}, e.text),
        el("span", { class: "iw-status" }, ` (${e.method}${scores.length ? "; " + scores.join(", ") : ""})`));
    }));
  }

  function renderInfo(r: NeuronReply): void {
    const info = r.info;
    promotedBox.replaceChildren();
    suppressedBox.replaceChildren();
    if (!info) {
      classBox.replaceChildren(el("div", { class: "iw-status" }, "weight analyses are for MLP neurons (neurons.L keys)"));
      return;
    }
    if (info.error) {
      classBox.replaceChildren();
      showRpcError(classBox, new Error(info.error));
      return;
    }
    const badge = (label: string, v: string | undefined, role: string) =>
      el("span", { class: "nd-badge", "data-class": role, title: label }, `${label}: ${v || "—"}`);
    classBox.replaceChildren(
      badge("io class", info.io_class, "io"), badge("vocab class", info.vocab_class, "vocab"),
      el("div", { class: "iw-status" },
        `cos(w_in, w_out) = ${info.io_cos == null ? "–" : fmt(info.io_cos, 2)} · vocab skew ${info.vocab_skew == null ? "–" : fmt(info.vocab_skew, 2)}`
        + ` · vocab kurtosis ${info.vocab_kurtosis == null ? "–" : fmt(info.vocab_kurtosis, 2)}`));
    promotedBox.replaceChildren(tokenTable(info.promoted ?? [], "promoted", "promoted"));
    suppressedBox.replaceChildren(tokenTable(info.suppressed ?? [], "suppressed", "suppressed"));
  }

  function applySummary(r: NeuronReply): void {
    const t = { site: r.state.site, layer: r.state.layer, unit: r.state.unit };
    const changed = !N.sameTarget(shown, t);
    shown = t;
    showTarget(t);
    errors.replaceChildren();
    renderHist(r);
    renderStats(r);
    renderInfo(r);
    renderExplanations(r);
    if (changed) {
      topBox.replaceChildren(el("div", { class: "iw-status" }, "rerunning the top windows…"));
      quantBox.replaceChildren();
      clearEdit();
    }
  }

  // -- navigation ---------------------------------------------------------------------------------
  function navigate(params: { site?: string; layer?: number | string; unit: number | string }, target: { site: string; unit: number } | null): void {
    if (disposed) return;
    if (nav) rpc.cancel(nav.id);
    const req = rpc.request<NeuronReply>("neuron", params, (part: NeuronReply) => {
      if (nav?.id === req.id && part?.state) applySummary(part);
    });
    nav = { id: req.id, target };
    status.textContent = "loading…";
    root.dataset.busy = "true";
    req.promise.then((r) => {
      if (disposed || nav?.id !== req.id) return;
      nav = null;
      root.dataset.busy = "false";
      applySummary(r);
      renderExemplars(r);
      status.textContent = `${r.state.site}: ${r.state.width} units`;
      bump();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || (nav && nav.id !== req.id)) return;
      nav = null;
      root.dataset.busy = "false";
      showRpcError(errors, err, status);
      if (shown) showTarget(shown);
    });
  }

  function go(): void {
    // a box that does not hold an integer goes to the kernel as typed: its error names the problem
    const raw = (input: HTMLInputElement): number | string => N.parseIndex(input.value) ?? input.value;
    const unit = raw(unitInput);
    const cur = shown ?? traitTarget();
    const target = (site: string) => (typeof unit === "number" ? { site, unit } : null);
    if (layerInput.disabled) {
      navigate({ site: cur.site, unit }, target(cur.site));
      return;
    }
    const layer = raw(layerInput);
    const entry = typeof layer === "number" ? N.findLayer(lane(), layer) : null;
    // an unknown layer goes to the kernel too: its message says which layers the store has
    if (entry) navigate({ site: entry.key, unit }, target(entry.key));
    else navigate({ layer, unit }, null);
  }

  function move(delta: 1 | -1): void {
    const cur = shown ?? traitTarget();
    let t: N.Target;
    try {
      t = N.step(lane(), cur.site, cur.unit, delta);
    } catch (err) {
      showRpcError(errors, err, status);
      return;
    }
    showTarget(t);
    navigate({ site: t.site, unit: t.unit }, t);
  }

  // -- ablate / amplify ---------------------------------------------------------------------------
  function clearEdit(): void {
    const prev = edits.inFlight;
    if (prev !== null) {
      edits.finish(prev);
      rpc.cancel(prev);
    }
    predBox.replaceChildren();
    genBase.textContent = "";
    genEdit.textContent = "";
    editErrors.replaceChildren();
    editStatus.textContent = "";
    delete root.dataset.editMode;
  }

  function renderPredictions(p: NonNullable<EditReply["predictions"]>, label: string): void {
    const head = el("tr", {}, el("th", {}, "next token"), el("th", {}, "baseline"), el("th", {}, label), el("th", {}, "change"));
    const trs = N.orderPredictions(p.rows).map((r) => {
      const ch = N.formatChange(r.p_base, r.p_edit);
      return el("tr", { "data-role": "pred-row", "data-token": r.token, "data-id": String(r.id),
        "data-p-base": String(r.p_base), "data-p-edit": String(r.p_edit) },
        el("td", {}, tokenSpan(r.token)), el("td", { class: "num" }, N.formatPct(r.p_base)),
        el("td", { class: "num" }, N.formatPct(r.p_edit)), el("td", { class: `num ${ch.sign}` }, ch.text));
    });
    predBox.replaceChildren(el("table", { class: "iw-table" }, el("thead", {}, head), el("tbody", {}, ...trs)));
  }

  function runEdit(mode: "ablate" | "amplify"): void {
    if (disposed) return;
    const cur = shown ?? traitTarget();
    const factor = Number(factorInput.value);
    const label = N.editLabel(mode, factor);
    const params: Record<string, unknown> = { mode, prompt: promptInput.value, site: cur.site, unit: cur.unit };
    if (mode === "amplify") params.factor = factorInput.value.trim() === "" ? null : factor;
    const req = rpc.request<EditReply>("edit", params, (c: EditReply) => {
      if (!edits.isCurrent(req.id)) return;
      if (c.predictions) renderPredictions(c.predictions, label);
      if (typeof c.gen_base === "string") genBase.textContent = c.gen_base;
      if (typeof c.gen_edit === "string") { genEdit.classList.remove("stale"); genEdit.textContent = c.gen_edit; }
    });
    const prev = edits.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    genEditLabel.textContent = `${label} continuation`;
    genEdit.classList.add("stale");
    editStatus.textContent = "running…";
    editErrors.replaceChildren();
    req.promise.then((c) => {
      if (disposed || !edits.finish(req.id)) return;
      if (c.predictions) renderPredictions(c.predictions, label);
      genBase.textContent = c.gen_base ?? "";
      genEdit.textContent = c.gen_edit ?? "";
      genEdit.classList.remove("stale");
      root.dataset.editMode = mode;
      editStatus.textContent = c.describe ?? "";
      bump();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !edits.finish(req.id)) return;
      genEdit.classList.remove("stale");
      showRpcError(editErrors, err, editStatus);
    });
  }

  // -- events -------------------------------------------------------------------------------------
  prevBtn.addEventListener("click", () => move(-1));
  nextBtn.addEventListener("click", () => move(1));
  goBtn.addEventListener("click", () => go());
  for (const input of [layerInput, unitInput]) {
    input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); go(); } });
  }
  ablateBtn.addEventListener("click", () => runEdit("ablate"));
  amplifyBtn.addEventListener("click", () => runEdit("amplify"));
  promptInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); runEdit("ablate"); }
  });

  // kernel-side changes (Python set site / unit, or the kernel's echo of a request)
  let scheduled = false;
  const onTarget = () => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => {
      scheduled = false;
      if (disposed) return;
      const t = traitTarget();
      if (nav ? N.sameTarget(nav.target, t) : N.sameTarget(shown, t)) return;
      navigate({ site: t.site, unit: t.unit }, t);
    }, 0);
  };
  const onPrompt = () => {
    const p = String(model.get("prompt") ?? "");
    if (p !== promptInput.value && document.activeElement !== promptInput) promptInput.value = p;
  };
  const onFactor = () => {
    const f = String(model.get("factor") ?? 4);
    if (document.activeElement !== factorInput && Number(factorInput.value) !== Number(f)) factorInput.value = f;
  };
  const onEditable = () => { if (shown) showTarget(shown); };
  model.on("change:site", onTarget);
  model.on("change:unit", onTarget);
  model.on("change:prompt", onPrompt);
  model.on("change:factor", onFactor);
  model.on("change:editable", onEditable);

  const first = traitTarget();
  showTarget(first);
  navigate({ site: first.site, unit: first.unit }, first);

  return () => {
    disposed = true;
    model.off("change:site", onTarget);
    model.off("change:unit", onTarget);
    model.off("change:prompt", onPrompt);
    model.off("change:factor", onFactor);
    model.off("change:editable", onEditable);
    rpc.dispose();
  };
}

export default { render };
