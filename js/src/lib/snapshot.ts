// Images of a widget: PNG of everything the view shows, SVG of the drawings that are vectors.
//
// PNG: the view's root is cloned with every computed style inlined (only what differs from the
// tag's default or the parent, to keep it small), canvases become <img> of their pixels, form
// fields keep their values; the clone goes into an SVG <foreignObject>, which is drawn as an
// image onto a canvas at devicePixelRatio over the page's background colour, then toBlob. The
// SVG is loaded from a data: URL, which Chromium does not treat as cross-origin, so the canvas
// stays untainted (tests/browser/test_image_export.py checks toBlob in Chromium).
// SVG: the view's <svg> cloned with the presentation styles its stylesheet gave it inlined (so
// the file looks the same outside the page), <title>s dropped, optional raster layers
// (a canvas under the drawing) embedded as <image>.
//
// `imageButtons` is the one call a view makes: it returns the "⤓ PNG" (and "⤓ SVG") buttons for
// its toolbar, and answers the kernel's {type: "snapshot"} messages (widget.save_image in
// Python) through `Rpc.onSnapshot`, replying with request "image" and the bytes as a buffer.
// Nothing here runs at import time, so the pure helpers are unit-tested in node.
import type { Rpc } from "./rpc";

export type ImageFormat = "png" | "svg";
export type RGBA = [number, number, number, number];

export interface Snapshot {
  bytes: Uint8Array;
  format: ImageFormat;
  /** pixel size (PNG) or CSS-pixel size (SVG) */
  width: number;
  height: number;
  ms: number;
  /** where the time went (PNG): clone+styles, serialize, image load, draw, encode */
  phases?: Record<string, number>;
}

export interface ImageOptions {
  /** the drawing exported as SVG (no SVG button when absent or when it returns null) */
  svg?: () => SVGSVGElement | null;
  /** canvases drawn under the SVG (at the same origin), embedded as images in the SVG export */
  underlay?: () => HTMLCanvasElement[];
}

export const SKIP_ATTR = "data-snapshot-skip";

// -- pure helpers -------------------------------------------------------------------------------

/** Width and height from a PNG's IHDR chunk (null when `bytes` is not a PNG). */
export function pngSize(bytes: Uint8Array): { width: number; height: number } | null {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 24 || sig.some((b, i) => bytes[i] !== b)) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: dv.getUint32(16), height: dv.getUint32(20) };
}

/** Parse `rgb(...)`, `rgba(...)`, `#rgb`, `#rrggbb` (alpha 0..1); null for anything else. */
export function parseColor(css: string): RGBA | null {
  const s = css.trim().toLowerCase();
  if (s === "transparent") return [0, 0, 0, 0];
  let m = /^#([0-9a-f]{3})$/.exec(s);
  if (m) return [...m[1]].map((c) => parseInt(c + c, 16)).concat(1) as RGBA;
  m = /^#([0-9a-f]{6})$/.exec(s);
  if (m) return [0, 2, 4].map((i) => parseInt(m![1].slice(i, i + 2), 16)).concat(1) as RGBA;
  m = /^rgba?\(([^)]*)\)$/.exec(s);
  if (!m) return null;
  const parts = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
  if (parts.length < 3 || parts.some((v) => !Number.isFinite(v))) return null;
  return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
}

/** `top` composited over an opaque `bottom`. */
export function over(top: RGBA, bottom: RGBA): RGBA {
  const a = top[3];
  return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1) as RGBA;
}

/** WCAG relative luminance of an sRGB colour. */
export function luminance(c: RGBA): number {
  const lin = (v: number) => {
    const x = v / 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
}

/** WCAG contrast ratio (1 to 21) of two opaque colours. */
export function contrast(a: RGBA, b: RGBA): number {
  const la = luminance(a), lb = luminance(b);
  return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
}

/** Pixel size of a `w`×`h` CSS-pixel view rendered at device pixel ratio `dpr`. */
export function pixelSize(w: number, h: number, dpr: number): { width: number; height: number } {
  const r = dpr > 0 && Number.isFinite(dpr) ? dpr : 1;
  return { width: Math.max(1, Math.round(w * r)), height: Math.max(1, Math.round(h * r)) };
}

/** An SVG document holding XHTML markup in a foreignObject of `w`×`h` CSS pixels. */
export function foreignObjectSvg(xhtml: string, w: number, h: number): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">` +
    `<foreignObject x="0" y="0" width="${w}" height="${h}">${xhtml}</foreignObject></svg>`;
}

