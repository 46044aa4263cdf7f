// Pure logic of the AttributionGraph widget: node ids as the engine spells them, the layout
// (input tokens along the bottom by position, logits along the top, features and error nodes at
// (position, layer), nodes of one cell spread), node sizes by influence, incident edges, the
// threshold sliders, supernode grouping, intervention factors and exemplar text segments.
// No DOM here (unit-tested in node). Colours, widths and formatting come from graph-draw.
import { radiusOf, spreadInCell } from "./graph-draw";

/** Node kinds as the kernel codes them (uint8). */
export const FEATURE = 0, ERROR = 1, TOKEN = 2, LOGIT = 3;
export const KIND_NAMES = ["feature", "error", "token", "logit"];

/**
 * A node's id, as `workbench.graphs.AttributionGraph.node_ids` spells it: features
 * "{layer}_{feature}_{pos}", errors "err_{layer}_{pos}", tokens "E_{token id}_{pos}", logits
 * "{n_layers + 1}_{token id}_{n_pos - 1}" (`feature` carries the token id of tokens and logits).
 */
export function nodeId(kind: number, layer: number, pos: number, feature: number, nLayers: number, nPos: number): string {
  if (kind === FEATURE) return `${layer}_${feature}_${pos}`;
  if (kind === ERROR) return `err_${layer}_${pos}`;
  if (kind === TOKEN) return `E_${feature}_${pos}`;
  return `${nLayers + 1}_${feature}_${nPos - 1}`;
}

export interface NodeColumns {
  kind: ArrayLike<number>;
  layer: ArrayLike<number>;
  pos: ArrayLike<number>;
  influence: ArrayLike<number>;
}

export interface GraphLayout {
  x: Float32Array;
  y: Float32Array;
  r: Float32Array;
  width: number;
  height: number;
  colWidth: number;
  rowHeight: number;
  marginLeft: number;
  marginTop: number;
  /** y of each layer's row: index layer + 1 (tokens at -1 → 0, logits at nLayers → nLayers + 1) */
  rowY: Float32Array;
  /** x of each position's column */
  colX: Float32Array;
}

export interface GraphLayoutOptions {
  width: number;
  marginLeft?: number;
  marginRight?: number;
  marginTop?: number;
  marginBottom?: number;
  rowHeight?: number;
  minColWidth?: number;
  /** least distance between the centres of nodes of one cell */
  spacing?: number;
}

/** Least distance between two logit nodes (room for their token labels). */
export const LOGIT_SPACING = 30;

/** Row of a node: 0 the tokens (bottom), layer + 1 for features and errors, nLayers + 1 the logits. */
export function rowOf(kind: number, layer: number, nLayers: number): number {
  if (kind === TOKEN) return 0;
  if (kind === LOGIT) return nLayers + 1;
  return Math.max(0, Math.min(nLayers - 1, layer)) + 1;
}

/**
 * Positions of the drawn nodes: x by token position (one column each, left to right), y by
 * layer (tokens at the bottom, then layer 0 upwards, the logits on top). The nodes of one
 * (position, row) cell are spread over the cell, the most influential first (top row of the
 * cell, centred), error nodes after the features. Radius: influence for features and errors
 * (area proportional), a fixed size for tokens and logits.
 */
