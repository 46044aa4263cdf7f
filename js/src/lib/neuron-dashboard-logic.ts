// Pure logic of the NeuronDashboard widget (no DOM): the activation colour scale, histogram
// range / bar layout / labels, next-previous navigation with wrapping, titles, statistics
// and prediction-change formatting. Unit-tested in js/tests/neuron-dashboard.test.ts.
import { fmt } from "./dom";

// -- activations -------------------------------------------------------------------------------

/** The tint scale of a set of exemplars: the largest |activation| (1 when there is none). */
export function actScale(arrays: ArrayLike<number>[]): number {
  let m = 0;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const v = Math.abs(Number(a[i]));
      if (Number.isFinite(v) && v > m) m = v;
    }
  }
  return m > 0 ? m : 1;
}

const POS: [number, number, number] = [245, 130, 32]; // orange: positive activations
const NEG: [number, number, number] = [60, 120, 230]; // blue: negative activations

/** Signed intensity in [-1, 1] of an activation under a scale (0 for non-finite values). */
export function actLevel(a: number, scale: number): number {
  if (!Number.isFinite(a) || !(scale > 0)) return 0;
  return Math.max(-1, Math.min(1, a / scale));
}

/** Background of a token: white at 0, orange for positive, blue for negative activations. */
export function actColor(a: number, scale: number): string {
  const t = actLevel(a, scale);
  const c = t >= 0 ? POS : NEG;
  const u = Math.abs(t);
  const mix = (i: number) => Math.round(255 + (c[i] - 255) * u);
  return `rgb(${mix(0)},${mix(1)},${mix(2)})`;
}

/** Token text colour on its tint (white on strong tints). */
export function actTextColor(a: number, scale: number): string {
  return Math.abs(actLevel(a, scale)) > 0.75 ? "#fff" : "#111";
}

/** An activation in a tooltip / label. */
export function formatAct(a: number | null | undefined): string {
  if (a === null || a === undefined) return "–";
  return fmt(Number(a), 3);
}

// -- histogram ---------------------------------------------------------------------------------

export interface HistRange { lo: number; hi: number } // bins lo .. hi - 1

/** The non-empty bin range [lo, hi) of a histogram (null when every bin is empty). */
export function histRange(counts: ArrayLike<number>): HistRange | null {
  let lo = -1;
  let hi = -1;
  for (let i = 0; i < counts.length; i++) {
    if (Number(counts[i]) > 0) {
      if (lo < 0) lo = i;
      hi = i + 1;
    }
  }
  return lo < 0 ? null : { lo, hi };
}

/** Index of the exact-zero bin (edges[i] === edges[i + 1] === 0), or -1. */
export function zeroBin(edges: ArrayLike<number>): number {
  for (let i = 0; i + 1 < edges.length; i++) if (edges[i] === 0 && edges[i + 1] === 0) return i;
  return -1;
}

export interface Bar { bin: number; count: number; x: number; y: number; w: number; h: number }

/**
 * Bars of bins [lo, hi) in a `width` × `height` box: equal widths, heights proportional to
 * log10(1 + count) (a count of 1 is still visible: at least 1 px), baseline at y = height.
 */
export function histBars(counts: ArrayLike<number>, range: HistRange, width: number, height: number, gap = 1): Bar[] {
  const n = range.hi - range.lo;
  if (n <= 0) return [];
  let max = 0;
  for (let i = range.lo; i < range.hi; i++) max = Math.max(max, Number(counts[i]));
  const top = Math.log10(1 + max);
  const bw = width / n;
  const bars: Bar[] = [];
  for (let i = range.lo; i < range.hi; i++) {
    const c = Number(counts[i]);
    const h = c > 0 && top > 0 ? Math.max(1, (height * Math.log10(1 + c)) / top) : 0;
    const x = (i - range.lo) * bw;
    bars.push({ bin: i, count: c, x, y: height - h, w: Math.max(0.5, bw - (bw > 2 * gap ? gap : 0)), h });
  }
  return bars;
}

/**
 * Where to draw the zero marker, in pixels from the left: the middle of the zero bin when it is
 * shown, else the side of the range zero lies on ("left" when every value is positive).
 */
export function zeroMarker(range: HistRange, zero: number, width: number): { x: number; side: "in" | "left" | "right" } {
  const n = range.hi - range.lo;
  if (zero < range.lo) return { x: 0, side: "left" };
  if (zero >= range.hi) return { x: width, side: "right" };
  return { x: ((zero - range.lo + 0.5) * width) / n, side: "in" };
}

/** A bin as text: "0" for the zero bin, "[a, b)" otherwise (infinite edges as ±∞). */
export function binLabel(edges: ArrayLike<number>, i: number): string {
  const a = Number(edges[i]);
  const b = Number(edges[i + 1]);
  if (a === 0 && b === 0) return "0";
  const f = (v: number) => (v === Infinity ? "∞" : v === -Infinity ? "-∞" : shortNum(v));
  return `[${f(a)}, ${f(b)})`;
}

/** A number in at most ~4 significant characters (axis ticks). */
export function shortNum(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-2) return v.toExponential(0);
  return String(Number(v.toPrecision(2)));
}

