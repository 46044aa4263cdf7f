// AttentionHeads widget: a layer × head grid of attention-pattern thumbnails (one
// <canvas> per head, drawn progressively as each layer's reply arrives), and a detail
// panel for the clicked head with token labels, a hover readout and token tints.
// The grid gets only thumbnails (at most 64 × 64 values a head, max-pooled by the kernel);
// the detail panel asks for the clicked head's full pattern with a "head" request, and keeps
// the last few it got. Everything data-sized is drawn on canvases; tokens are spans filled
// via textContent.
import { Cancelled, KernelError, Rpc, type AnyModel } from "./lib/rpc";
import { el, errorBox, tokenSpan, withStyle } from "./lib/dom";
import {
  cellAt,
  colorLut,
  describeCell,
  detailCss,
  fmtP,
  headThumb,
  inkFor,
  labelStep,
  Lru,
  paintRGBA,
  seqFromTril,
  shortLabel,
  thumbCss,
  tint,
  trilCol,
  trilRow,
  unpackTril,
} from "./lib/attention-logic";
import { imageButtons } from "./lib/snapshot";

const GAMMA = 0.5;
const LABEL_PX = 84;
const KEPT_HEADS = 8; // full patterns kept for re-enlarging (≤ 4 MB each at 1,024 tokens)

const CSS = `
.iw-attention .iw-att-bar { display: flex; gap: 6px; align-items: center; margin-bottom: 6px; }
.iw-attention .iw-att-input { flex: 1; min-width: 200px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; padding: 3px 6px; }
.iw-attention .iw-att-main { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.iw-attention .iw-att-gridwrap { max-height: 540px; overflow: auto; flex: 0 0 auto; padding: 2px; }
.iw-attention .iw-att-grid { display: grid; gap: 3px; align-items: center; }
.iw-attention .iw-att-hl { font-size: 10px; color: var(--jp-ui-font-color2, #666); text-align: center; }
.iw-attention .iw-att-thumb { display: block; box-sizing: border-box; border: 1px solid var(--jp-border-color2, #ddd); cursor: pointer; background: var(--jp-layout-color2, #f4f4f4); image-rendering: pixelated; }
.iw-attention .iw-att-thumb:hover { border-color: #555; }
.iw-attention .iw-att-thumb.sel { outline: 2px solid #e8590c; outline-offset: 1px; }
.iw-attention .iw-att-thumb.stale { opacity: 0.35; }
.iw-attention .iw-att-detail { flex: 1 1 380px; min-width: 300px; }
.iw-attention .iw-att-detail[hidden] { display: none; }
.iw-attention .iw-att-dhead { display: flex; align-items: center; gap: 8px; margin-bottom: 4px; font-weight: 600; }
.iw-attention .iw-att-fig { display: grid; grid-template-columns: auto auto; width: max-content; }
.iw-attention .iw-att-corner { font-size: 10px; color: var(--jp-ui-font-color2, #888); display: flex; align-items: flex-end; justify-content: flex-end; padding: 2px 4px; box-sizing: border-box; }
.iw-attention .iw-att-heat { display: block; image-rendering: pixelated; border: 1px solid var(--jp-border-color1, #ccc); cursor: crosshair; box-sizing: content-box; }
.iw-attention .iw-att-detail.stale .iw-att-fig { opacity: 0.4; }
.iw-attention .iw-att-readout { font-family: var(--jp-code-font-family, monospace); min-height: 16px; margin: 4px 0; color: var(--jp-ui-font-color1, #333); }
.iw-attention .iw-att-row { display: flex; align-items: flex-start; gap: 6px; margin: 3px 0; }
.iw-attention .iw-att-lab { font-size: 10px; color: var(--jp-ui-font-color2, #666); flex: 0 0 72px; padding-top: 2px; }
.iw-attention .iw-att-toks { position: relative; display: flex; flex-wrap: wrap; gap: 2px 2px; max-height: 104px; overflow: auto; }
.iw-attention .iw-att-toks .iw-tok { border: 1px solid var(--jp-border-color2, #e4e4e4); padding: 0 2px; cursor: default; }
.iw-attention .iw-att-toks .iw-tok.focus { outline: 2px solid #e8590c; }
.iw-attention .iw-att-toks .iw-tok.masked { opacity: 0.3; }
`;

