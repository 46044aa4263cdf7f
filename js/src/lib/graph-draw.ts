// Drawing code shared by the graph views (CircuitGraph's component circuits and AttributionGraph's
// feature graphs): edge colour (sign), width and opacity (magnitude), curves, spreading nodes that
// share a grid cell, width buckets for batched canvas strokes, pins, number formatting, and the
// two DOM helpers (SVG elements, a device-pixel-ratio canvas). Everything but `svgEl` and
// `sizeCanvas` is pure (unit-tested in node).

export const SVG_NS = "http://www.w3.org/2000/svg";

// -- edges: colour, width, opacity, path ------------------------------------------------------

/** Largest |weight| (1 when there is none, so widths stay finite). */
export function maxAbs(weights: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < weights.length; i++) {
    const a = Math.abs(Number(weights[i]));
    if (a > m && Number.isFinite(a)) m = a;
  }
  return m > 0 ? m : 1;
}

export const POSITIVE = "rgb(40,95,225)";
export const NEGATIVE = "rgb(225,65,55)";
export const NEUTRAL = "rgb(150,150,150)";

/** Edge colour by sign: positive blue, negative red, zero / NaN grey. */
export function edgeColor(w: number): string {
  if (!(w === w) || w === 0) return NEUTRAL;
  return w > 0 ? POSITIVE : NEGATIVE;
}

/** Edge width by magnitude: linear in |w| / max|w|, from `min` to `max` pixels. */
export function edgeWidth(w: number, scale: number, min = 0.4, max = 6): number {
  const t = scale > 0 ? Math.min(1, Math.abs(w) / scale) : 0;
  if (!Number.isFinite(t)) return min;
  return min + (max - min) * t;
}

/** Edge opacity: weaker edges fade so the strong ones stand out. */
export function edgeOpacity(w: number, scale: number): number {
  const t = scale > 0 ? Math.min(1, Math.abs(w) / scale) : 0;
  return Number.isFinite(t) ? 0.25 + 0.7 * Math.sqrt(t) : 0.25;
}

/** An S-shaped cubic from (x1, y1) to (x2, y2) with horizontal tangents (its midpoint is the chord's). */
export function edgePath(x1: number, y1: number, x2: number, y2: number): string {
  const xm = (x1 + x2) / 2;
  const r = (v: number) => Math.round(v * 10) / 10;
  return `M${r(x1)} ${r(y1)}C${r(xm)} ${r(y1)} ${r(xm)} ${r(y2)} ${r(x2)} ${r(y2)}`;
}

export interface EdgeBucket {
  /** +1 or -1 (0: zero / NaN weights) */
  sign: number;
  /** the bucket's stroke width and opacity (of its mid magnitude) */
  width: number;
  opacity: number;
  /** edge indices in this bucket */
  edges: number[];
}

/**
 * Edges grouped by sign and magnitude (`levels` equal steps of |w| / scale), so a canvas draws
 * each group with one stroke call; weakest buckets first, so the strongest lie on top.
 * `only` (optional): the edges to group (default: all).
 */
export function edgeBuckets(weights: ArrayLike<number>, scale: number, levels = 8, only?: ArrayLike<number>): EdgeBucket[] {
  const map = new Map<number, EdgeBucket>();
  const n = only ? only.length : weights.length;
  const L = Math.max(1, Math.floor(levels));
  for (let j = 0; j < n; j++) {
    const e = only ? Number(only[j]) : j;
    const w = Number(weights[e]);
    const sign = !(w === w) || w === 0 ? 0 : w > 0 ? 1 : -1;
    const t = scale > 0 && Number.isFinite(w) ? Math.min(1, Math.abs(w) / scale) : 0;
    const level = Math.min(L - 1, Math.floor(t * L));
    const key = level * 3 + (sign + 1);
    let b = map.get(key);
    if (!b) {
      const mid = ((level + 0.5) / L) * scale * (sign < 0 ? -1 : 1);
      b = { sign, width: edgeWidth(mid, scale), opacity: edgeOpacity(mid, scale), edges: [] };
      map.set(key, b);
    }
    b.edges.push(e);
  }
  return [...map.entries()].sort((a, b) => a[0] - b[0]).map(([, b]) => b);
}