/** About `n` evenly spaced tick bins in [lo, hi), plus the zero bin when shown (ticks crowding it are dropped). */
export function tickBins(range: HistRange, zero: number, n = 5): number[] {
  const span = range.hi - range.lo;
  const step = Math.max(1, Math.ceil(span / n));
  const hasZero = zero >= range.lo && zero < range.hi;
  const out: number[] = [];
  for (let i = range.lo; i < range.hi; i += step) if (!hasZero || Math.abs(i - zero) > step / 2) out.push(i);
  if (hasZero) out.push(zero);
  return out.sort((a, b) => a - b);
}

// -- navigation --------------------------------------------------------------------------------

/** One key of the store next / previous move through (from the `lane` trait). */
export interface LaneEntry { key: string; layer: number; width: number }

export interface Target { site: string; layer: number; unit: number }

/** The unit `delta` (±1) away from (site, unit), wrapping to the next / previous key of the lane. */
export function step(lane: LaneEntry[], site: string, unit: number, delta: 1 | -1): Target {
  let i = lane.findIndex((e) => e.key === site);
  if (i < 0) throw new Error(`${site} is not in the lane`);
  let u = unit + delta;
  if (u >= lane[i].width) {
    i = (i + 1) % lane.length;
    u = 0;
  } else if (u < 0) {
    i = (i - 1 + lane.length) % lane.length;
    u = lane[i].width - 1;
  }
  return { site: lane[i].key, layer: lane[i].layer, unit: u };
}

/** The lane entry of a layer (null when the store has no such key). */
export function findLayer(lane: LaneEntry[], layer: number): LaneEntry | null {
  return lane.find((e) => e.layer === layer && e.layer >= 0) ?? null;
}

/** Parse a number input: an integer or null (empty, fractional or not a number). */
export function parseIndex(text: string): number | null {
  if (text.trim() === "") return null;
  const v = Number(text);
  return Number.isInteger(v) ? v : null;
}

/** The title of a unit: "Layer 3 · neuron 7" for MLP neurons, else "<key> · unit 7". */
export function unitTitle(site: string, layer: number, unit: number): string {
  if (layer >= 0 && site === `neurons.${layer}`) return `Layer ${layer} · neuron ${unit}`;
  return `${site} · unit ${unit}`;
}

export function sameTarget(a: { site: string; unit: number } | null, b: { site: string; unit: number } | null): boolean {
  return !!a && !!b && a.site === b.site && a.unit === b.unit;
}

// -- statistics and predictions ------------------------------------------------------------------

export const STAT_ORDER = ["mean", "std", "skew", "kurtosis", "frac_active", "max", "count"] as const;
const STAT_LABEL: Record<string, string> = {
  mean: "mean", std: "std", skew: "skew", kurtosis: "kurtosis (excess)", frac_active: "active (x > 0)", max: "max", count: "tokens",
};

/** [label, text] rows of the statistics table (missing / NaN values as "–"). */
export function statRows(stats: Record<string, number | null | undefined>): [string, string, string][] {
  return STAT_ORDER.map((k) => {
    const v = stats[k];
    let text: string;
    if (v === null || v === undefined || !Number.isFinite(Number(v))) text = "–";
    else if (k === "count") text = Math.round(Number(v)).toLocaleString("en-US");
    else if (k === "frac_active") text = `${(Number(v) * 100).toFixed(1)}%`;
    else text = fmt(Number(v), 3);
    return [k, STAT_LABEL[k], text];
  });
}

/** A probability as a percentage with sensible precision. */
export function formatPct(p: number): string {
  if (!Number.isFinite(p)) return String(p);
  const v = p * 100;
  if (v === 0) return "0%";
  if (Math.abs(v) >= 10) return `${v.toFixed(1)}%`;
  if (Math.abs(v) >= 0.01) return `${v.toFixed(2)}%`;
  return `${v.toExponential(1)}%`;
}

/** The change of a probability in percentage points: text and sign ("up", "down", "same"). */
export function formatChange(pBase: number, pEdit: number): { text: string; sign: "up" | "down" | "same" } {
  const d = (pEdit - pBase) * 100;
  if (!Number.isFinite(d)) return { text: "–", sign: "same" };
  const a = Math.abs(d);
  if (a < 1e-6) return { text: "±0 pp", sign: "same" }; // float noise, not an effect
  const body = a >= 10 ? a.toFixed(1) : a >= 0.01 ? a.toFixed(2) : a.toExponential(1);
  return { text: `${d > 0 ? "+" : "−"}${body} pp`, sign: d > 0 ? "up" : "down" };
}

export interface PredRow { token: string; id: number; p_base: number; p_edit: number }

/** Prediction rows ordered by the larger of the two probabilities (ties: by id). */
export function orderPredictions(rows: PredRow[]): PredRow[] {
  return [...rows].sort((a, b) => Math.max(b.p_base, b.p_edit) - Math.max(a.p_base, a.p_edit) || a.id - b.id);
}

/** The heading of the edited column / generation box. */
export function editLabel(mode: string, factor: number): string {
  return mode === "amplify" ? `amplified ×${Number.isFinite(factor) ? Number(factor.toPrecision(4)) : factor}` : "ablated";
}
