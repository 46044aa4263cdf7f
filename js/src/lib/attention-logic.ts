// Pure helpers for the AttentionHeads widget (no DOM): packed lower-triangle access,
// max-pool downsampling, the colour ramp with gamma, layout/hover geometry and the cache
// of enlarged heads.
// The grid's thumbnails arrive per layer as [n_heads, size, size] (max-pooled in the kernel,
// -1 where a block is wholly above the diagonal); an enlarged head's full pattern arrives as
// its packed lower triangle [s(s+1)/2]: row q, key k (k <= q) is at q(q+1)/2 + k (head h of
// a [n_heads, s(s+1)/2] layer starts at h * s(s+1)/2).
import { seqColor } from "./dom";

/** Number of values in the packed lower triangle of an s × s matrix. */
export function trilSize(s: number): number {
  return (s * (s + 1)) / 2;
}

/** Sequence length s from the packed size s(s+1)/2 (throws if it is not triangular). */
export function seqFromTril(n: number): number {
  const s = Math.round((Math.sqrt(8 * n + 1) - 1) / 2);
  if (trilSize(s) !== n) throw new Error(`${n} is not a triangular number`);
  return s;
}

type Floats = ArrayLike<number>;

/** Row q of a packed head (what query q attends to): length s, zeros for k > q. */
export function trilRow(data: Floats, offset: number, s: number, q: number): Float32Array {
  const out = new Float32Array(s);
  const start = offset + (q * (q + 1)) / 2;
  for (let k = 0; k <= q; k++) out[k] = data[start + k];
  return out;
}

/** Column k of a packed head (how much each query attends to key k): zeros for q < k. */
export function trilCol(data: Floats, offset: number, s: number, k: number): Float32Array {
  const out = new Float32Array(s);
  for (let q = k; q < s; q++) out[q] = data[offset + (q * (q + 1)) / 2 + k];
  return out;
}

/** Full s × s row-major matrix of one packed head; cells above the diagonal are -1 (masked). */
export function unpackTril(data: Floats, offset: number, s: number): Float32Array {
  const out = new Float32Array(s * s).fill(-1);
  let i = offset;
  for (let q = 0; q < s; q++) {
    const row = q * s;
    for (let k = 0; k <= q; k++) out[row + k] = data[i++];
  }
  return out;
}

/** How to downsample an s-token pattern to at most maxPx pixels a side (the kernel's `thumbnail_plan`). */
export function poolPlan(s: number, maxPx = 128): { factor: number; size: number } {
  const factor = Math.max(1, Math.ceil(s / Math.max(1, maxPx)));
  return { factor, size: Math.ceil(s / factor) };
}

/**
 * Max-pool one packed head into a size × size image (row-major). Blocks lying wholly
 * above the diagonal stay -1 (masked). Max-pooling keeps sharp, one-token attention visible.
 */
export function maxPoolTril(data: Floats, offset: number, s: number, factor: number): { size: number; values: Float32Array } {
  const size = Math.ceil(s / factor);
  const values = new Float32Array(size * size).fill(-1);
  let i = offset;
  for (let q = 0; q < s; q++) {
    const row = ((q / factor) | 0) * size;
    for (let k = 0; k <= q; k++) {
      const v = data[i++];
      const j = row + ((k / factor) | 0);
      if (v > values[j]) values[j] = v;
    }
  }
  return { size, values };
}

/** Map a probability to [0, 1] display intensity (gamma < 1 lifts small values). */
export function intensity(p: number, gamma = 0.5): number {
  if (!(p > 0)) return 0;
  return p >= 1 ? 1 : Math.pow(p, gamma);
}

export const MASKED_RGB: [number, number, number] = [238, 238, 238];
export const LUT_STEPS = 1024;

/** RGBA lookup table over probabilities 0..1 in LUT_STEPS+1 steps (white → blue with gamma). */
export function colorLut(gamma = 0.5, steps = LUT_STEPS): Uint8ClampedArray {
  const lut = new Uint8ClampedArray((steps + 1) * 4);
  for (let i = 0; i <= steps; i++) {
    const [r, g, b] = seqColor(intensity(i / steps, gamma));
    lut.set([r, g, b, 255], i * 4);
  }
  return lut;
}

