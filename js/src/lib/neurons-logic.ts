// Pure logic of the NeuronHeatmap widget (no DOM): view state and its updates,
// ablation/selection toggling, the diverging colour scale, prediction diffs and
// number formatting. Unit-tested in js/tests/neurons.test.ts.
import { divColor, rgb } from "./dom";

export type Mode = "zero" | "scale";
/** What the heatmap's colours show: each neuron's activation, or its attribution to the target's logit. */
export type ColorBy = "activation" | "attribution";

/** Everything the kernel needs to rerun the view (mirrors the Python traits). */
export interface ViewState {
  prompt: string;
  layer: number;
  top_n: number;
  top_k: number;
  mode: Mode;
  factor: number;
  ablated: number[];
  selected_neuron: number;
  color_by: ColorBy;
  target: string; // the attribution's target token ("" = the top prediction)
}

export const STATE_KEYS: (keyof ViewState)[] = [
  "prompt", "layer", "top_n", "top_k", "mode", "factor", "ablated", "selected_neuron", "color_by", "target",
];

/** Sorted, de-duplicated integer indices. */
export function normalizeIndices(list: readonly number[] | null | undefined): number[] {
  const out = [...new Set((list ?? []).map((v) => Math.trunc(Number(v))).filter((v) => Number.isFinite(v)))];
  return out.sort((a, b) => a - b);
}

/** Add `i` to the ablated set, or remove it if present (result sorted). */
export function toggleIndex(list: readonly number[], i: number): number[] {
  const s = new Set(list);
  if (s.has(i)) s.delete(i);
  else s.add(i);
  return normalizeIndices([...s]);
}

/** Selecting the selected neuron again clears the selection (-1). */
export function toggleSelected(current: number, i: number): number {
  return current === i ? -1 : i;
}

export function sameIndices(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b)) return sameIndices(a, b);
  return a === b;
}

/**
 * Apply a patch to the view state. Changing the layer clears the ablations and the
 * tint (they name neurons of one layer) unless the patch sets them too.
 */
export function updateState(s: ViewState, patch: Partial<ViewState>): ViewState {
  const n: ViewState = { ...s, ...patch };
  if (patch.layer !== undefined && patch.layer !== s.layer) {
    if (patch.ablated === undefined) n.ablated = [];
    if (patch.selected_neuron === undefined) n.selected_neuron = -1;
  }
  n.ablated = normalizeIndices(n.ablated);
  return n;
}

/** Keys whose values differ between two states. */
export function changedKeys(a: ViewState, b: ViewState): (keyof ViewState)[] {
  return STATE_KEYS.filter((k) => !sameValue(a[k], b[k]));
}

/** Read the state from trait getters, with safe defaults. */
export function readState(get: (name: string) => any): ViewState {
  const mode = get("mode") === "scale" ? "scale" : "zero";
  return {
    prompt: String(get("prompt") ?? ""),
    layer: Number(get("layer") ?? 0),
    top_n: Number(get("top_n") ?? 24),
    top_k: Number(get("top_k") ?? 10),
    mode,
    factor: Number(get("factor") ?? 0),
    ablated: normalizeIndices(get("ablated") ?? []),
    selected_neuron: Number(get("selected_neuron") ?? -1),
    color_by: get("color_by") === "attribution" ? "attribution" : "activation",
    target: String(get("target") ?? ""),
  };
}

/** Parse a finite number from an input's text; null if it is not one. */
export function parseNumber(text: string): number | null {
  if (text.trim() === "") return null;
  const v = Number(text);
  return Number.isFinite(v) ? v : null;
}

/** Parse a positive integer no larger than `max`; null if invalid. */
export function parseCount(text: string, max = Infinity): number | null {
  const v = parseNumber(text);
  if (v === null || !Number.isInteger(v) || v < 1) return null;
  return Math.min(v, max);
}

/** Largest absolute value (0 for an empty array). */
export function maxAbs(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]);
    if (a > m) m = a;
  }
  return m;
}

