// LogitLens: a layers × positions grid of what each layer's residual stream predicts
// (logit lens or tuned lens). Each cell shows the top token, coloured by its probability
// (or a chosen target's); hover shows the top-k; click pins the cell ([layer, pos] → Python).
//
// Browser-test hooks: root .iw-root.iw-lens[data-run-count]; controls
// [data-testid=prompt-input|run|color-by]; cells [data-testid=lens-cell][data-layer][data-pos]
// (data-pinned="true" on the pinned one); [data-testid=lens-tooltip]; [data-testid=pin-panel]
// with rows [data-testid=pin-row]; [data-testid=token-label] column headers.
import type { NDArray } from "./lib/arrays";
import { el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as L from "./lib/lens-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { imageButtons } from "./lib/snapshot";

interface RunReply {
  state: { prompt: string; targets: string[]; top_k: number };
  tokens: string[];
  layers: NDArray;
  positions: NDArray;
  top_ids: NDArray;
  top_probs: NDArray;
  id_text: Record<string, string>;
  targets: string[];
  target_ids: NDArray;
  target_probs: NDArray;
  target_ranks: NDArray;
  kl: NDArray;
  kind: string;
}

const CSS = `
.iw-lens { position: relative; }
.iw-lens .ll-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 4px; }
.iw-lens .ll-controls label { display: inline-flex; gap: 3px; align-items: center; }
.iw-lens textarea.ll-prompt { flex: 1 1 320px; min-width: 200px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; resize: vertical; }
.iw-lens .ll-help { color: var(--jp-ui-font-color2, #666); font-size: 11px; margin: 2px 0 4px; }
.iw-lens .ll-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-lens .ll-gridwrap { overflow: auto; max-height: 560px; max-width: 100%; }
.iw-lens .ll-grid { display: grid; gap: 1px; font-size: 10px; font-family: var(--jp-code-font-family, monospace); }
.iw-lens .ll-cell { min-width: 44px; height: 16px; line-height: 16px; text-align: center; white-space: pre; overflow: hidden;
  cursor: pointer; padding: 0 2px; border-radius: 2px; }
.iw-lens .ll-cell:hover { outline: 1px solid #333; }
.iw-lens .ll-cell.ll-pinned { outline: 2px solid #f0a020; outline-offset: -1px; }
.iw-lens .ll-rowlabel { text-align: right; padding-right: 4px; color: var(--jp-ui-font-color2, #555); line-height: 16px; position: sticky; left: 0; background: var(--jp-layout-color1, #fafafa); }
.iw-lens .ll-collabel { text-align: center; writing-mode: vertical-rl; transform: rotate(180deg); max-height: 90px; overflow: hidden;
  padding: 2px 0; position: sticky; top: 0; background: var(--jp-layout-color1, #fafafa); }
.iw-lens .ll-tooltip { position: absolute; z-index: 10; background: var(--jp-layout-color0, #fff); border: 1px solid var(--jp-border-color1, #bbb); border-radius: 4px;
  box-shadow: 0 2px 6px rgba(0,0,0,.2); padding: 4px 6px; pointer-events: none; font-size: 11px; display: none; }
.iw-lens .ll-panel { min-width: 220px; font-size: 12px; }
.iw-lens .ll-panel h4 { margin: 2px 0 4px; font-size: 12px; }
.iw-lens .ll-legend { display: inline-block; width: 100px; height: 8px; vertical-align: middle;
  background: linear-gradient(to right, #fff, rgb(30,100,215)); border: 1px solid var(--jp-border-color2, #ddd); }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-lens", "data-run-count": "0" });
  withStyle(root, CSS);
  host.append(root);

  let pending: number | null = null;
  let last: RunReply | null = null;
  let grid: L.LensGrid | null = null;
  let pushing = false;

  const promptInput = el("textarea", { class: "ll-prompt", rows: "2", "data-testid": "prompt-input", placeholder: "prompt", "aria-label": "prompt" });
  promptInput.value = String(model.get("prompt") ?? "");
  const runBtn = el("button", { class: "iw-btn", "data-testid": "run", type: "button" }, "Run");
  const colorBy = el("select", { "data-testid": "color-by", "aria-label": "colour by" });
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  const controls = el("div", { class: "ll-controls" }, promptInput, runBtn, el("label", {}, "colour by", colorBy),
    imageButtons(rpc, root, "lens"), status);
  const help = el("div", { class: "ll-help" },
    "Rows: layers (resid_post, last layer on top); columns: tokens. Each cell shows the top next-token prediction of that layer at that position. ",
    "Hover a cell for its top-k; click it to pin that layer and position (widget.pinned in Python). Colour: ",
    el("span", { class: "ll-legend" }), " probability 0 → 1.");
  const errors = el("div", { "data-testid": "errors" });
  const gridWrap = el("div", { class: "ll-gridwrap" });
  const panel = el("div", { class: "ll-panel", "data-testid": "pin-panel" });
  const tooltip = el("div", { class: "ll-tooltip", "data-testid": "lens-tooltip" });
  root.append(controls, help, errors, el("div", { class: "ll-main" }, gridWrap, panel), tooltip);

  const bump = runCounter(root);
  const showError = (err: unknown): void => showRpcError(errors, err, status);

  function currentColorBy(): string {
    return L.normalizeColorBy(String(model.get("color_by") ?? "top"), grid?.targets ?? []);
  }

  function syncColorBy(targets: string[]): void {
    const opts = [el("option", { value: "top" }, "top token"), ...targets.map((t) => el("option", { value: t }, `p(${JSON.stringify(t)})`))];
    colorBy.replaceChildren(...opts);
    colorBy.value = currentColorBy();
  }

  function topTable(rows: L.TopRow[], testid: string): HTMLTableElement {
    const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "token"), el("th", {}, "p"));
    const trs = rows.map((r) => el("tr", { "data-testid": testid, "data-id": String(r.id), "data-token": r.token, "data-prob": String(r.prob) },
      el("td", { class: "num" }, String(r.rank)), el("td", {}, tokenSpan(r.token)), el("td", { class: "num" }, L.formatProb(r.prob))));
    return el("table", { class: "iw-table" }, el("thead", {}, head), el("tbody", {}, ...trs));
  }

  function targetLines(i: number, j: number): HTMLElement[] {
    if (!grid) return [];
    const nP = grid.positions.length;
    const T = grid.targets.length;
    const out: HTMLElement[] = grid.targets.map((t, ti) => {
      const at = L.flat(i, j, nP, T, ti);
      return el("div", { "data-testid": "target-line" }, `p(${JSON.stringify(t)}) = ${L.formatProb(Number(grid!.target_probs[at]))}, rank ${grid!.target_ranks[at]}`);
    });
    out.push(el("div", { class: "iw-status" }, `KL(final ‖ lens) = ${fmt(Number(grid.kl[i * nP + j]))} nats`));
    return out;
  }

  function cellTitle(i: number, j: number): string {
    const Lyr = Number(grid!.layers[i]);
    const p = Number(grid!.positions[j]);
    return `layer ${Lyr}, position ${p} (${JSON.stringify(last!.tokens[p])})`;
  }

  function renderPanel(): void {
    const cell = grid ? L.pinnedCell(model.get("pinned"), grid) : null;
    root.querySelectorAll<HTMLElement>(".ll-cell.ll-pinned").forEach((c) => { c.classList.remove("ll-pinned"); c.dataset.pinned = "false"; });
    if (!grid || !cell) {
      panel.dataset.layer = "";
      panel.dataset.pos = "";
      panel.replaceChildren(el("div", { class: "iw-status" }, "Click a cell to pin it: its top-k shows here."));
      return;
    }
    const [i, j] = cell;
    const Lyr = Number(grid.layers[i]);
    const p = Number(grid.positions[j]);
    const node = gridWrap.querySelector<HTMLElement>(`[data-testid=lens-cell][data-layer="${Lyr}"][data-pos="${p}"]`);
    if (node) { node.classList.add("ll-pinned"); node.dataset.pinned = "true"; }
    panel.dataset.layer = String(Lyr);
    panel.dataset.pos = String(p);
    panel.replaceChildren(
      el("h4", {}, `Pinned: ${cellTitle(i, j)}`),
      el("div", { class: "iw-status" }, `site resid_post.${Lyr} · ${last?.kind ?? "logit"} lens`),
      topTable(L.cellTopK(grid, i, j), "pin-row"),
      ...targetLines(i, j));
  }

  function colorCells(): void {
    if (!grid) return;
    const by = currentColorBy();
    gridWrap.querySelectorAll<HTMLElement>("[data-testid=lens-cell]").forEach((c) => {
      const v = L.colorValue(grid!, Number(c.dataset.i), Number(c.dataset.j), by);
      c.style.backgroundColor = L.cellColor(v);
      c.style.color = L.cellTextColor(v);
      c.dataset.value = String(v);
    });
  }

  function renderGrid(r: RunReply): void {
    const g = grid!;
    const nL = g.layers.length;
    const nP = g.positions.length;
    const box = el("div", { class: "ll-grid", "data-testid": "lens-grid" });
    box.style.gridTemplateColumns = `auto repeat(${nP}, minmax(44px, max-content))`;
    box.append(el("div", { class: "ll-rowlabel" }, r.kind === "tuned" ? "tuned" : "layer"));
    for (let j = 0; j < nP; j++) {
      const p = Number(g.positions[j]);
      const lab = el("div", { class: "ll-collabel", "data-testid": "token-label", "data-pos": String(p), title: `position ${p}` }, tokenSpan(r.tokens[p]));
      box.append(lab);
    }
    for (const i of L.displayRows(nL)) {
      const Lyr = Number(g.layers[i]);
      box.append(el("div", { class: "ll-rowlabel" }, String(Lyr)));
      for (let j = 0; j < nP; j++) {
        const top = L.cellTopK(g, i, j)[0];
        const cell = el("div", {
          class: "ll-cell", "data-testid": "lens-cell", "data-layer": String(Lyr), "data-pos": String(g.positions[j]),
          "data-i": String(i), "data-j": String(j), "data-top": top.token, role: "button", tabindex: "0",
        }, L.truncateToken(top.token));
        box.append(cell);
      }
    }
    gridWrap.replaceChildren(box);
    colorCells();
  }

  function apply(r: RunReply): void {
    last = r;
    grid = {
      layers: r.layers.data, positions: r.positions.data, top_ids: r.top_ids.data, top_probs: r.top_probs.data,
      k: r.top_ids.shape[2] ?? 1, targets: r.targets, target_probs: r.target_probs.data, target_ranks: r.target_ranks.data,
      kl: r.kl.data, id_text: r.id_text,
    };
    syncColorBy(r.targets);
    renderGrid(r);
    renderPanel();
    errors.replaceChildren();
    root.dataset.kind = r.kind;
    root.dataset.tokens = String(r.tokens.length);
    status.textContent = `${r.kind} lens · ${r.tokens.length} tokens × ${r.layers.shape[0]} layers`;
  }

  function run(): void {
    const prompt = promptInput.value;
    if (prompt !== model.get("prompt")) {
      pushing = true;
      try { model.set("prompt", prompt); model.save_changes(); } finally { pushing = false; }
    }
    if (pending !== null) rpc.cancel(pending);
    const req = rpc.request<RunReply>("run", { prompt, targets: model.get("targets") ?? [], top_k: Number(model.get("top_k") ?? 5) });
    pending = req.id;
    status.textContent = "running…";
    root.dataset.busy = "true";
    req.promise.then((r) => {
      if (pending !== req.id) return;
      pending = null;
      root.dataset.busy = "false";
      apply(r);
      bump();
    }).catch((err) => {
      if (err instanceof Cancelled) return;
      if (pending === req.id) pending = null;
      root.dataset.busy = "false";
      showError(err);
    });
  }

  function cellOf(ev: Event): HTMLElement | null {
    return (ev.target as HTMLElement).closest<HTMLElement>("[data-testid=lens-cell]");
  }

  gridWrap.addEventListener("mouseover", (ev) => {
    const c = cellOf(ev);
    if (!c || !grid) return;
    const i = Number(c.dataset.i), j = Number(c.dataset.j);
    tooltip.replaceChildren(el("div", {}, el("b", {}, cellTitle(i, j))), topTable(L.cellTopK(grid, i, j), "tooltip-row"), ...targetLines(i, j));
    const rb = root.getBoundingClientRect();
    const cb = c.getBoundingClientRect();
    tooltip.style.left = `${cb.right - rb.left + 6}px`;
    tooltip.style.top = `${cb.top - rb.top}px`;
    tooltip.style.display = "block";
    tooltip.dataset.layer = c.dataset.layer;
    tooltip.dataset.pos = c.dataset.pos;
  });
  gridWrap.addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
  function pinFrom(c: HTMLElement): void {
    const next = L.togglePin(model.get("pinned"), Number(c.dataset.layer), Number(c.dataset.pos));
    pushing = true;
    try { model.set("pinned", next); model.save_changes(); } finally { pushing = false; }
    renderPanel();
  }
  gridWrap.addEventListener("click", (ev) => { const c = cellOf(ev); if (c) pinFrom(c); });
  gridWrap.addEventListener("keydown", (ev) => {
    const c = cellOf(ev);
    if (!c || (ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault();
    pinFrom(c);
  });
  runBtn.addEventListener("click", () => run());
  promptInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); run(); }
  });
  colorBy.addEventListener("change", () => {
    pushing = true;
    try { model.set("color_by", colorBy.value); model.save_changes(); } finally { pushing = false; }
    colorCells();
  });

  const onRerun = () => {
    if (pushing) return;
    promptInput.value = String(model.get("prompt") ?? "");
    run();
  };
  const onColor = () => { if (!pushing) { colorBy.value = currentColorBy(); colorCells(); } };
  const onPinned = () => { if (!pushing) renderPanel(); };
  const rerunEvents = ["change:prompt", "change:targets", "change:top_k"];
  for (const e of rerunEvents) model.on(e, onRerun);
  model.on("change:color_by", onColor);
  model.on("change:pinned", onPinned);

  renderPanel();
  run();

  return () => {
    for (const e of rerunEvents) model.off(e, onRerun);
    model.off("change:color_by", onColor);
    model.off("change:pinned", onPinned);
    rpc.dispose();
  };
}

export default { render };