export function graphLayout(nodes: NodeColumns, nLayers: number, nPos: number, opts: GraphLayoutOptions): GraphLayout {
  const n = nodes.kind.length;
  const ml = opts.marginLeft ?? 56, mr = opts.marginRight ?? 24, mt = opts.marginTop ?? 40, mb = opts.marginBottom ?? 44;
  const rows = nLayers + 2;
  const spacing = opts.spacing ?? 9;
  // the fullest cell sets the row height (within limits) so crowded graphs get room
  const cellCount = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const key = rowOf(nodes.kind[i], nodes.layer[i], nLayers) * Math.max(1, nPos) + Number(nodes.pos[i]);
    cellCount.set(key, (cellCount.get(key) ?? 0) + 1);
  }
  const inner = Math.max(0, opts.width - ml - mr);
  const colWidth = Math.max(opts.minColWidth ?? 36, nPos > 0 ? inner / nPos : inner);
  let fullest = 1;
  for (const c of cellCount.values()) fullest = Math.max(fullest, c);
  const perRow = Math.max(1, Math.floor((colWidth * 0.85) / spacing) + 1);
  const need = Math.ceil(fullest / perRow) * spacing + spacing;
  const rowHeight = opts.rowHeight ?? Math.max(34, Math.min(120, need));
  const width = ml + mr + colWidth * Math.max(1, nPos);
  const height = mt + mb + rowHeight * (rows - 1);
  const rowY = new Float32Array(rows);
  for (let r = 0; r < rows; r++) rowY[r] = mt + (rows - 1 - r) * rowHeight;
  const colX = new Float32Array(Math.max(1, nPos));
  for (let p = 0; p < colX.length; p++) colX[p] = ml + (p + 0.5) * colWidth;
  // group by cell; within a cell order features before errors, by influence (largest first)
  const cells = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const key = rowOf(nodes.kind[i], nodes.layer[i], nLayers) * Math.max(1, nPos) + Number(nodes.pos[i]);
    let list = cells.get(key);
    if (!list) cells.set(key, (list = []));
    list.push(i);
  }
  let scale = 0;
  for (let i = 0; i < n; i++) {
    const k = nodes.kind[i];
    if ((k === FEATURE || k === ERROR) && Number(nodes.influence[i]) > scale) scale = Number(nodes.influence[i]);
  }
  const x = new Float32Array(n), y = new Float32Array(n), r = new Float32Array(n);
  for (const [key, list] of cells) {
    const row = Math.floor(key / Math.max(1, nPos));
    const pos = key - row * Math.max(1, nPos);
    list.sort((a, b) => (Number(nodes.kind[a] === ERROR) - Number(nodes.kind[b] === ERROR))
      || (Number(nodes.influence[b]) - Number(nodes.influence[a])) || a - b);
    const logits = row === rows - 1;
    // the logits (up to ~10, all at the last position) get room for their labels: a wider span,
    // kept inside the drawing
    const span = logits ? Math.min(Math.max(colWidth * 0.95, list.length * LOGIT_SPACING), width - ml - mr) : colWidth * 0.85;
    const { dx, dy } = spreadInCell(list.length, span, rowHeight * (logits ? 0.3 : 0.7), logits ? LOGIT_SPACING : spacing);
    let cx = colX[Math.min(colX.length - 1, Math.max(0, pos))];
    if (logits) cx = Math.max(ml + span / 2, Math.min(width - mr - span / 2, cx));
    list.forEach((i, j) => {
      x[i] = cx + dx[j];
      y[i] = rowY[row] + dy[j];
      const k = nodes.kind[i];
      r[i] = k === TOKEN || k === LOGIT ? 5 : radiusOf(Number(nodes.influence[i]), scale, 2.2, 8);
    });
  }
  return { x, y, r, width, height, colWidth, rowHeight, marginLeft: ml, marginTop: mt, rowY, colX };
}

/** Row labels, bottom to top: "tokens", "L0", ..., "logits". */
export function rowLabels(nLayers: number): string[] {
  return ["tokens", ...Array.from({ length: nLayers }, (_, i) => `L${i}`), "logits"];
}

/** The edges touching node `i` (as source or target), in edge order. */
export function incidentEdges(src: ArrayLike<number>, dst: ArrayLike<number>, i: number): number[] {
  const out: number[] = [];
  for (let e = 0; e < src.length; e++) if (src[e] === i || dst[e] === i) out.push(e);
  return out;
}

// -- the threshold sliders ---------------------------------------------------------------------

export const THRESHOLD_STEPS = 100;

/** Slider position (0..THRESHOLD_STEPS) → a threshold in [0.01, 1] (two decimals). */
export function sliderToThreshold(pos: number): number {
  const t = Math.max(1, Math.min(THRESHOLD_STEPS, Math.round(Number(pos) || 0))) / THRESHOLD_STEPS;
  return Math.round(t * 100) / 100;
}