interface HeadPattern {
  data: ArrayLike<number>; // the packed lower triangle, s(s+1)/2 values
  seq: number;
}

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const lut = colorLut(GAMMA);
  const root = el("div", { class: "iw-root iw-attention", "data-run-count": "0", "data-rendered": "false", "data-state": "idle" });
  withStyle(root, CSS);

  // -- toolbar ------------------------------------------------------------------------
  const input = el("input", { type: "text", class: "iw-att-input", "data-testid": "prompt-input", placeholder: "Prompt", spellcheck: "false" });
  const runBtn = el("button", { class: "iw-btn", "data-testid": "run", type: "button" }, "Run");
  const status = el("span", { class: "iw-status", "data-testid": "status" });
  const errSlot = el("div", { "data-testid": "error-slot" });
  root.append(el("div", { class: "iw-att-bar" }, input, runBtn, imageButtons(rpc, root, "attention")), status, errSlot);

  // -- grid and detail ----------------------------------------------------------------
  const grid = el("div", { class: "iw-att-grid", "data-testid": "head-grid" });
  const detail = el("div", { class: "iw-att-detail", "data-testid": "head-detail" });
  detail.hidden = true;
  root.append(el("div", { class: "iw-att-main" }, el("div", { class: "iw-att-gridwrap" }, grid), detail));

  const title = el("span", { "data-testid": "detail-title" });
  const closeBtn = el("button", { class: "iw-btn", type: "button", "data-testid": "detail-close", title: "close" }, "×");
  const heat = el("canvas", { class: "iw-att-heat", "data-testid": "detail-canvas" });
  const leftLabels = el("canvas", { "data-testid": "query-labels" });
  const topLabels = el("canvas", { "data-testid": "key-labels" });
  const corner = el("div", { class: "iw-att-corner" }, "query ↓ key →");
  const readout = el("div", { class: "iw-att-readout", "data-testid": "cell-readout" });
  const tokRow = el("div", { class: "iw-att-toks", "data-testid": "tokens" });
  const toRow = el("div", { class: "iw-att-toks", "data-testid": "attends-to" });
  const byRow = el("div", { class: "iw-att-toks", "data-testid": "attended-by" });
  detail.append(
    el("div", { class: "iw-att-dhead" }, title, closeBtn),
    el("div", { class: "iw-att-fig" }, corner, topLabels, leftLabels, heat),
    readout,
    el("div", { class: "iw-att-row" }, el("span", { class: "iw-att-lab" }, "tokens"), tokRow),
    el("div", { class: "iw-att-row" }, el("span", { class: "iw-att-lab" }, "attends to"), toRow),
    el("div", { class: "iw-att-row" }, el("span", { class: "iw-att-lab" }, "attended by"), byRow),
  );
  host.append(root);

  // -- state ----------------------------------------------------------------------------
  const heads = new Lru<string, HeadPattern>(KEPT_HEADS); // key: `${runCount}:${layer}:${head}`
  const thumbs = new Map<string, HTMLCanvasElement>();
  let gridKey = "";
  let tokens: string[] = [];
  let nHeads = 0;
  let runCount = 0;
  let currentId: number | null = null;
  let requests = 0;
  let lastPrompt: string | null = null;
  let shownPrompt = ""; // the prompt of the grid on screen (what a head request asks for)
  let t0 = 0;
  let detailDrawn = "";
  let detailHead: HeadPattern | null = null;
  let detailMatrix: Float32Array | null = null;
  let detailSeq = 0;
  let focusPos = -1;
  let headId: number | null = null;
  let headKey = "";

  const key = (l: number, h: number) => `${l}:${h}`;
  /** Paint a size × size grid of probabilities (or -1 for masked), one pixel per value. */
  const putPixels = (ctx: CanvasRenderingContext2D, values: Float32Array, size: number) => {
    const img = ctx.createImageData(size, size);
    paintRGBA(values, lut, img.data);
    ctx.putImageData(img, 0, 0);
  };
  const layersOf = (): number[] => (model.get("layers") as number[]) ?? [];

  function buildGrid(layers: number[], heads: number): void {
    const k = `${layers.join(",")}|${heads}`;
    if (k === gridKey) return;
    gridKey = k;
    thumbs.clear();
    const px = thumbCss(heads);
    grid.style.gridTemplateColumns = `28px repeat(${heads}, ${px}px)`;
    const cells: HTMLElement[] = [el("span")];
    for (let h = 0; h < heads; h++) cells.push(el("span", { class: "iw-att-hl" }, `H${h}`));
    for (const l of layers) {
      cells.push(el("span", { class: "iw-att-hl" }, `L${l}`));
      for (let h = 0; h < heads; h++) {
        const c = el("canvas", {
          class: "iw-att-thumb stale",
          "data-testid": "head-thumb",
          "data-layer": String(l),
          "data-head": String(h),
          title: `layer ${l}, head ${h}`,
          width: "1",
          height: "1",
        });
        c.style.width = c.style.height = `${px}px`;
        thumbs.set(key(l, h), c);
        cells.push(c);
      }
    }
    grid.replaceChildren(...cells);
    markSelected();
  }

  /** Draw one layer's thumbnails: `data` is [nh, size, size], already pooled by the kernel. */
  function drawLayer(l: number, data: Float32Array, nh: number, size: number): void {
    const dpr = window.devicePixelRatio || 1;
    for (let h = 0; h < nh; h++) {
      const c = thumbs.get(key(l, h));
      if (!c) continue;
      const values = headThumb(data, h, size);
      c.width = c.height = size;
      const ctx = c.getContext("2d");
      if (ctx) putPixels(ctx, values, size);
      // Upscaled small patterns stay crisp; downscaled ones are smoothed so no row vanishes.
      c.style.imageRendering = size > parseFloat(c.style.width) * dpr ? "auto" : "pixelated";
      c.classList.remove("stale");
    }
  }

  function markSelected(): void {
    const sel = model.get("selected") as number[] | undefined;
    const k = sel && sel.length === 2 ? key(sel[0], sel[1]) : "";
    for (const [tk, c] of thumbs) c.classList.toggle("sel", tk === k);
  }

  // -- detail panel ---------------------------------------------------------------------
  function drawAxis(canvas: HTMLCanvasElement, s: number, D: number, axis: "left" | "top"): void {
    const dpr = window.devicePixelRatio || 1;
    const w = axis === "left" ? LABEL_PX : D;
    const h = axis === "left" ? D : LABEL_PX;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(dpr, dpr);
    const cell = D / s;
    const step = labelStep(s, D, 11);
    ctx.font = `${Math.max(8, Math.min(11, Math.floor(cell * 0.85)))}px monospace`;
    ctx.fillStyle = getComputedStyle(root).color || "#444"; // the theme's text colour
    ctx.textBaseline = "middle";
    for (let i = 0; i < s; i += step) {
      const c = (i + 0.5) * cell + 1; // +1: the heat canvas border
      const label = shortLabel(tokens[i] ?? "", 12);
      if (axis === "left") {
        ctx.textAlign = "right";
        ctx.fillText(label, LABEL_PX - 4, c);
      } else {
        ctx.save();
        ctx.translate(c, LABEL_PX - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(label, 0, 0);
        ctx.restore();
      }
    }
  }

  function buildTokenRows(): void {
    const make = (row: HTMLElement, testid: string) =>
      row.replaceChildren(
        ...tokens.map((t, i) => {
          const s = tokenSpan(t);
          s.dataset.testid = testid;
          s.dataset.pos = String(i);
          return s;
        }),
      );
    make(tokRow, "token");
    make(toRow, "to-token");
    make(byRow, "by-token");
    focusPos = -1;
  }

  function selectedHead(): [number, number] | null {
    const sel = model.get("selected") as number[] | undefined;
    return sel && sel.length === 2 ? [sel[0], sel[1]] : null;
  }

  function showDetail(force = false): void {
    markSelected();
    const sel = selectedHead();
    if (!sel) {
      detail.hidden = true;
      detailDrawn = "";
      return;
    }
    const [l, h] = sel;
    detail.hidden = false;
    title.textContent = `Layer ${l} · Head ${h}`;
    const k = `${runCount}:${l}:${h}`;
    const p = heads.get(k);
    const ready = currentId === null && tokens.length > 0 && h < nHeads && layersOf().includes(l);
    if (!ready || !p || p.seq !== tokens.length) {
      detail.classList.add("stale"); // the grid is rerunning, or this head's full pattern is on its way
      detail.dataset.state = "stale";
      detailDrawn = "";
      detailMatrix = null; // no hover readout of the head shown before
      if (ready) fetchHead(l, h, k);
      return;
    }
    if (!force && k === detailDrawn) return;
    detailDrawn = k;
    detailHead = p;
    detail.classList.remove("stale");
    detail.dataset.state = "done";
    detail.dataset.shown = `${l}:${h}`;
    const s = p.seq;
    detailSeq = s;
    detailMatrix = unpackTril(p.data, 0, s);
    heat.width = heat.height = s;
    const ctx = heat.getContext("2d");
    if (ctx) putPixels(ctx, detailMatrix, s);
    const D = detailCss(s);
    heat.style.width = heat.style.height = `${D}px`;
    heat.style.imageRendering = s > D * (window.devicePixelRatio || 1) ? "auto" : "pixelated";
    drawAxis(leftLabels, s, D, "left");
    drawAxis(topLabels, s, D, "top");
    readout.textContent = "hover the pattern or a token";
    focus(focusPos >= 0 && focusPos < s ? focusPos : -1);
  }

  /** Ask the kernel for one head's full pattern (of the grid's prompt); draw it when it comes. */
  function fetchHead(l: number, h: number, k: string): void {
    if (headId !== null && headKey === k) return; // already on its way
    if (headId !== null) rpc.cancel(headId);
    detail.dataset.state = "loading";
    readout.textContent = "loading the full pattern…";
    const started = performance.now();
    const { id, promise } = rpc.request("head", { prompt: shownPrompt, layer: l, head: h });
    headId = id;
    headKey = k;
    promise.then(
      (res: any) => {
        if (headId === id) headId = null;
        const seq = Number(res.seq) || seqFromTril(res.pattern.shape[0]);
        heads.set(k, { data: res.pattern.data, seq });
        const sel = selectedHead();
        if (sel && `${runCount}:${sel[0]}:${sel[1]}` === k) showDetail(true);
        detail.dataset.loadMs = String(Math.round(performance.now() - started)); // request → drawn
      },
      (err: unknown) => {
        if (headId === id) headId = null;
        if (err instanceof Cancelled) return;
        detail.dataset.state = "error";
        readout.textContent = "";
        const box = err instanceof KernelError ? errorBox(err.message, err.traceback) : errorBox(String(err));
        errSlot.replaceChildren(box);
      },
    );
  }

  /** Tint the "attends to" / "attended by" rows for token i (-1 clears). */
  function focus(i: number): void {
    focusPos = i;
    const sel = selectedHead();
    const p = sel && detailDrawn === `${runCount}:${sel[0]}:${sel[1]}` ? detailHead : null;
    const spansTo = toRow.children;
    const spansBy = byRow.children;
    const spansTok = tokRow.children;
    for (let j = 0; j < spansTok.length; j++) (spansTok[j] as HTMLElement).classList.toggle("focus", j === i);
    if (i < 0 || !sel || !p || p.seq !== tokens.length) {
      for (const row of [spansTo, spansBy]) {
        for (let j = 0; j < row.length; j++) {
          const e = row[j] as HTMLElement;
          e.style.background = "";
          e.style.color = "";
          e.classList.remove("masked", "focus");
          e.removeAttribute("title");
        }
      }
      return;
    }
    const row = trilRow(p.data, 0, p.seq, i);
    const col = trilCol(p.data, 0, p.seq, i);
    const q = (t: number) => `"${shortLabel(tokens[t] ?? "", 20)}"`;
    const paint = (e: HTMLElement, v: number, masked: boolean, tip: string) => {
      e.classList.toggle("masked", masked);
      e.style.background = masked ? "" : tint(v, GAMMA);
      e.style.color = masked ? "" : inkFor(v, GAMMA);
      e.title = tip;
    };
    for (let j = 0; j < spansTo.length; j++) {
      const e = spansTo[j] as HTMLElement;
      e.classList.toggle("focus", j === i);
      paint(e, row[j], j > i, j > i ? `${q(i)} cannot attend to a later token` : `${q(i)} → ${q(j)}: ${fmtP(row[j])}`);
      e.dataset.value = j > i ? "" : String(row[j]);
    }
    for (let j = 0; j < spansBy.length; j++) {
      const e = spansBy[j] as HTMLElement;
      e.classList.toggle("focus", j === i);
      paint(e, col[j], j < i, j < i ? `${q(j)} comes before ${q(i)}` : `${q(j)} → ${q(i)}: ${fmtP(col[j])}`);
      e.dataset.value = j < i ? "" : String(col[j]);
    }
  }

  /** Scroll the three token rows (same layout) together so token i is in view. */
  function revealToken(i: number): void {
    const sp = tokRow.children[i] as HTMLElement | undefined;
    if (!sp) return;
    const top = tokRow.scrollTop;
    if (sp.offsetTop >= top && sp.offsetTop + sp.offsetHeight <= top + tokRow.clientHeight) return;
    const y = Math.max(0, sp.offsetTop - tokRow.clientHeight / 2);
    for (const row of [tokRow, toRow, byRow]) row.scrollTop = y;
  }

  function tokenPos(ev: Event): number {
    const t = (ev.target as HTMLElement | null)?.closest?.("[data-pos]") as HTMLElement | null;
    return t && t.dataset.pos !== undefined ? Number(t.dataset.pos) : -1;
  }

  // -- requests -------------------------------------------------------------------------
  function request(): void {
    if (currentId !== null) rpc.cancel(currentId);
    if (headId !== null) rpc.cancel(headId);
    headId = null;
    requests++;
    const prompt = String(model.get("prompt") ?? "");
    const layers = layersOf();
    lastPrompt = prompt;
    input.value = prompt;
    nHeads = Number(model.get("n_heads")) || 0;
    buildGrid(layers, nHeads);
    for (const c of thumbs.values()) c.classList.add("stale");
    detail.classList.add("stale");
    errSlot.replaceChildren();
    root.dataset.rendered = "false";
    root.dataset.state = "loading";
    status.textContent = "running…";
    t0 = performance.now();
    let received = 0;
    let drawMs = 0; // the browser's drawing of the thumbnails, in total
    const { id, promise } = rpc.request("patterns", { prompt, layers }, (part: any) => {
      if (id !== currentId) return;
      if (received === 0) root.dataset.firstPartMs = String(Math.round(performance.now() - t0)); // ≈ the kernel's run
      const [nh, size] = part.thumbs.shape as number[];
      const d0 = performance.now();
      drawLayer(part.layer, part.thumbs.data as Float32Array, nh, size);
      drawMs += performance.now() - d0;
      received++;
      status.textContent = `running… ${received}/${layers.length} layers`;
    });
    currentId = id;
    promise.then(
      (final: any) => {
        if (id !== currentId) return;
        currentId = null;
        tokens = (final.tokens as string[]) ?? [];
        shownPrompt = prompt;
        buildTokenRows();
        runCount++;
        heads.clear(); // the kept heads belong to the previous run
        const ms = Math.round(performance.now() - t0);
        root.dataset.renderMs = String(ms);
        root.dataset.drawMs = String(Math.round(drawMs));
        root.dataset.rendered = "true";
        root.dataset.state = "done";
        root.setAttribute("data-run-count", String(runCount));
        status.textContent = `${tokens.length} tokens · ${layers.length} layers × ${nHeads} heads · ${ms} ms`;
        showDetail(true); // after the timing: the enlarged head's full pattern is a request of its own
      },
      (err: unknown) => {
        if (err instanceof Cancelled || id !== currentId) return;
        currentId = null;
        const box = err instanceof KernelError ? errorBox(err.message, err.traceback) : errorBox(String(err));
        errSlot.replaceChildren(box);
        runCount++;
        root.dataset.state = "error";
        root.setAttribute("data-run-count", String(runCount));
        status.textContent = "";
      },
    );
  }

  function run(): void {
    const before = requests;
    if (input.value !== model.get("prompt")) {
      model.set("prompt", input.value);
      model.save_changes();
    }
    if (requests === before) request(); // no change event fired (same prompt): rerun anyway
  }

  // -- events ---------------------------------------------------------------------------
  runBtn.addEventListener("click", run);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") run();
  });
  grid.addEventListener("click", (ev) => {
    const c = (ev.target as HTMLElement).closest?.('[data-testid="head-thumb"]') as HTMLElement | null;
    if (!c) return;
    const opening = detail.hidden;
    model.set("selected", [Number(c.dataset.layer), Number(c.dataset.head)]);
    model.save_changes();
    showDetail();
    if (opening && !detail.hidden) detail.scrollIntoView?.({ block: "nearest" });
  });
  closeBtn.addEventListener("click", () => {
    model.set("selected", []);
    model.save_changes();
    showDetail();
  });
  heat.addEventListener("mousemove", (ev) => {
    if (!detailMatrix) return;
    const r = heat.getBoundingClientRect();
    const cell = cellAt(ev.clientX - r.left - heat.clientLeft, ev.clientY - r.top - heat.clientTop, heat.clientWidth, heat.clientHeight, detailSeq);
    if (!cell) return;
    const v = cell.k <= cell.q ? detailMatrix[cell.q * detailSeq + cell.k] : null;
    readout.textContent = describeCell(tokens, cell.q, cell.k, v);
    heat.title = readout.textContent;
    if (cell.q !== focusPos) {
      focus(cell.q);
      revealToken(cell.q);
    }
  });
  heat.addEventListener("mouseleave", () => {
    readout.textContent = "";
  });
  const onTokenOver = (ev: Event) => {
    const i = tokenPos(ev);
    if (i >= 0 && i !== focusPos) focus(i);
  };
  tokRow.addEventListener("mouseover", onTokenOver); // sticky: the tinted rows keep their tooltips
  tokRow.addEventListener("scroll", () => {
    toRow.scrollTop = byRow.scrollTop = tokRow.scrollTop;
  });

  const onPrompt = () => {
    if (model.get("prompt") !== lastPrompt) request();
  };
  const onLayers = () => request();
  const onSelected = () => showDetail();
  model.on("change:prompt", onPrompt);
  model.on("change:layers", onLayers);
  model.on("change:n_heads", onLayers);
  model.on("change:selected", onSelected);

  request();

  return () => {
    model.off("change:prompt", onPrompt);
    model.off("change:layers", onLayers);
    model.off("change:n_heads", onLayers);
    model.off("change:selected", onSelected);
    rpc.dispose();
    root.remove();
  };
}

export default { render };
