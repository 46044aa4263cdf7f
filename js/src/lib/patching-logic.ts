// Pure logic of the PatchingHeatmap widget (no DOM): the diverging colour scale centred
// at 0, grid layout and hit-testing, the exact/attribution data choice, column labels,
// number formatting and the clean/corrupted/patched predictions table.
// Unit-tested in js/tests/patching.test.ts.
import { divColor, rgb } from "./dom";

/** One heatmap as the kernel sends it (arrays already decoded from binary buffers). */
export interface Grid {
  method: string;
  values: { data: ArrayLike<number>; shape: number[] };
  raw: { data: ArrayLike<number>; shape: number[] };
  layers: { data: ArrayLike<number>; shape: number[] };
  columns: { data: ArrayLike<number>; shape: number[] };
}

// -- colour scale ----------------------------------------------------------------

/**
 * Half-width of the symmetric colour scale: at least 1 (so 1 = clean is full blue and
 * -1 full red), wider when values overshoot (attribution estimates can).
 */
export function scaleHalfWidth(values: ArrayLike<number>): number {
  let m = 1;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]);
    if (Number.isFinite(a) && a > m) m = a;
  }
  return m;
}

/** A value mapped to [-1, 1] on a scale of half-width `half` centred on 0 (NaN → 0). */
export function toUnit(v: number, half: number): number {
  if (!Number.isFinite(v) || !(half > 0)) return 0;
  return Math.max(-1, Math.min(1, v / half));
}

/** Cell colour: 0 (= corrupted) white, positive blue (towards clean), negative red. */
export function cellColor(v: number, half: number): string {
  return rgb(divColor(toUnit(v, half)));
}

/** Dark text on light cells, light text on dark ones. */
export function inkColor(v: number, half: number): string {
  return Math.abs(toUnit(v, half)) > 0.6 ? "#fff" : "#222";
}

// -- layout and hit-testing -------------------------------------------------------

export interface Layout {
  rows: number;
  cols: number;
  cell: number; // square cell side in px
  labelW: number; // row-label column width
  labelH: number; // column-label row height
  width: number;
  height: number;
}

/** Cell size that fits `cols` columns into `maxWidth` (clamped to [minCell, maxCell]). */
export function gridLayout(rows: number, cols: number, maxWidth = 720, minCell = 10, maxCell = 36,
  labelW = 44, labelH = 64): Layout {
  const avail = Math.max(0, maxWidth - labelW);
  const fit = cols > 0 ? Math.floor(avail / cols) : maxCell;
  const cell = Math.max(minCell, Math.min(maxCell, fit));
  return { rows, cols, cell, labelW, labelH, width: labelW + cols * cell, height: labelH + rows * cell };
}

/** The [row, col] index under a point (x, y relative to the grid's top-left corner), or null. */
export function cellAt(lay: Layout, x: number, y: number): [number, number] | null {
  const gx = x - lay.labelW;
  const gy = y - lay.labelH;
  if (gx < 0 || gy < 0) return null;
  const c = Math.floor(gx / lay.cell);
  const r = Math.floor(gy / lay.cell);
  if (r >= lay.rows || c >= lay.cols) return null;
  return [r, c];
}

/** Show every k-th column label so labels are at least `minPx` apart. */
export function labelStride(cell: number, minPx = 12): number {
  if (!(cell > 0)) return 1;
  return Math.max(1, Math.ceil(minPx / cell));
}

/** Flat index of the cell with layer `layer` and column id `col`, or -1. */
export function cellIndex(layers: ArrayLike<number>, columns: ArrayLike<number>, layer: number, col: number): number {
  const r = Array.prototype.indexOf.call(layers, layer) as number;
  const c = Array.prototype.indexOf.call(columns, col) as number;
  if (r < 0 || c < 0) return -1;
  return r * columns.length + c;
}

// -- labels and formatting ---------------------------------------------------------

/** Column header texts: the clean prompt's tokens for positions, H<i> / N<i> otherwise. */
export function columnLabels(kind: string, columns: ArrayLike<number>, tokens: readonly string[]): string[] {
  const out: string[] = [];
  for (let j = 0; j < columns.length; j++) {
    const c = columns[j];
    if (kind === "position") out.push(c >= 0 && c < tokens.length ? tokens[c] : `pos ${c}`);
    else if (kind === "head") out.push(`H${c}`);
    else if (kind === "neuron") out.push(`N${c}`);
    else out.push(String(c));
  }
  return out;
}