/** Drop what XML 1.0 cannot hold (control characters, lone surrogates: random models predict them). */
export function xmlSafe(text: string): string {
  return text.replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/** A download name: the widget's name, a safe stem, the format's suffix. */
export function fileName(name: string, format: ImageFormat): string {
  const stem = name.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "") || "widget";
  return `${stem}.${format}`;
}

// -- DOM: styles ----------------------------------------------------------------------------------

const defaults = new Map<string, Map<string, string>>();

/** Computed style of a bare element of this tag (inheriting only initial values). */
function defaultStyle(tag: string, ns: string | null): Map<string, string> {
  const key = `${ns}:${tag}`;
  let d = defaults.get(key);
  if (d) return d;
  const host = document.createElement("div");
  host.style.cssText = "all: initial; position: absolute; visibility: hidden; left: -9999px; top: 0";
  const probe = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  host.append(probe);
  document.body.append(host);
  const cs = getComputedStyle(probe);
  d = new Map();
  for (let i = 0; i < cs.length; i++) d.set(cs[i], cs.getPropertyValue(cs[i]));
  host.remove();
  defaults.set(key, d);
  return d;
}

/** `el`'s computed style as a property → value map (read once per element). */
function styleMap(el: Element): Map<string, string> {
  const cs = getComputedStyle(el);
  const m = new Map<string, string>();
  for (let i = 0; i < cs.length; i++) m.set(cs[i], cs.getPropertyValue(cs[i]));
  return m;
}

/** The style text that reproduces `own` (src's computed style) under a parent styled `parent`. */
function styleText(src: Element, own: Map<string, string>, parent: Map<string, string> | null): string {
  const d = defaultStyle(src.localName, src.namespaceURI === "http://www.w3.org/1999/xhtml" ? null : src.namespaceURI);
  const out: string[] = [];
  for (const [name, v] of own) {
    if (parent && v === d.get(name) && v === parent.get(name)) continue;
    out.push(`${name}:${v}`);
  }
  return out.join(";");
}

/** Effective background of `node`: the first opaque background colour at or above it (white if none). */
export function backgroundOf(node: Element | null): RGBA {
  const layers: RGBA[] = [];
  for (let n: Element | null = node; n; n = n.parentElement) {
    const c = parseColor(getComputedStyle(n).backgroundColor);
    if (c && c[3] > 0) {
      layers.push(c);
      if (c[3] >= 1) break;
    }
  }
  let bg: RGBA = [255, 255, 255, 1];
  for (let i = layers.length - 1; i >= 0; i--) bg = layers[i][3] >= 1 ? layers[i] : over(layers[i], bg);
  return bg;
}

// -- DOM: the clone ---------------------------------------------------------------------------------

function cloneStyled(src: Element, parent: Map<string, string> | null): Node | null {
  const tag = src.localName;
  if (tag === "style" || tag === "script" || tag === "template") return null;
  if (src.hasAttribute(SKIP_ATTR)) {
    // keep its box (the layout stays as on screen), show nothing
    const ph = document.createElement("span");
    const cs = getComputedStyle(src);
    const r = src.getBoundingClientRect();
    ph.setAttribute("style", `display:${cs.display === "none" ? "none" : "inline-block"};width:${r.width}px;height:${r.height}px;` +
      `margin:${cs.margin};vertical-align:${cs.verticalAlign}`);
    return ph;
  }
  if (src instanceof HTMLCanvasElement) {
    const img = document.createElement("img");
    try {
      img.setAttribute("src", src.width && src.height ? src.toDataURL("image/png") : "");
    } catch {
      // a tainted canvas cannot be read: leave its box empty
    }
    img.setAttribute("style", styleText(src, styleMap(src), parent));
    return img;
  }
  if (src instanceof SVGSVGElement) {
    // a drawing: its own box styled in full, its shapes by their presentation styles only (fast)
    const svg = src.cloneNode(true) as SVGSVGElement;
    inlineSvgStyles(src, svg);
    svg.querySelectorAll("title").forEach((t) => t.remove());
    svg.setAttribute("style", styleText(src, styleMap(src), parent));
    return svg;
  }
  const copy = src.cloneNode(false) as Element;
  copy.removeAttribute("id");
  const cs = styleMap(src);
  copy.setAttribute("style", styleText(src, cs, parent));
  if (src instanceof HTMLInputElement) {
    if (src.type === "checkbox" || src.type === "radio") {
      if (src.checked) copy.setAttribute("checked", "");
      else copy.removeAttribute("checked");
    } else copy.setAttribute("value", src.value);
  } else if (src instanceof HTMLTextAreaElement) {
    copy.textContent = src.value;
    return copy;
  } else if (src instanceof HTMLSelectElement) {
    for (const o of Array.from(src.options)) {
      const oc = document.createElement("option");
      oc.textContent = o.textContent;
      if (o.selected) oc.setAttribute("selected", "");
      copy.append(oc);
    }
    return copy;
  }
  for (const child of Array.from(src.childNodes)) {
    if (child.nodeType === Node.TEXT_NODE) copy.append(child.cloneNode(false));
    else if (child.nodeType === Node.ELEMENT_NODE) {
      const c = cloneStyled(child as Element, cs);
      if (c) copy.append(c);
    }
  }
  return copy;
}

