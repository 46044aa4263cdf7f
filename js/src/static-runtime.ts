// The runtime of a static HTML copy of a notebook (workbench.widgets.export): inlined in the page,
// it renders every widget view from the saved widget state, with no kernel and no network.
// Each <script type="application/vnd.jupyter.widget-view+json"> names a model; an anywidget model's
// ES module (`_esm`, imported from a blob: URL) renders with a StaticModel, which replays the replies
// WorkbenchWidget.snapshot recorded and answers anything else with "static copy: open the notebook to rerun".
import { putBuffers, STATIC_NOTE, StaticModel, type SavedBuffer } from "./lib/static-logic";

interface SavedModel {
  model_name?: string;
  model_module?: string;
  state: Record<string, any>;
  buffers?: SavedBuffer[];
}

const VIEW = "application/vnd.jupyter.widget-view+json";
const STATE = "application/vnd.jupyter.widget-state+json";
const CSS = `
.iw-static { margin: 2px 0 8px; }
.iw-static-banner { display: inline-block; font: 11px var(--jp-ui-font-family, sans-serif); color: #6b4e00;
  background: #fff4d6; border: 1px solid #f0d58a; border-radius: 3px; padding: 1px 6px; margin-bottom: 4px; }
.iw-static-text { font: 12px var(--jp-ui-font-family, sans-serif); white-space: pre-wrap; }
.iw-static-note { font: 12px var(--jp-ui-font-family, sans-serif); color: #666; font-style: italic; padding: 4px 0; }
`;

const modules = new Map<string, Promise<any>>();
const styles = new Set<string>();

function addStyle(text: string): void {
  if (!text || styles.has(text)) return;
  styles.add(text);
  const s = document.createElement("style");
  s.textContent = text;
  document.head.append(s);
}

/** Import an ES module from its source, once per distinct source (blob: URL; a data: URL if that fails). */
function importSource(src: string): Promise<any> {
  let p = modules.get(src);
  if (!p) {
    const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
    p = import(/* @vite-ignore */ url).catch(() => import(/* @vite-ignore */ `data:text/javascript;charset=utf-8,${encodeURIComponent(src)}`));
    modules.set(src, p);
  }
  return p;
}

function readJson(script: Element): any {
  try {
    return JSON.parse(script.textContent ?? "");
  } catch {
    return null;
  }
}

function note(text: string): HTMLElement {
  const d = document.createElement("div");
  d.className = "iw-static-note";
  d.textContent = text;
  return d;
}

function modelId(ref: unknown): string | null {
  return typeof ref === "string" && ref.startsWith("IPY_MODEL_") ? ref.slice("IPY_MODEL_".length) : null;
}

async function renderModel(id: string, models: Record<string, SavedModel>, host: HTMLElement, depth = 0): Promise<number> {
  const saved = models[id];
  if (!saved) {
    host.append(note(`the widget's state was not saved (${STATIC_NOTE})`));
    return 0;
  }
  const state = saved.state ?? {};
  const esm = state._esm;
  if (saved.model_module === "anywidget" && typeof esm === "string") {
    if (/^https?:\/\//.test(esm.trim())) {
      host.append(note(`this widget loads its code from the network (${STATIC_NOTE})`));
      return 0;
    }
    if (typeof state._css === "string") addStyle(state._css);
    const mod = await importSource(esm);
    let def = mod.default ?? mod;
    if (typeof def === "function") def = await def();
    const model = new StaticModel({ ...state });
    (host as any).__iwStaticModel = model; // for tests: the requests it could not answer
    await def.initialize?.({ model });
    const el = document.createElement("div");
    host.append(el);
    await def.render?.({ model, el });
    return 1;
  }
  const children = Array.isArray(state.children) ? state.children.map(modelId).filter(Boolean) as string[] : [];
  if (children.length && depth < 8) {
    const box = document.createElement("div");
    box.style.display = "flex";
    box.style.flexDirection = /HBox/.test(saved.model_name ?? "") ? "row" : "column";
    box.style.alignItems = /HBox/.test(saved.model_name ?? "") ? "center" : "stretch";
    box.style.gap = "6px";
    host.append(box);
    let n = 0;
    for (const c of children) n += await renderModel(c, models, box, depth + 1);
    return n;
  }
  host.append(plainWidget(saved.model_name ?? "", state));
  return 0;
}

/** A plain ipywidget with no kernel: text and progress bars (tqdm's) as they were; a control, as a note. */
function plainWidget(modelName: string, state: Record<string, any>): HTMLElement {
  const name = modelName.replace(/Model$/, "") || "widget";
  const value = state.value;
  if (/Progress$/.test(name) && typeof value === "number") {
    const bar = document.createElement("progress");
    bar.max = Number(state.max ?? 100) - Number(state.min ?? 0);
    bar.value = value - Number(state.min ?? 0);
    return bar;
  }
  if (/^(HTML|HTMLMath|Label)$/.test(name) && typeof value === "string") {
    const span = document.createElement("span");
    span.className = "iw-static-text";
    // the text of the saved HTML, never the HTML itself (parsed inert, scripts do not run)
    span.textContent = /HTML/.test(name) ? new DOMParser().parseFromString(value, "text/html").body.textContent ?? "" : value;
    return span;
  }
  const shown = typeof value === "string" || typeof value === "number" || typeof value === "boolean" ? `: ${String(value)}` : "";
  return note(`${name}${shown} (${STATIC_NOTE})`);
}

async function main(): Promise<void> {
  addStyle(CSS);
  const stateScript = document.querySelector(`script[type="${STATE}"]`);
  const models: Record<string, SavedModel> = (stateScript && readJson(stateScript)?.state) || {};
  for (const m of Object.values(models)) putBuffers(m.state ?? (m.state = {}), m.buffers);
  let rendered = 0;
  let failed = 0;
  for (const script of Array.from(document.querySelectorAll(`script[type="${VIEW}"]`))) {
    const id = readJson(script)?.model_id;
    const host = document.createElement("div");
    host.className = "iw-static";
    host.dataset.modelId = String(id ?? "");
    const banner = document.createElement("div");
    banner.className = "iw-static-banner";
    banner.textContent = STATIC_NOTE;
    host.append(banner);
    script.after(host);
    try {
      const n = await renderModel(String(id), models, host);
      rendered += n;
      host.dataset.rendered = String(n > 0);
      if (n === 0) banner.remove(); // its note says it already
    } catch (err) {
      failed++;
      host.dataset.rendered = "false";
      host.append(note(`could not render this widget: ${err instanceof Error ? err.message : String(err)}`));
    }
  }
  document.body.dataset.staticWidgets = String(rendered);
  document.body.dataset.staticFailed = String(failed);
  document.body.dataset.staticState = "done";
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => void main());
else void main();
