// FeatureDashboard: one latent of a sparse dictionary in the shape of SAEDashboard / Neuronpedia:
// top activations and examples by activation interval (from a scan store), activation density
// and histogram, positive / negative logit effects, nearest latents by decoder cosine, and a box
// to try any text (tokens tinted by this latent's activation). `mountDashboard` is also used by
// the FeatureList widget, which opens a latent's dashboard below its token list.
//
// Browser-test hooks: root .iw-root.iw-feature-dashboard[data-run-count][data-latent]; the view
// .iw-fd-view[data-latent]: [data-role=title], [data-role=label], buttons [data-action=prev|next|go],
// [data-role=latent-input]; [data-role=store-note] (no store); [data-role=top-examples] and
// [data-role=intervals] > [data-role=interval][data-lo][data-hi][data-count] holding
// .iw-exemplar[data-window][data-value] with tokens .iw-tok[data-act] (maximum: data-max="true");
// [data-role=density][data-density]; [data-role=histogram] svg rect[data-bin][data-count];
// [data-role=logits-pos|logits-neg] rows tr[data-token][data-score]; [data-role=nearest] rows
// tr[data-latent][data-cos] (click: go there); [data-role=custom-input], [data-action=custom],
// [data-role=custom-tokens] .iw-tok[data-act] ([data-role=custom-tokens][data-latent][data-max]);
// errors .iw-error in [data-role=errors|examples-errors|custom-errors].
import type { NDArray } from "./lib/arrays";
import { el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as F from "./lib/features-logic";
import * as N from "./lib/neuron-dashboard-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { LatestRequest } from "./lib/steering-logic";
import { imageButtons } from "./lib/snapshot";

export interface ExemplarReply { window: number; position: number; value: number | null; tokens: string[]; acts: NDArray }
export interface TokenScore { token: string; id: number; score: number }
export interface LatentReply {
  state: { latent: number; d_sae: number; site: string; out_site: string | null; architecture: string; dictionary: string };
  label: string;
  explanation: string;
  decoder_norm: number;
  nearest: { latent: number; cos: number; label: string }[];
  logits: { pos: TokenScore[]; neg: TokenScore[]; error?: string };
  store: null | { key: string; n_tokens: number; n_windows: number; complete: boolean; density: number | null;
    stats: Record<string, number | null>; hist: { edges: NDArray; counts: NDArray; center: number } };
  store_note?: string;
  examples?: { error?: string; top?: ExemplarReply[]; mismatch?: string | null; n_inactive_sample?: number;
    intervals?: { lo: number; hi: number; count: number; n_sample: number; exemplars: ExemplarReply[] }[] };
  prompt_acts?: NDArray;
}
interface CustomReply { latent: number; text: string; tokens: string[]; acts: NDArray; max: number }

const SVG = "http://www.w3.org/2000/svg";
const HIST_W = 320;
const HIST_H = 80;
const BAR_W = 60;

export const DASHBOARD_CSS = `
.iw-fd-view { max-width: 1200px; border-top: 1px solid var(--jp-border-color2, #ddd); padding-top: 4px; }
.iw-fd-view .fd-head { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 2px; }
.iw-fd-view .fd-title { font-size: 15px; font-weight: 600; margin: 0 8px 0 0; }
.iw-fd-view .fd-head input[type=number] { width: 72px; }
.iw-fd-view .fd-sub { color: var(--jp-ui-font-color2, #555); font-size: 11px; margin-bottom: 4px; }
.iw-fd-view .fd-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-fd-view .fd-left { flex: 1 1 520px; min-width: 320px; }
.iw-fd-view .fd-right { flex: 0 1 440px; min-width: 300px; max-width: 100%; }
.iw-fd-view h4 { margin: 8px 0 3px; font-size: 12px; }
.iw-fd-view h5 { margin: 6px 0 2px; font-size: 11px; color: var(--jp-ui-font-color2, #555); font-weight: 600; }
.iw-fd-view .iw-exemplar { display: flex; gap: 6px; padding: 2px 0; border-bottom: 1px solid var(--jp-border-color2, #f0f0f0); }
.iw-fd-view .ex-val { flex: 0 0 52px; text-align: right; color: var(--jp-ui-font-color2, #555); font-variant-numeric: tabular-nums; }
.iw-fd-view .ex-text { flex: 1 1 auto; white-space: pre-wrap; word-break: break-word; line-height: 18px; }
.iw-fd-view .ex-text .iw-tok, .iw-fd-view .fd-custom-out .iw-tok { white-space: pre-wrap; }
.iw-fd-view .iw-tok.fd-max { outline: 2px solid #c0392b; outline-offset: -1px; }
.iw-fd-view svg { color: var(--jp-ui-font-color2, #555); display: block; background: var(--jp-layout-color2, #fcfcfc); border: 1px solid var(--jp-border-color2, #eee); }
.iw-fd-view .fd-logits { display: flex; flex-wrap: wrap; gap: 10px; }
.iw-fd-view .fd-logits > div { flex: 1 1 190px; min-width: 0; }
.iw-fd-view .fd-bar { display: inline-block; height: 8px; vertical-align: middle; border-radius: 1px; }
.iw-fd-view .fd-bar.pos { background: rgb(60,120,230); }
.iw-fd-view .fd-bar.neg { background: rgb(220,80,60); }
.iw-fd-view tr[data-latent] { cursor: pointer; }
.iw-fd-view tr[data-latent]:hover { background: rgba(40,95,225,0.12); }
.iw-fd-view .fd-note { background: #fff8e1; border: 1px solid #f3e2a9; padding: 4px 8px; border-radius: 4px; color: #6d5a1b; }
.iw-fd-view .fd-custom { margin-top: 8px; border-top: 1px solid var(--jp-border-color2, #eee); padding-top: 4px; }
.iw-fd-view .fd-custom-controls { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.iw-fd-view .fd-custom textarea { flex: 1 1 320px; min-width: 200px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.iw-fd-view .fd-custom-out { margin-top: 4px; line-height: 18px; white-space: pre-wrap; word-break: break-word; }
.iw-fd-view .fd-legend { display: inline-block; width: 90px; height: 8px; vertical-align: middle; border: 1px solid var(--jp-border-color2, #ddd);
  background: linear-gradient(to right, #fff, rgb(245,130,32)); }
`;

export interface DashboardOptions {
  rpc: Rpc;
  dSae: number;
  text: string;
  /** Called after every kernel reply applied to the view (the run counter). */
  bump: () => void;
  /** The latent shown changed (a reply arrived for it). */
  onShown?: (r: LatentReply) => void;
  /** The custom text was run (to sync a trait). */
  onText?: (text: string) => void;
}

export interface DashboardView {
  el: HTMLElement;
  show(latent: number): void;
  shown(): number | null;
  target(): number | null;
  setText(text: string): void;
  dispose(): void;
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** Tokens tinted by activations (orange scale), the maximum outlined; text only via textContent. */
export function tintedTokens(tokens: string[], acts: ArrayLike<number>, scale: number, maxPos = -1, cls = "ex-text"): HTMLElement {
  const box = el("span", { class: cls });
  tokens.forEach((tok, i) => {
    const a = Number(acts[i]);
    const s = tokenSpan(tok);
    s.dataset.act = String(a);
    s.style.backgroundColor = N.actColor(a, scale);
    s.style.color = N.actTextColor(a, scale);
    s.title = `${JSON.stringify(tok)}: ${N.formatAct(a)}`;
    if (i === maxPos) {
      s.classList.add("fd-max");
      s.dataset.max = "true";
    }
    box.append(s);
  });
  return box;
}

export function mountDashboard(opts: DashboardOptions): DashboardView {
  const { rpc } = opts;
  let disposed = false;
  const view = el("div", { class: "iw-fd-view", "data-role": "dashboard-view" });

  // -- layout ---------------------------------------------------------------------------------------
  const btn = (action: string, label: string, tip: string) =>
    el("button", { class: "iw-btn", type: "button", "data-action": action, title: tip }, label);
  const title = el("h3", { class: "fd-title", "data-role": "title" }, "Latent …");
  const latentInput = el("input", { type: "number", min: "0", max: String(opts.dSae - 1), step: "1",
    "data-role": "latent-input", "aria-label": "latent" });
  const prevBtn = btn("prev", "◀ prev", "previous latent");
  const nextBtn = btn("next", "next ▶", "next latent");
  const goBtn = btn("go", "Go", "show this latent");
  const status = el("span", { class: "iw-status", "data-role": "status" });
  const sub = el("div", { class: "fd-sub", "data-role": "label" });
  const errors = el("div", { "data-role": "errors" });

  const topBox = el("div", { "data-role": "top-examples" });
  const intervalBox = el("div", { "data-role": "intervals" });
  const exErrors = el("div", { "data-role": "examples-errors" });
  const noteBox = el("div");
  const left = el("div", { class: "fd-left" }, noteBox, exErrors,
    el("h4", {}, "Top activations ", el("span", { class: "iw-status" }, " tint: 0 "), el("span", { class: "fd-legend" }),
      el("span", { class: "iw-status" }, " max; the token with the window's maximum is outlined")),
    topBox, el("h4", {}, "Examples by activation interval (random sample of windows)"), intervalBox);

  const densityBox = el("div", { "data-role": "density" });
  const histBox = el("div", { "data-role": "histogram" });
  const posBox = el("div", { "data-role": "logits-pos" });
  const negBox = el("div", { "data-role": "logits-neg" });
  const logitNote = el("div", { class: "iw-status" });
  const nearBox = el("div", { "data-role": "nearest" });
  const right = el("div", { class: "fd-right" },
    el("h4", {}, "Activation density"), densityBox,
    el("h4", {}, "Histogram of non-zero activations (log counts)"), histBox,
    el("h4", {}, "Logit effects (decoder direction · final-norm gain · unembedding)"), logitNote,
    el("div", { class: "fd-logits" }, negBox, posBox),
    el("h4", {}, "Nearest latents (decoder cosine)"), nearBox);

  const customInput = el("textarea", { rows: "2", "data-role": "custom-input", "aria-label": "custom text",
    placeholder: "type any text: its tokens are tinted by this latent's activation" });
  customInput.value = opts.text;
  const customBtn = btn("custom", "Encode", "run the model on this text and tint its tokens by the latent");
  const customStatus = el("span", { class: "iw-status", "data-role": "custom-status" });
  const customErrors = el("div", { "data-role": "custom-errors" });
  const customOut = el("div", { class: "fd-custom-out", "data-role": "custom-tokens" });
  const custom = el("div", { class: "fd-custom" }, el("h4", {}, "Test custom text"),
    el("div", { class: "fd-custom-controls" }, customInput, customBtn, customStatus), customErrors, customOut);

  view.append(el("div", { class: "fd-head" }, title, prevBtn, el("label", {}, "latent ", latentInput), goBtn, nextBtn, status),
    sub, errors, el("div", { class: "fd-main" }, left, right), custom);

  // -- state -----------------------------------------------------------------------------------------
  let shown: number | null = null;
  let target: number | null = null;
  const nav = new LatestRequest();
  const customReq = new LatestRequest();

  function exemplarRow(e: ExemplarReply, scale: number): HTMLElement {
    return el("div", { class: "iw-exemplar", "data-window": String(e.window), "data-value": String(e.value) },
      el("span", { class: "ex-val", title: `window ${e.window}, max at token ${e.position}` }, N.formatAct(e.value)),
      tintedTokens(e.tokens, e.acts.data, scale, e.position));
  }

  function renderHeader(r: LatentReply): void {
    const i = r.state.latent;
    title.textContent = F.latentTitle(i, r.label);
    view.dataset.latent = String(i);
    latentInput.value = String(i);
    const where = r.state.site + (r.state.out_site ? ` → ${r.state.out_site}` : "");
    const parts = [`${r.state.dictionary} · ${r.state.architecture} · ${where} · ${r.state.d_sae} latents`,
      `|W_dec[${i}]| = ${fmt(r.decoder_norm, 3)}`];
    if (r.explanation) parts.push(`explanation: ${r.explanation}`);
    sub.textContent = parts.join(" · ");
  }

  function renderDensity(r: LatentReply): void {
    if (!r.store) {
      densityBox.replaceChildren(el("div", { class: "iw-status" }, "– (needs a scan store)"));
      densityBox.dataset.density = "";
      histBox.replaceChildren();
      return;
    }
    const s = r.store;
    densityBox.dataset.density = String(s.density ?? "");
    densityBox.replaceChildren(
      el("div", { "data-role": "density-text" }, F.densityText(s.density)),
      el("div", { class: "iw-status" }, `${s.n_tokens.toLocaleString("en-US")} tokens in ${s.n_windows.toLocaleString("en-US")} windows`
        + ` (store key ${s.key}${s.complete ? "" : ", partial scan"}) · max ${N.formatAct(s.stats.max ?? null)} · mean ${N.formatAct(s.stats.mean ?? null)}`));
    const edges = s.hist.edges.data;
    const zero = N.zeroBin(edges);
    const counts = F.activeCounts(s.hist.counts.data, zero);
    const range = N.histRange(counts);
    if (!range) {
      histBox.replaceChildren(el("div", { class: "iw-status" }, "never active on the scanned tokens"));
      return;
    }
    const padL = 4, padB = 26, padT = 4;
    const box = svg("svg", { width: HIST_W + 2 * padL, height: HIST_H + padB + padT, role: "img" });
    box.setAttribute("aria-label", "histogram of non-zero activations");
    const g = svg("g", { transform: `translate(${padL},${padT})` });
    for (const b of N.histBars(counts, range, HIST_W, HIST_H)) {
      const rect = svg("rect", { x: b.x.toFixed(2), y: b.y.toFixed(2), width: b.w.toFixed(2), height: b.h.toFixed(2),
        fill: Number(edges[b.bin]) < 0 ? "rgb(60,120,230)" : "rgb(245,130,32)", "data-bin": b.bin, "data-count": b.count });
      const tip = svg("title", {});
      tip.textContent = `${N.binLabel(edges, b.bin)}: ${b.count.toLocaleString("en-US")} tokens`;
      rect.append(tip);
      g.append(rect);
    }
    g.append(svg("line", { x1: 0, x2: HIST_W, y1: HIST_H, y2: HIST_H, stroke: "#999" }));
    const n = range.hi - range.lo;
    for (const t of N.tickBins(range, -1)) {
      const label = svg("text", { x: (((t - range.lo) * HIST_W) / n).toFixed(1), y: HIST_H + 12, "font-size": 9, fill: "currentColor" });
      label.textContent = N.shortNum(Number(edges[t] === -Infinity ? edges[t + 1] : edges[t]));
      g.append(label);
    }
    const caption = svg("text", { x: 0, y: HIST_H + 23, "font-size": 9, fill: "currentColor" });
    caption.textContent = `bins ${N.binLabel(edges, range.lo)} … ${N.binLabel(edges, range.hi - 1)} (zero excluded)`;
    g.append(caption);
    box.append(g);
    histBox.replaceChildren(box);
  }

  function logitTable(rows: TokenScore[], heading: string, cls: "pos" | "neg", scale: number): HTMLElement {
    const trs = rows.map((t) => el("tr", { "data-token": t.token, "data-id": String(t.id), "data-score": String(t.score) },
      el("td", {}, tokenSpan(t.token)),
      el("td", { class: "num" }, fmt(t.score, 2)),
      el("td", {}, el("span", { class: `fd-bar ${cls}`, style: `width:${F.barWidth(t.score, scale, BAR_W).toFixed(1)}px` }))));
    return el("table", { class: "iw-table" },
      el("thead", {}, el("tr", {}, el("th", {}, heading), el("th", {}, "logit"), el("th", {}))), el("tbody", {}, ...trs));
  }

  function renderLogits(r: LatentReply): void {
    const scale = F.maxAbs([...r.logits.pos, ...r.logits.neg]);
    logitNote.textContent = r.logits.error ? `not available: ${r.logits.error}` : "";
    negBox.replaceChildren(logitTable(r.logits.neg, "negative", "neg", scale));
    posBox.replaceChildren(logitTable(r.logits.pos, "positive", "pos", scale));
  }

  function renderNearest(r: LatentReply): void {
    const trs = r.nearest.map((n) => {
      const tr = el("tr", { "data-latent": String(n.latent), "data-cos": String(n.cos), title: `show latent ${n.latent}` },
        el("td", { class: "num" }, `#${n.latent}`), el("td", { class: "num" }, F.formatCos(n.cos)), el("td", {}, n.label));
      tr.addEventListener("click", () => show(n.latent));
      return tr;
    });
    nearBox.replaceChildren(el("table", { class: "iw-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "latent"), el("th", {}, "cos"), el("th", {}, "label"))), el("tbody", {}, ...trs)));
  }

  function renderStoreNote(r: LatentReply): void {
    if (r.store) {
      noteBox.replaceChildren();
      return;
    }
    noteBox.replaceChildren(el("div", { class: "fd-note", "data-role": "store-note" }, r.store_note ?? "No scan store."));
    topBox.replaceChildren(el("div", { class: "iw-status" }, "– (needs a scan store)"));
    intervalBox.replaceChildren();
  }

  function renderExamples(r: LatentReply): void {
    exErrors.replaceChildren();
    const ex = r.examples;
    if (!r.store || !ex) return;
    if (ex.error) {
      showRpcError(exErrors, new Error(ex.error));
      topBox.replaceChildren();
      intervalBox.replaceChildren();
      return;
    }
    if (ex.mismatch) exErrors.replaceChildren(el("div", { class: "fd-note", "data-role": "mismatch" }, ex.mismatch));
    const top = ex.top ?? [];
    const groups = ex.intervals ?? [];
    const scale = N.actScale([...top.map((e) => e.acts.data), ...groups.flatMap((g) => g.exemplars.map((e) => e.acts.data))]);
    view.dataset.scale = String(scale);
    topBox.replaceChildren(...(top.length ? top.map((e) => exemplarRow(e, scale))
      : [el("div", { class: "iw-status" }, "never active in the scanned windows")]));
    const boxes = groups.map((g) => el("div", { "data-role": "interval", "data-lo": String(g.lo), "data-hi": String(g.hi), "data-count": String(g.count) },
      el("h5", {}, F.intervalLabel(g.lo, g.hi, g.count, g.n_sample)),
      ...g.exemplars.map((e) => exemplarRow(e, scale))));
    if (ex.n_inactive_sample !== undefined && groups.length) {
      boxes.push(el("div", { class: "iw-status" }, `${ex.n_inactive_sample} of ${groups[0].n_sample} sampled windows: never active`));
    }
    intervalBox.replaceChildren(...(boxes.length ? boxes : [el("div", { class: "iw-status" }, "no sampled window is active")]));
  }

  function applySummary(r: LatentReply): void {
    const changed = shown !== r.state.latent;
    shown = r.state.latent;
    errors.replaceChildren();
    renderHeader(r);
    renderDensity(r);
    renderLogits(r);
    renderNearest(r);
    renderStoreNote(r);
    if (changed && r.store) {
      topBox.replaceChildren(el("div", { class: "iw-status" }, "rerunning the top windows…"));
      intervalBox.replaceChildren();
    }
    opts.onShown?.(r);
  }

  // -- requests --------------------------------------------------------------------------------------
  function show(latent: number): void {
    if (disposed) return;
    target = latent;
    const req = rpc.request<LatentReply>("latent", { latent }, (part: LatentReply) => {
      if (nav.isCurrent(req.id) && part?.state) applySummary(part);
    });
    const prev = nav.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    status.textContent = "loading…";
    view.dataset.busy = "true";
    req.promise.then((r) => {
      if (disposed || !nav.finish(req.id)) return;
      view.dataset.busy = "false";
      applySummary(r);
      renderExamples(r);
      status.textContent = "";
      opts.bump();
      if (customInput.value.trim()) runCustom();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !nav.finish(req.id)) return;
      view.dataset.busy = "false";
      target = shown;
      if (shown !== null) latentInput.value = String(shown);
      showRpcError(errors, err, status);
    });
  }

  function runCustom(): void {
    if (disposed || shown === null) return;
    const text = customInput.value;
    const latent = shown;
    const req = rpc.request<CustomReply>("custom", { text, latent });
    const prev = customReq.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    customStatus.textContent = "running…";
    customOut.classList.add("stale");
    req.promise.then((c) => {
      if (disposed || !customReq.finish(req.id)) return;
      customErrors.replaceChildren();
      const scale = c.max > 0 ? c.max : 1;
      const acts = c.acts.data;
      let best = -1;
      for (let i = 0; i < acts.length; i++) if (acts[i] > 0 && (best < 0 || acts[i] > acts[best])) best = i;
      customOut.replaceChildren(tintedTokens(c.tokens, acts, scale, best, "fd-custom-tokens"));
      customOut.dataset.latent = String(c.latent);
      customOut.dataset.max = String(c.max);
      customOut.classList.remove("stale");
      customStatus.textContent = `latent ${c.latent}: max ${N.formatAct(c.max)} on ${c.tokens.length} tokens`;
      opts.onText?.(text);
      opts.bump();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !customReq.finish(req.id)) return;
      customOut.classList.remove("stale");
      showRpcError(customErrors, err, customStatus);
    });
  }

  function go(): void {
    const v = F.parseLatent(latentInput.value, opts.dSae);
    if (v === null) {
      showRpcError(errors, new Error(`latent ${JSON.stringify(latentInput.value)} is not an index in 0..${opts.dSae - 1}`), status);
      return;
    }
    show(v);
  }

  const base = () => target ?? shown ?? 0;
  prevBtn.addEventListener("click", () => show(F.stepLatent(base(), -1, opts.dSae)));
  nextBtn.addEventListener("click", () => show(F.stepLatent(base(), 1, opts.dSae)));
  goBtn.addEventListener("click", go);
  latentInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); go(); } });
  customBtn.addEventListener("click", runCustom);
  customInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); runCustom(); }
  });

  return {
    el: view,
    show,
    shown: () => shown,
    target: () => target,
    setText(text: string) {
      if (document.activeElement !== customInput && customInput.value !== text) customInput.value = text;
    },
    dispose() { disposed = true; },
  };
}

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-feature-dashboard", "data-run-count": "0" });
  withStyle(root, DASHBOARD_CSS);
  const bump = runCounter(root);
  const heading = el("div", { class: "iw-status", "data-role": "dictionary" }, String(model.get("title") ?? ""));
  const view = mountDashboard({
    rpc, dSae: Number(model.get("d_sae") ?? 1), text: String(model.get("text") ?? ""), bump,
    onShown: (r) => { root.dataset.latent = String(r.state.latent); },
  });
  root.append(el("div", { class: "fd-top", style: "display:flex;align-items:center;justify-content:space-between;gap:8px" }, heading, imageButtons(rpc, root, "feature-dashboard")), view.el);
  host.append(root);

  const onLatent = () => {
    const v = Number(model.get("latent") ?? 0);
    if (v !== view.target()) view.show(v);
  };
  const onText = () => view.setText(String(model.get("text") ?? ""));
  model.on("change:latent", onLatent);
  model.on("change:text", onText);
  view.show(Number(model.get("latent") ?? 0));

  return () => {
    model.off("change:latent", onLatent);
    model.off("change:text", onText);
    view.dispose();
    rpc.dispose();
  };
}

export default { render };