function loadImage(url: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the snapshot image did not load"));
    img.src = url;
  });
}

function canvasBlob(c: HTMLCanvasElement): Promise<Blob> {
  return new Promise((resolve, reject) => {
    try {
      c.toBlob((b) => (b ? resolve(b) : reject(new Error("toBlob gave no image"))), "image/png");
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err))); // a tainted canvas throws SecurityError
    }
  });
}

/** PNG of `root` as shown, at devicePixelRatio, over the background it sits on. */
export async function renderPng(root: HTMLElement, dpr = window.devicePixelRatio || 1): Promise<Snapshot> {
  const t0 = performance.now();
  const rect = root.getBoundingClientRect();
  const w = Math.max(1, Math.ceil(rect.width)), h = Math.max(1, Math.ceil(rect.height));
  const phases: Record<string, number> = {};
  let tp = t0;
  const mark = (name: string) => { const t = performance.now(); phases[name] = Math.round(t - tp); tp = t; };
  const clone = cloneStyled(root, null) as HTMLElement;
  clone.style.margin = "0";
  clone.style.width = `${rect.width}px`;
  clone.style.height = `${rect.height}px`;
  clone.style.boxSizing = "border-box";
  clone.style.overflow = "hidden";
  mark("clone");
  const xhtml = xmlSafe(new XMLSerializer().serializeToString(clone));
  const svgText = foreignObjectSvg(xhtml, w, h);
  mark("serialize");
  const img = await loadImage("data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText));
  mark("load");
  const size = pixelSize(rect.width, rect.height, dpr);
  const c = document.createElement("canvas");
  c.width = size.width;
  c.height = size.height;
  const ctx = c.getContext("2d");
  if (!ctx) throw new Error("no 2d canvas context");
  const bg = backgroundOf(root);
  ctx.fillStyle = `rgb(${bg[0]},${bg[1]},${bg[2]})`;
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(img, 0, 0, w, h, 0, 0, (w * c.width) / rect.width, (h * c.height) / rect.height);
  mark("draw");
  const blob = await canvasBlob(c);
  const bytes = new Uint8Array(await blob.arrayBuffer());
  mark("encode");
  return { bytes, format: "png", width: c.width, height: c.height, ms: performance.now() - t0, phases };
}

const PRESENTATION = ["fill", "fill-opacity", "stroke", "stroke-width", "stroke-opacity", "stroke-dasharray", "opacity",
  "font-family", "font-size", "font-weight", "font-style", "visibility", "display"];

function inlineSvgStyles(src: Element, dst: Element): void {
  const cs = getComputedStyle(src);
  const parts = PRESENTATION.map((p) => `${p}:${cs.getPropertyValue(p)}`).filter((s) => !s.endsWith(":"));
  dst.setAttribute("style", parts.join(";"));
  const a = Array.from(src.children), b = Array.from(dst.children);
  for (let i = 0; i < a.length && i < b.length; i++) inlineSvgStyles(a[i], b[i]);
}

/** The drawing as a standalone SVG file (styles inlined, tooltips dropped, underlays embedded). */
export function renderSvg(svg: SVGSVGElement, underlay: HTMLCanvasElement[] = []): Snapshot {
  const t0 = performance.now();
  const copy = svg.cloneNode(true) as SVGSVGElement;
  inlineSvgStyles(svg, copy);
  copy.querySelectorAll("title").forEach((t) => t.remove());
  copy.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  const box = svg.getBoundingClientRect();
  const w = Number(svg.getAttribute("width")) || Math.ceil(box.width);
  const h = Number(svg.getAttribute("height")) || Math.ceil(box.height);
  copy.setAttribute("width", String(w));
  copy.setAttribute("height", String(h));
  for (const cv of [...underlay].reverse()) {
    if (!cv.width || !cv.height) continue;
    const r = cv.getBoundingClientRect();
    const im = document.createElementNS("http://www.w3.org/2000/svg", "image");
    im.setAttribute("x", String(r.left - box.left));
    im.setAttribute("y", String(r.top - box.top));
    im.setAttribute("width", String(r.width));
    im.setAttribute("height", String(r.height));
    im.setAttribute("href", cv.toDataURL("image/png"));
    copy.insertBefore(im, copy.firstChild);
  }
  const text = xmlSafe(new XMLSerializer().serializeToString(copy));
  return { bytes: new TextEncoder().encode(text), format: "svg", width: w, height: h, ms: performance.now() - t0 };
}

// -- buttons and the kernel's requests --------------------------------------------------------------

function download(root: HTMLElement, name: string, s: Snapshot): void {
  const blob = new Blob([s.bytes as BlobPart], { type: s.format === "png" ? "image/png" : "image/svg+xml" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.style.display = "none";
  root.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Render `root` (or its SVG drawing) in `format`; rejects when the view has no such image. */
export function snapshot(root: HTMLElement, format: ImageFormat, opts: ImageOptions = {}): Promise<Snapshot> {
  if (format === "svg") {
    const s = opts.svg?.();
    if (!s) return Promise.reject(new Error("this view draws no SVG: save it as PNG"));
    return Promise.resolve(renderSvg(s, opts.underlay?.() ?? []));
  }
  return renderPng(root);
}

/**
 * The view's image buttons (append them to its toolbar) and its answer to widget.save_image.
 * One call per view: `toolbar.append(imageButtons(rpc, root, "lens"))`.
 */
export function imageButtons(rpc: Rpc, root: HTMLElement, name: string, opts: ImageOptions = {}): HTMLElement {
  const box = document.createElement("span");
  box.className = "iw-image-buttons";
  box.setAttribute(SKIP_ATTR, "");
  const formats: ImageFormat[] = opts.svg ? ["png", "svg"] : ["png"];
  for (const format of formats) {
    const b = document.createElement("button");
    b.className = "iw-btn";
    b.type = "button";
    b.dataset.testid = `export-${format}`;
    b.title = `download what this view shows as ${format.toUpperCase()}`;
    b.textContent = `⤓ ${format.toUpperCase()}`;
    b.addEventListener("click", () => {
      b.disabled = true;
      snapshot(root, format, opts).then((s) => {
        download(root, fileName(name, format), s);
        root.dataset.snapshotMs = String(Math.round(s.ms));
        root.dataset.snapshotPhases = JSON.stringify(s.phases ?? {});
        // the kernel keeps it too (widget.last_image); without a kernel (static HTML) it is dropped
        rpc.notify("image", { id: null, format, width: s.width, height: s.height, ms: s.ms }, [s.bytes]);
      }).catch((err) => {
        b.title = `failed: ${err instanceof Error ? err.message : String(err)}`;
      }).finally(() => {
        b.disabled = false;
      });
    });
    box.append(b);
  }
  rpc.onSnapshot = (msg) => {
    const format: ImageFormat = msg.format === "svg" ? "svg" : "png";
    snapshot(root, format, opts).then((s) => {
      root.dataset.snapshotMs = String(Math.round(s.ms));
      rpc.notify("image", { id: msg.id, format, width: s.width, height: s.height, ms: s.ms }, [s.bytes]);
    }).catch((err) => {
      rpc.notify("image", { id: msg.id, format, error: err instanceof Error ? err.message : String(err) });
    });
  };
  rpc.notify("image_view", { view: rpc.view, open: true });
  return box;
}