// -- nodes sharing a grid cell ------------------------------------------------------------------

/**
 * Offsets of `n` nodes spread inside a cell `width` × `height` centred on (0, 0): a grid at least
 * `spacing` apart, filled row by row from the top (the first nodes, say the most influential, on
 * the first row), each row centred; when the cell is too small the grid tightens to fit.
 */
export function spreadInCell(n: number, width: number, height: number, spacing: number): { dx: Float32Array; dy: Float32Array } {
  const dx = new Float32Array(Math.max(0, n));
  const dy = new Float32Array(Math.max(0, n));
  if (n <= 1) return { dx, dy };
  const w = Math.max(0, width), h = Math.max(0, height);
  let cols = Math.max(1, Math.floor(w / spacing) + 1);
  cols = Math.min(cols, n);
  let rows = Math.ceil(n / cols);
  const maxRows = Math.max(1, Math.floor(h / spacing) + 1);
  if (rows > maxRows) {  // too many for the spacing: keep the cell's aspect, tighten
    cols = Math.max(1, Math.ceil(Math.sqrt((n * (w + 1)) / (h + 1))));
    cols = Math.min(cols, n);
    rows = Math.ceil(n / cols);
  }
  const sx = cols > 1 ? Math.min(spacing, w / (cols - 1)) : 0;
  const sy = rows > 1 ? Math.min(spacing, h / (rows - 1)) : 0;
  for (let i = 0; i < n; i++) {
    const r = Math.floor(i / cols);
    const inRow = r < rows - 1 ? cols : n - r * cols;
    const c = i - r * cols;
    dx[i] = (c - (inRow - 1) / 2) * sx;
    dy[i] = (r - (rows - 1) / 2) * sy;
  }
  return { dx, dy };
}

/** Node radius by a non-negative size value (influence): area proportional, from `min` to `max`. */
export function radiusOf(v: number, scale: number, min = 2.5, max = 9): number {
  const t = scale > 0 && Number.isFinite(v) ? Math.max(0, Math.min(1, v / scale)) : 0;
  return min + (max - min) * Math.sqrt(t);
}

// -- pins and selections -----------------------------------------------------------------------

/** Toggle `id` in a pin list (kept sorted, no duplicates). */
export function togglePin(pins: readonly string[], id: string): string[] {
  const s = new Set(pins);
  if (s.has(id)) s.delete(id);
  else s.add(id);
  return Array.from(s).sort();
}

// -- formatting -----------------------------------------------------------------------------

/** A signed value with 3 significant decimals ("+0.532", "−0.041", "+1.2e-5"). */
export function signed(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  const s = a !== 0 && (a < 1e-3 || a >= 1e4) ? a.toExponential(2) : a.toFixed(3);
  if (Number(s) === 0) return "0.000";
  return (v < 0 ? "−" : "+") + s;
}

/** A magnitude with 3 significant digits ("0.0123", "1.50e-5", "12.3"). */
export function magnitude(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3 || a >= 1e4) return a.toExponential(2);
  return a.toPrecision(3);
}

/** "1,234" style integers. */
export function count(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

// -- DOM helpers (not used by the unit tests) ---------------------------------------------------

/** An SVG element with attributes (text goes in through textContent by the caller, never markup). */
export function svgEl<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** Size a canvas to `w` × `h` CSS pixels at the device pixel ratio; returns its scaled 2D context. */
export function sizeCanvas(c: HTMLCanvasElement, w: number, h: number): CanvasRenderingContext2D | null {
  const dpr = Math.max(1, Math.min(3, (typeof window !== "undefined" && window.devicePixelRatio) || 1));
  c.width = Math.ceil(w * dpr);
  c.height = Math.ceil(h * dpr);
  c.style.width = `${Math.ceil(w)}px`;
  c.style.height = `${Math.ceil(h)}px`;
  const ctx = c.getContext("2d");
  if (ctx) ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}