/** Value in [-1, 1] on a symmetric scale of half-width `scale` (0 when scale is 0). */
export function normalize(v: number, scale: number): number {
  if (!(scale > 0) || !Number.isFinite(v)) return 0;
  return Math.max(-1, Math.min(1, v / scale));
}

/** Diverging colour (negative red, zero white, positive blue) for v on [-scale, scale]. */
export function heatColor(v: number, scale: number): string {
  return rgb(divColor(normalize(v, scale)));
}

/** Dark text on light cells, light text on dark ones. */
export function textColorFor(v: number, scale: number): string {
  return Math.abs(normalize(v, scale)) > 0.6 ? "#fff" : "#222";
}

/** Element [i, j] of a row-major matrix with `cols` columns. */
export function at(data: ArrayLike<number>, cols: number, i: number, j: number): number {
  return data[i * cols + j];
}

/** Column j of a row-major [rows, cols] matrix. */
export function column(data: ArrayLike<number>, rows: number, cols: number, j: number): Float32Array {
  const out = new Float32Array(rows);
  for (let i = 0; i < rows; i++) out[i] = data[i * cols + j];
  return out;
}

/** One row of the predictions diff as the kernel sends it. */
export interface ChangeRow {
  token: string;
  id: number;
  base: number;
  cur: number;
  delta: number;
  base_rank: number | null;
  cur_rank: number | null;
}

export interface ChangeInfo {
  arrow: string;
  cls: "up" | "down" | "same";
  text: string;
}

/** Arrow, class and signed text (percentage points) for a probability change. */
export function changeInfo(delta: number, eps = 5e-4): ChangeInfo {
  if (!Number.isFinite(delta) || Math.abs(delta) < eps) return { arrow: "=", cls: "same", text: "±0.0" };
  const pp = (delta * 100).toFixed(Math.abs(delta) < 0.01 ? 2 : 1);
  return delta > 0 ? { arrow: "▲", cls: "up", text: `+${pp}` } : { arrow: "▼", cls: "down", text: pp.replace("-", "−") };
}

/** A probability as a percentage ("12.3%", "<0.01%"). */
export function formatProb(p: number): string {
  if (!Number.isFinite(p)) return String(p);
  if (p > 0 && p < 1e-4) return "<0.01%";
  return `${(p * 100).toFixed(p < 0.01 ? 2 : 1)}%`;
}

/** Prediction rows ordered by their larger probability (baseline or current), then id. */
export function sortChanges(rows: readonly ChangeRow[]): ChangeRow[] {
  return [...rows].sort((a, b) => Math.max(b.base, b.cur) - Math.max(a.base, a.cur) || a.id - b.id);
}

/** A spec dict ({kind: "edit", site, indices, op, value}) as a short label. */
export function describeSpec(spec: Record<string, any>): string {
  const idx: number[] | null = spec.indices ?? null;
  const what = idx === null ? "all" : idx.slice(0, 8).join(",") + (idx.length > 8 ? "…" : "");
  if (spec.kind === "edit") {
    const op = spec.op === "scale" ? `scale ×${spec.value}` : spec.op;
    return `${op} ${spec.site}[${what}]`;
  }
  return `${spec.kind} ${spec.site}`;
}

/** Parameters of the kernel's `run` request for a state. */
export function runParams(s: ViewState): Record<string, unknown> {
  return {
    prompt: s.prompt, layer: s.layer, top_n: s.top_n, top_k: s.top_k, mode: s.mode,
    factor: s.factor, ablated: [...s.ablated], selected_neuron: s.selected_neuron,
    color_by: s.color_by, target: s.target,
  };
}

/** The legend's words for what the colours show. */
export function colorLegend(colorBy: ColorBy, metric?: string): string {
  return colorBy === "attribution" ? ` negative → 0 → positive attribution${metric ? ` to ${metric}` : ""}.`
    : " negative → 0 → positive activation.";
}
