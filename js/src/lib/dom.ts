import { Cancelled, KernelError } from "./rpc";

// Small DOM helpers shared by the widgets. Token text is always set through
// textContent, never innerHTML, so a prompt cannot inject markup or script.

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

/** Make whitespace in a token visible without markup (spaces stay, newlines become ⏎). */
export function visibleToken(text: string): string {
  return text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

/** A span holding one token's text as plain text. */
export function tokenSpan(text: string, cls = "iw-tok"): HTMLSpanElement {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = visibleToken(text);
  return s;
}

/** White→blue ramp for probabilities in [0, 1]. */
export function seqColor(v: number): [number, number, number] {
  const t = Math.max(0, Math.min(1, v));
  return [Math.round(255 - 225 * t), Math.round(255 - 155 * t), Math.round(255 - 40 * t)];
}

/** Diverging red–white–blue for values in [-1, 1] (negative red, positive blue). */
export function divColor(v: number): [number, number, number] {
  const t = Math.max(-1, Math.min(1, v));
  if (t >= 0) return [Math.round(255 - 215 * t), Math.round(255 - 160 * t), 255 - Math.round(30 * t)];
  const u = -t;
  return [255 - Math.round(30 * u), Math.round(255 - 190 * u), Math.round(255 - 200 * u)];
}

export function rgb(c: [number, number, number]): string {
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** An error box showing a kernel-side error (message as text, traceback folded). */
export function errorBox(message: string, traceback = ""): HTMLElement {
  const box = el("div", { class: "iw-error", role: "alert" });
  box.append(el("strong", {}, "Error: "), document.createTextNode(message));
  if (traceback) {
    const det = el("details", {}, el("summary", {}, "traceback"));
    const pre = el("pre");
    pre.textContent = traceback;
    det.append(pre);
    box.append(det);
  }
  return box;
}

/** Format a number compactly for labels and tooltips. */
export function fmt(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
  return v.toFixed(digits);
}

/** Trailing-edge debounce. */
export function debounce<A extends unknown[]>(fn: (...args: A) => void, ms: number): (...args: A) => void {
  let t: ReturnType<typeof setTimeout> | undefined;
  return (...args: A) => {
    if (t !== undefined) clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

export const BASE_CSS = `
.iw-root { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 12px; color: var(--jp-ui-font-color1, #222);
  --iw-up: #1a7f37; --iw-down: #b3261e; }
body[data-jp-theme-light="false"] .iw-root, .iw-root.iw-dark { --iw-up: #6ccf7f; --iw-down: #ff8a80; }
.iw-image-buttons { display: inline-flex; gap: 0; }
.iw-error { background: #fdecea; color: #611a15; border: 1px solid #f5c6cb; padding: 6px 8px; margin: 4px 0; border-radius: 4px; }
.iw-error pre { white-space: pre-wrap; font-size: 11px; max-height: 200px; overflow: auto; }
.iw-tok { font-family: var(--jp-code-font-family, monospace); white-space: pre; padding: 1px 0; border-radius: 2px; }
.iw-status { color: var(--jp-ui-font-color2, #666); font-size: 11px; min-height: 14px; }
.iw-table { border-collapse: collapse; font-size: 12px; }
.iw-table td, .iw-table th { padding: 2px 6px; border-bottom: 1px solid var(--jp-border-color2, #eee); text-align: left; }
.iw-table td.num { text-align: right; font-variant-numeric: tabular-nums; }
.iw-btn { font-size: 12px; padding: 2px 8px; margin: 2px; cursor: pointer; }
`;

/** Insert the base CSS (plus a widget's own) into the widget root. */
export function withStyle(root: HTMLElement, css = ""): void {
  const style = document.createElement("style");
  style.textContent = BASE_CSS + css;
  root.append(style);
}

/** Show a failed kernel request in `slot` (cancellations are not errors) and mark `status`. */
export function showRpcError(slot: HTMLElement, err: unknown, status?: HTMLElement): void {
  if (err instanceof Cancelled) return;
  const msg = err instanceof Error ? err.message : String(err);
  const tb = err instanceof KernelError ? err.traceback : "";
  slot.replaceChildren(errorBox(msg, tb));
  if (status) status.textContent = "error";
}

/** A counter kept in the root's `data-run-count` (browser tests wait on it); returns `bump`. */
export function runCounter(root: HTMLElement): () => void {
  let n = Number(root.dataset.runCount ?? 0);
  root.dataset.runCount = String(n);
  return () => {
    n += 1;
    root.dataset.runCount = String(n);
  };
}