/** Short name of a column for readouts ("position 3", "head 2", "neuron 17"). */
export function columnName(kind: string, col: number): string {
  return kind === "position" || kind === "head" || kind === "neuron" ? `${kind} ${col}` : `column ${col}`;
}

/** A normalized metric value, signed with 3 decimals ("+0.532", "−0.041"; NaN stays). */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const s = Math.abs(v) >= 1e4 ? Math.abs(v).toExponential(2) : Math.abs(v).toFixed(3);
  if (s === "0.000") return "0.000";
  return (v < 0 ? "−" : "+") + s;
}

/** A probability as a percentage ("12.3%", "<0.01%"). */
export function formatProb(p: number): string {
  if (!Number.isFinite(p)) return String(p);
  if (p > 0 && p < 1e-4) return "<0.01%";
  return `${(p * 100).toFixed(p < 0.01 ? 2 : 1)}%`;
}

/** The hover readout for one cell. */
export function readout(kind: string, layer: number, col: number, label: string, value: number, raw: number,
  method: string, row?: string): string {
  const where = kind === "position" ? `position ${col} ${JSON.stringify(label)}` : columnName(kind, col);
  return `${row ?? `layer ${layer}`} · ${where} · ${method}: ${formatValue(value)} (raw ${formatValue(raw)})`;
}

/** What the two reference runs are called: "clean" / "corrupted", or the sweep's own names
 * (an IIA sweep: "source" / "base"). */
export interface RunNames { clean: string; corrupted: string }

export function runNames(names?: Partial<RunNames> | null): RunNames {
  return { clean: names?.clean || "clean", corrupted: names?.corrupted || "corrupted" };
}

/** The label of heatmap row `i`: the sweep's row label (a site name) when it sent one, else the layer. */
export function rowLabel(rowLabels: readonly string[] | undefined, layers: ArrayLike<number>, i: number): string {
  const named = rowLabels?.[i];
  return named ? named : String(layers[i]);
}

// -- the method toggle ----------------------------------------------------------

/** Methods available, exact first. */
export function methodsOf(grids: readonly Grid[]): string[] {
  const ms = grids.map((g) => g.method);
  return ms.sort((a, b) => (a === "exact" ? -1 : b === "exact" ? 1 : a.localeCompare(b)));
}

/** The grid to draw for `method` (falls back to the first one when it is missing). */
export function chooseGrid(grids: readonly Grid[], method: string): Grid | null {
  if (grids.length === 0) return null;
  return grids.find((g) => g.method === method) ?? grids[0];
}

/** The method after a toggle click (cycles through those available). */
export function nextMethod(methods: readonly string[], current: string): string {
  if (methods.length === 0) return current;
  const i = methods.indexOf(current);
  return methods[(i + 1) % methods.length];
}

// -- predictions ----------------------------------------------------------------

export interface Prediction {
  tokens: string[];
  ids: { data: ArrayLike<number> };
  probs: { data: ArrayLike<number> };
}

export interface PredCell {
  token: string;
  id: number;
  prob: number;
}

export const PRED_COLUMNS = ["clean", "corrupted", "patched"] as const;
export type PredColumn = (typeof PRED_COLUMNS)[number];

/** Rank-aligned rows: row r holds each column's r-th prediction (null where a column is missing or short). */
export function predictionRows(preds: Partial<Record<PredColumn, Prediction | null>>): Record<PredColumn, PredCell | null>[] {
  const n = Math.max(0, ...PRED_COLUMNS.map((c) => preds[c]?.tokens.length ?? 0));
  const rows: Record<PredColumn, PredCell | null>[] = [];
  for (let r = 0; r < n; r++) {
    const row = {} as Record<PredColumn, PredCell | null>;
    for (const c of PRED_COLUMNS) {
      const p = preds[c];
      row[c] = p && r < p.tokens.length ? { token: p.tokens[r], id: Number(p.ids.data[r]), prob: Number(p.probs.data[r]) } : null;
    }
    rows.push(row);
  }
  return rows;
}
