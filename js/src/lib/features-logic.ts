// Pure logic of the FeatureList and FeatureDashboard widgets (no DOM): a token's active latents,
// the toggle state (zero / scale edits per latent), latent navigation, and the texts and numbers
// the panels show. Unit-tested in js/tests/features.test.ts.
import { fmt } from "./dom";

// -- a token's latents --------------------------------------------------------------------------

export interface LatentAct { latent: number; act: number }

/**
 * The active latents of token `pos` from the per-token top-k arrays (`idx` / `val`, row-major
 * [seq, k], each row descending): entries with a positive activation, largest first.
 */
export function tokenLatents(idx: ArrayLike<number>, val: ArrayLike<number>, k: number, pos: number): LatentAct[] {
  const out: LatentAct[] = [];
  if (!(k > 0) || pos < 0 || (pos + 1) * k > idx.length || (pos + 1) * k > val.length) return out;
  for (let j = 0; j < k; j++) {
    const a = Number(val[pos * k + j]);
    if (a > 0) out.push({ latent: Number(idx[pos * k + j]), act: a });
  }
  return out.sort((a, b) => b.act - a.act || a.latent - b.latent);
}

// -- toggles ----------------------------------------------------------------------------------------

export type EditOp = "zero" | "scale";
export interface Edit { latent: number; op: EditOp; value: number | null }

/** The toggle of a latent, or null when it is off. */
export function editOf(edits: Edit[], latent: number): Edit | null {
  return edits.find((e) => e.latent === latent) ?? null;
}

/**
 * Edits with latent `latent` set to `op` ("" turns it off). A latent keeps its place in the
 * list when its op changes; a new one goes last. Scale takes `factor` (non-finite: 1).
 */
export function setEdit(edits: Edit[], latent: number, op: EditOp | "", factor: number): Edit[] {
  const value = op === "scale" ? (Number.isFinite(factor) ? factor : 1) : null;
  const i = edits.findIndex((e) => e.latent === latent);
  if (op === "") return edits.filter((e) => e.latent !== latent);
  const next: Edit = { latent, op, value };
  if (i < 0) return [...edits.map((e) => ({ ...e })), next];
  return edits.map((e, j) => (j === i ? next : { ...e }));
}

/** Edits from the synced trait (anything malformed is dropped). */
export function editsFrom(v: unknown): Edit[] {
  if (!Array.isArray(v)) return [];
  const out: Edit[] = [];
  for (const e of v) {
    if (!e || typeof e !== "object") continue;
    const { latent, op, value } = e as Record<string, unknown>;
    if (typeof latent !== "number" || !Number.isInteger(latent) || (op !== "zero" && op !== "scale")) continue;
    out.push({ latent, op, value: op === "scale" && typeof value === "number" ? value : null });
  }
  return out;
}

export function sameEdits(a: Edit[], b: Edit[]): boolean {
  return a.length === b.length && a.every((e, i) => e.latent === b[i].latent && e.op === b[i].op && e.value === b[i].value);
}

/** A factor as typed (integers without decimals, others with up to 4 significant digits). */
export function formatFactor(f: number | null): string {
  if (f === null || !Number.isFinite(f)) return "?";
  return String(Number(f.toPrecision(4)));
}

/** What a toggle does, for its label: "off", "zeroed", "×4". */
export function editLabel(e: Edit | null): string {
  if (!e) return "off";
  return e.op === "zero" ? "zeroed" : `×${formatFactor(e.value)}`;
}

/** All toggles in one line: "#3 zeroed, #7 ×4" (or "none"). */
export function describeEdits(edits: Edit[]): string {
  if (!edits.length) return "none";
  return edits.map((e) => `#${e.latent} ${editLabel(e)}`).join(", ");
}

// -- latents ----------------------------------------------------------------------------------------

/** The latent `delta` away, wrapping around [0, n). */
export function stepLatent(latent: number, delta: number, n: number): number {
  if (!(n > 0)) return 0;
  return (((latent + delta) % n) + n) % n;
}

/** Parse a latent index typed in a box: an integer in [0, n), else null. */
export function parseLatent(text: string, n: number): number | null {
  if (text.trim() === "") return null;
  const v = Number(text);
  return Number.isInteger(v) && v >= 0 && v < n ? v : null;
}

/** "Latent 12" plus its label when it has one. */
export function latentTitle(latent: number, label = ""): string {
  return label ? `Latent ${latent} · ${label}` : `Latent ${latent}`;
}

// -- numbers shown --------------------------------------------------------------------------------

/** A density (fraction of tokens active) as "3.21% of tokens (log10 −1.49)"; "–" when unknown. */
export function densityText(frac: number | null | undefined): string {
  if (frac === null || frac === undefined || !Number.isFinite(frac)) return "–";
  if (frac <= 0) return "never active (0% of tokens)";
  const pct = frac * 100;
  const p = pct >= 10 ? pct.toFixed(1) : pct >= 0.01 ? pct.toFixed(2) : pct.toExponential(1);
  return `${p}% of tokens (log10 ${Math.log10(frac).toFixed(2).replace("-", "−")})`;
}

/**
 * The histogram of non-zero activations: counts with the exact-zero bin (index `zero`) and, for
 * `positiveOnly`, every negative bin emptied (a copy; a sparse latent is zero on most tokens).
 */
export function activeCounts(counts: ArrayLike<number>, zero: number, positiveOnly = false): Float64Array {
  const out = Float64Array.from(counts as ArrayLike<number>, Number);
  if (zero >= 0 && zero < out.length) {
    out[zero] = 0;
    if (positiveOnly) for (let i = 0; i < zero; i++) out[i] = 0;
  }
  return out;
}

/** The heading of an activation interval: "(2.79, 5.58]: 3 of 8 sampled windows". */
export function intervalLabel(lo: number, hi: number, count: number, n: number): string {
  return `(${fmt(lo, 2)}, ${fmt(hi, 2)}]: ${count} of ${n} sampled window${n === 1 ? "" : "s"}`;
}

/** A cosine with two decimals (−1 … 1). */
export function formatCos(c: number): string {
  return Number.isFinite(c) ? c.toFixed(2).replace("-", "−") : "–";
}

/** The largest |score| of some rows (1 when there is none), for bar lengths. */
export function maxAbs(rows: { score: number }[]): number {
  let m = 0;
  for (const r of rows) if (Number.isFinite(r.score)) m = Math.max(m, Math.abs(r.score));
  return m > 0 ? m : 1;
}

/** A bar's width in px for a score under a scale (at least 1 px for a non-zero score). */
export function barWidth(score: number, scale: number, width: number): number {
  if (!Number.isFinite(score) || !(scale > 0) || score === 0) return 0;
  return Math.max(1, Math.min(width, (Math.abs(score) / scale) * width));
}

/** The largest value of an array (0 when empty or all non-positive / non-finite). */
export function maxPositive(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const v = Number(a[i]);
    if (Number.isFinite(v) && v > m) m = v;
  }
  return m;
}