/** Colour values (probabilities, or -1 for masked) into RGBA pixels using a LUT from colorLut. */
export function paintRGBA(values: Floats, lut: Uint8ClampedArray, out?: Uint8ClampedArray): Uint8ClampedArray {
  const steps = lut.length / 4 - 1;
  const px = out ?? new Uint8ClampedArray(values.length * 4);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const o = i * 4;
    if (v < 0) {
      px[o] = MASKED_RGB[0]; px[o + 1] = MASKED_RGB[1]; px[o + 2] = MASKED_RGB[2]; px[o + 3] = 255;
      continue;
    }
    const j = Math.min(steps, Math.max(0, Math.round(v * steps))) * 4;
    px[o] = lut[j]; px[o + 1] = lut[j + 1]; px[o + 2] = lut[j + 2]; px[o + 3] = 255;
  }
  return px;
}

/** CSS background for a token tinted by probability p (same ramp as the canvases). */
export function tint(p: number, gamma = 0.5): string {
  const [r, g, b] = seqColor(intensity(p, gamma));
  return `rgb(${r},${g},${b})`;
}

/** Text colour readable on top of tint(p). */
export function inkFor(p: number, gamma = 0.5): string {
  return intensity(p, gamma) > 0.6 ? "#fff" : "#222";
}

/** CSS size (px) of one thumbnail so that a row of n_heads fits in about `width` px. */
export function thumbCss(nHeads: number, width = 600, min = 28, max = 72): number {
  const gap = 4;
  const fit = Math.floor(width / Math.max(1, nHeads)) - gap;
  return Math.max(min, Math.min(max, fit));
}

/** CSS size (px) of the enlarged pattern: about 12 px per token, between lo and hi. */
export function detailCss(s: number, lo = 240, hi = 520): number {
  return Math.max(lo, Math.min(hi, s * 12));
}

/** The (query, key) cell under point (x, y) of a w × h element showing an s × s pattern. */
export function cellAt(x: number, y: number, w: number, h: number, s: number): { q: number; k: number } | null {
  if (w <= 0 || h <= 0 || x < 0 || y < 0 || x >= w || y >= h) return null;
  const q = Math.min(s - 1, Math.floor((y / h) * s));
  const k = Math.min(s - 1, Math.floor((x / w) * s));
  return { q, k };
}

/** Which labels to draw along an axis of s tokens spread over `px` pixels (at least minGap apart). */
export function labelStep(s: number, px: number, minGap = 10): number {
  if (s <= 0) return 1;
  return Math.max(1, Math.ceil(minGap / (px / s)));
}

/** Shorten a token label for an axis (visible whitespace, at most max characters). */
export function shortLabel(text: string, max = 12): string {
  const t = text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
  return t.length > max ? t.slice(0, max - 1) + "…" : t;
}

/** Format a probability compactly. */
export function fmtP(p: number): string {
  if (!Number.isFinite(p)) return String(p);
  if (p === 0) return "0";
  if (Math.abs(p) < 1e-3) return p.toExponential(1);
  return p.toFixed(3);
}

/** The hover readout for a cell: `"query" (q) → "key" (k): p` (or masked above the diagonal). */
export function describeCell(tokens: string[], q: number, k: number, p: number | null): string {
  const name = (i: number) => `"${shortLabel(tokens[i] ?? "?", 20)}" (${i})`;
  if (k > q || p === null) return `${name(q)} → ${name(k)}: masked (causal)`;
  return `${name(q)} → ${name(k)}: ${fmtP(p)}`;
}

/** Head h's size × size thumbnail inside one layer's [n_heads, size, size] buffer (a view, no copy). */
export function headThumb<T extends Float32Array | Float64Array>(data: T, h: number, size: number): T {
  const n = size * size;
  if ((h + 1) * n > data.length || h < 0) throw new RangeError(`head ${h} is not in a buffer of ${data.length / n} heads`);
  return data.subarray(h * n, (h + 1) * n) as T;
}

/** A small least-recently-used map (the enlarged heads' full patterns, a few MB each). */
export class Lru<K, V> {
  private map = new Map<K, V>();
  constructor(readonly capacity: number) {}

  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value as K);
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  clear(): void {
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }
}