/** Inverse of sliderToThreshold. */
export function thresholdToSlider(t: number): number {
  return Math.max(1, Math.min(THRESHOLD_STEPS, Math.round(Number(t) * THRESHOLD_STEPS)));
}

// -- supernodes ------------------------------------------------------------------------------

/** A supernode as the engine keeps it: [label, id, id, ...]. */
export type Supernode = string[];

/**
 * Group `ids` under `label`: a node belongs to one supernode at most, so the ids leave any other
 * group first (groups left empty are dropped); a group with the same label is replaced. An empty
 * label or fewer than one id is refused (returns null).
 */
export function group(supernodes: readonly Supernode[], label: string, ids: readonly string[]): Supernode[] | null {
  const name = label.trim();
  const members = Array.from(new Set(ids));
  if (!name || members.length < 1) return null;
  const taken = new Set(members);
  const out: Supernode[] = [];
  for (const sn of supernodes) {
    if (sn[0] === name) continue;
    const rest = sn.slice(1).filter((x) => !taken.has(x));
    if (rest.length) out.push([sn[0], ...rest]);
  }
  out.push([name, ...members]);
  return out;
}

/** Remove the supernode at `index`. */
export function ungroup(supernodes: readonly Supernode[], index: number): Supernode[] {
  return supernodes.filter((_, i) => i !== index);
}

/** Node id → index of its supernode. */
export function membership(supernodes: readonly Supernode[]): Map<string, number> {
  const m = new Map<string, number>();
  supernodes.forEach((sn, j) => sn.slice(1).forEach((id) => m.set(id, j)));
  return m;
}

/** Bounding box (padded) of the drawn members of a group, or null when none is drawn. */
export function groupBox(members: readonly number[], x: ArrayLike<number>, y: ArrayLike<number>, r: ArrayLike<number>,
  pad = 4): { x: number; y: number; w: number; h: number } | null {
  if (!members.length) return null;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const i of members) {
    x0 = Math.min(x0, x[i] - r[i]);
    y0 = Math.min(y0, y[i] - r[i]);
    x1 = Math.max(x1, x[i] + r[i]);
    y1 = Math.max(y1, y[i] + r[i]);
  }
  return { x: x0 - pad, y: y0 - pad, w: x1 - x0 + 2 * pad, h: y1 - y0 + 2 * pad };
}

/** Fill colours of supernode groups, cycled. */
export const GROUP_COLORS = ["#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#0072b2", "#f0e442", "#999999"];

// -- interventions -----------------------------------------------------------------------------

/** The factor an edit multiplies activations by: 0 to zero, k to scale ×k (finite), else an error text. */
export function editFactor(op: string, text: string): number | string {
  if (op === "zero") return 0;
  if (op !== "scale") return `unknown edit ${op}: zero or scale`;
  const v = Number(String(text).trim());
  if (!String(text).trim() || !Number.isFinite(v)) return `the scale factor must be a finite number, not "${text}"`;
  return v;
}

/** `{id: factor}` for the selected nodes that can be edited (features and errors). */
export function editNodes(selected: readonly string[], kindOf: (id: string) => number | undefined, factor: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const id of selected) {
    const k = kindOf(id);
    if (k === FEATURE || k === ERROR) out[id] = factor;
  }
  return out;
}

// -- exemplar text -----------------------------------------------------------------------------

/** An exemplar window's tokens as text segments; the token at `position` is the hot one. */
export function exemplarSegments(tokens: readonly string[], position: number, context = 12): { text: string; hot: boolean }[] {
  const lo = Math.max(0, position - context), hi = Math.min(tokens.length, position + 4);
  const out: { text: string; hot: boolean }[] = [];
  if (lo > 0) out.push({ text: "…", hot: false });
  if (position > lo) out.push({ text: tokens.slice(lo, position).join(""), hot: false });
  if (position >= 0 && position < tokens.length) out.push({ text: tokens[position], hot: true });
  if (hi > position + 1) out.push({ text: tokens.slice(position + 1, hi).join(""), hot: false });
  if (hi < tokens.length) out.push({ text: "…", hot: false });
  return out;
}
