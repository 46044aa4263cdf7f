// Pure logic of the LogitLens widget (no DOM): grid indexing, the cell colour value,
// token truncation, top-k rows of a cell and the pinned cell. Unit-tested in js/tests/lens.test.ts.
import { rgb, seqColor } from "./dom";

/** The arrays of a lens reply that the logic needs (flat, row-major [layer, pos, ...]). */
export interface LensGrid {
  layers: ArrayLike<number>;
  positions: ArrayLike<number>;
  top_ids: ArrayLike<number>; // [L, P, k]
  top_probs: ArrayLike<number>; // [L, P, k]
  k: number;
  targets: string[];
  target_probs: ArrayLike<number>; // [L, P, T]
  target_ranks: ArrayLike<number>; // [L, P, T]
  kl: ArrayLike<number>; // [L, P]
  id_text: Record<string, string>;
}

export interface TopRow { rank: number; id: number; token: string; prob: number }

/** Index into a flat [L, P, n] array. */
export function flat(i: number, j: number, nP: number, n: number, r = 0): number {
  return (i * nP + j) * n + r;
}

/** Top-k rows of cell (layer index i, position index j). */
export function cellTopK(g: LensGrid, i: number, j: number): TopRow[] {
  const nP = g.positions.length;
  const rows: TopRow[] = [];
  for (let r = 0; r < g.k; r++) {
    const at = flat(i, j, nP, g.k, r);
    const id = Number(g.top_ids[at]);
    rows.push({ rank: r + 1, id, token: g.id_text[String(id)] ?? `#${id}`, prob: Number(g.top_probs[at]) });
  }
  return rows;
}

/** The value a cell is coloured by: the top token's probability, or a target's. */
export function colorValue(g: LensGrid, i: number, j: number, colorBy: string): number {
  const nP = g.positions.length;
  const t = colorBy === "top" ? -1 : g.targets.indexOf(colorBy);
  if (t < 0) return Number(g.top_probs[flat(i, j, nP, g.k)]);
  return Number(g.target_probs[flat(i, j, nP, g.targets.length, t)]);
}

/** A valid colour-by choice for these targets ("top" when the target is gone). */
export function normalizeColorBy(colorBy: string, targets: string[]): string {
  return colorBy !== "top" && targets.includes(colorBy) ? colorBy : "top";
}

/** Cell background for a probability in [0, 1]. */
export function cellColor(p: number): string {
  return rgb(seqColor(Math.sqrt(Math.max(0, Math.min(1, p)))));
}

/** Dark text on light cells, white on dark ones. */
export function cellTextColor(p: number): string {
  return Math.sqrt(Math.max(0, p)) > 0.6 ? "#fff" : "#111";
}

/** A token shown in a small cell: whitespace made visible, at most `n` characters (… when cut). */
export function truncateToken(text: string, n = 6): string {
  const t = text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
  const chars = Array.from(t);
  return chars.length <= n ? t : chars.slice(0, Math.max(1, n - 1)).join("") + "…";
}

/** Row order on screen: the last layer on top. */
export function displayRows(nLayers: number): number[] {
  return Array.from({ length: nLayers }, (_, i) => nLayers - 1 - i);
}

/** The pinned [layer, position] if it names a cell of this grid, else null. */
export function pinnedCell(pinned: unknown, g: Pick<LensGrid, "layers" | "positions">): [number, number] | null {
  if (!Array.isArray(pinned) || pinned.length !== 2) return null;
  const [L, p] = pinned.map(Number);
  const i = Array.prototype.indexOf.call(g.layers, L);
  const j = Array.prototype.indexOf.call(g.positions, p);
  return i >= 0 && j >= 0 ? [i, j] : null;
}

/** Clicking the pinned cell again unpins it. */
export function togglePin(current: unknown, layer: number, pos: number): number[] {
  if (Array.isArray(current) && current.length === 2 && Number(current[0]) === layer && Number(current[1]) === pos) return [];
  return [layer, pos];
}

/** Probability as a short percentage. */
export function formatProb(p: number): string {
  if (!Number.isFinite(p)) return String(p);
  if (p >= 0.995) return "100%";
  if (p >= 0.1) return `${(p * 100).toFixed(0)}%`;
  if (p >= 0.001) return `${(p * 100).toFixed(1)}%`;
  return p === 0 ? "0%" : `${(p * 100).toExponential(0)}%`;
}
