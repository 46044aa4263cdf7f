// Pure logic of the CircuitGraph widget: columns and positions of the nodes, which edges
// are drawn at a given number of kept edges, edge colour (sign) and width (magnitude),
// the log-scale slider, pins and the SVG text of an export. No DOM here (unit-tested in node).
//
// The graph payload is generic, so component circuits and feature attribution graphs draw
// alike: nodes have an id, a label, a layer, a kind and an index within their layer; edges
// have src / dst (node indices) and a weight, sent sorted by |weight|, largest first.
// Colours, widths, curves, pins and formatting live in graph-draw (shared with AttributionGraph).
import { count, edgeColor, edgeOpacity, edgePath, edgeWidth, magnitude, maxAbs, signed, togglePin } from "./graph-draw";

export { count, edgeColor, edgeOpacity, edgePath, edgeWidth, magnitude, maxAbs, signed, togglePin };

/** Column order of node kinds within one layer: inputs, then attention, then MLP, then outputs. */
export const KIND_RANK: Record<string, number> = {
  embed: 0, token: 0, input: 0,
  attn: 1, head: 1, q: 1, k: 1, v: 1, kv: 1,
  mlp: 2, neuron: 2, feature: 2, error: 2, transcoder: 2,
  logits: 3, logit: 3, output: 3,
};

export function kindRank(kind: string): number {
  return KIND_RANK[kind] ?? 2;
}

export interface Columns {
  /** column index of each node */
  col: Int32Array;
  /** number of columns */
  count: number;
  /** rows used by each column (max index + 1) */
  rows: Int32Array;
  /** a representative (layer, kind) per column, for the column labels */
  layer: number[];
  kind: string[];
}

/** Columns by (layer, kind rank), densely ranked; rows by each node's index within its layer. */
export function columnsOf(layers: ArrayLike<number>, kinds: readonly string[], index: ArrayLike<number>): Columns {
  const n = layers.length;
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) keys[i] = Number(layers[i]) * 8 + kindRank(kinds[i] ?? "");
  const distinct = Array.from(new Set(Array.from(keys))).sort((a, b) => a - b);
  const rank = new Map<number, number>();
  distinct.forEach((k, j) => rank.set(k, j));
  const col = new Int32Array(n);
  const rows = new Int32Array(distinct.length);
  const layer: number[] = new Array(distinct.length).fill(0);
  const kind: string[] = new Array(distinct.length).fill("");
  for (let i = 0; i < n; i++) {
    const c = rank.get(keys[i]) as number;
    col[i] = c;
    rows[c] = Math.max(rows[c], Number(index[i]) + 1);
    layer[c] = Number(layers[i]);
    kind[c] = kinds[i] ?? "";
  }
  return { col, count: distinct.length, rows, layer, kind };
}

export interface Layout {
  x: Float32Array;
  y: Float32Array;
  width: number;
  height: number;
  colWidth: number;
  rowHeight: number;
  radius: number;
  cols: Columns;
}

export interface LayoutOptions {
  width: number;
  marginLeft?: number;
  marginRight?: number;
  marginTop?: number;
  marginBottom?: number;
  rowHeight?: number;
  minColWidth?: number;
}

/**
 * Node positions: x by column (layers left to right), y by index within the layer, each
 * column centred vertically. The width fits the container unless columns would be narrower
 * than `minColWidth` (then the drawing is wider and scrolls).
 */
export function layout(layers: ArrayLike<number>, kinds: readonly string[], index: ArrayLike<number>,
  opts: LayoutOptions): Layout {
  const cols = columnsOf(layers, kinds, index);
  const ml = opts.marginLeft ?? 40, mr = opts.marginRight ?? 20, mt = opts.marginTop ?? 28, mb = opts.marginBottom ?? 12;
  const maxRows = Math.max(1, ...Array.from(cols.rows));
  const rowHeight = opts.rowHeight ?? Math.max(14, Math.min(36, 420 / maxRows));
  const span = Math.max(0, cols.count - 1);
  const inner = Math.max(0, opts.width - ml - mr);
  const colWidth = span === 0 ? inner : Math.max(opts.minColWidth ?? 12, inner / span);
  const width = ml + mr + colWidth * span;
  const height = mt + mb + rowHeight * maxRows;
  const n = layers.length;
  const x = new Float32Array(n);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const c = cols.col[i];
    const offset = (maxRows - cols.rows[c]) / 2;
    x[i] = span === 0 ? ml + inner / 2 : ml + c * colWidth;
    y[i] = mt + (offset + Number(index[i]) + 0.5) * rowHeight;
  }
  const radius = Math.max(2.5, Math.min(8, Math.min(colWidth, rowHeight) * 0.32));
  return { x, y, width, height, colWidth, rowHeight, radius, cols };
}

/** Short column label: "emb", "a3", "m3", "out" (or the layer number for other kinds). */
export function columnLabel(layer: number, kind: string): string {
  const r = kindRank(kind);
  if (r === 0) return kind === "embed" ? "emb" : kind;
  if (r === 3) return kind === "logits" ? "out" : kind;
  if (r === 1) return `a${layer}`; // heads and their q/k/v inputs share the column
  if (kind === "mlp") return `m${layer}`;
  return `${kind[0] ?? ""}${layer}`;
}

/**
 * Row labels (the heads' side of the drawing): for each row, the part after the first "." of the
 * first node id in that row that has one ("a3.h2" → "h2", "a3.kv0" → "kv0"); "" otherwise.
 */
export function rowLabels(ids: readonly string[], index: ArrayLike<number>, rows: number): string[] {
  const out: string[] = new Array(Math.max(0, rows)).fill("");
  for (let i = 0; i < ids.length; i++) {
    const r = Number(index[i]);
    const dot = ids[i].indexOf(".");
    if (r >= 0 && r < out.length && !out[r] && dot > 0) out[r] = ids[i].slice(dot + 1);
  }
  return out;
}

// -- edges: how many are drawn, colour and width ------------------------------------------

/** Edges drawn when `k` are kept: the first min(k, sent, maxDraw) of the |weight|-sorted list. */
export function drawnCount(k: number, sent: number, maxDraw: number): number {
  return Math.max(0, Math.min(Math.floor(k), sent, maxDraw));
}

/** |weight| of the k-th kept edge (the threshold the slider stands for), or null if not sent. */
export function thresholdAt(weights: ArrayLike<number>, k: number): number | null {
  if (k < 1 || k > weights.length) return null;
  return Math.abs(Number(weights[k - 1]));
}

/** Number of edges with |weight| >= t in a |weight|-descending list (binary search). */
export function countAbove(weights: ArrayLike<number>, t: number): number {
  let lo = 0, hi = weights.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (Math.abs(Number(weights[mid])) >= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// -- the slider: log scale over the number of kept edges ------------------------------------

export const SLIDER_STEPS = 1000;

/** Slider position (0..SLIDER_STEPS) → number of kept edges in 1..n, log-spaced. */
export function sliderToK(pos: number, n: number): number {
  if (n <= 1) return Math.max(0, n);
  const t = Math.max(0, Math.min(1, pos / SLIDER_STEPS));
  return Math.max(1, Math.min(n, Math.round(Math.exp(t * Math.log(n)))));
}

/** Inverse of sliderToK (the position showing k). */
export function kToSlider(k: number, n: number): number {
  if (n <= 1 || k <= 1) return 0;
  return Math.round((Math.log(Math.min(k, n)) / Math.log(n)) * SLIDER_STEPS);
}

// -- pins -----------------------------------------------------------------------------------

/** Edge name as the engine spells it: "a0.h3->m2". */
export function edgeName(src: string, dst: string): string {
  return `${src}->${dst}`;
}

/** Parse a head node id "a{L}.h{H}" → [L, H] (null for other nodes). */
export function parseHead(id: string): [number, number] | null {
  const m = /^a(\d+)\.h(\d+)$/.exec(id);
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** Parse an MLP node id "m{L}" → L (null for other nodes). */
export function parseMlp(id: string): number | null {
  const m = /^m(\d+)$/.exec(id);
  return m ? Number(m[1]) : null;
}

/**
 * The caption drawn beside a node whose row has no label of its own: an MLP sits alone in its
 * column, centred, so the head row labels at its height do not name it ("MLP 3"); "" otherwise.
 */
export function nodeCaption(kind: string, layer: number): string {
  return kind === "mlp" ? `MLP ${layer}` : "";
}
