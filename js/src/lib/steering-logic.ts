// Pure logic of the steering panel (no DOM): slider maths, formatting, debouncing and
// the latest-request bookkeeping that drops replies of superseded requests.

/** One steering direction as synced from the kernel (vectors stay in Python). */
export interface Direction {
  name: string;
  layer: number;
  kind: string;
  min: number;
  max: number;
  strength: number;
}

/** Largest number <= x of the form {1, 2, 5} x 10^k (x > 0). */
export function niceFloor(x: number): number {
  if (!(x > 0) || !Number.isFinite(x)) return 1;
  const e = Math.floor(Math.log10(x));
  const base = Math.pow(10, e);
  for (const m of [5, 2, 1]) {
    if (m * base <= x * (1 + 1e-9)) return roundSig(m * base);
  }
  return roundSig(base / 2);
}

function roundSig(x: number): number {
  return Number(x.toPrecision(12));
}

/**
 * Step for a slider over [min, max] with about `target` steps: a nice number, adjusted so
 * that zero is exactly reachable from `min` when the range straddles it.
 */
export function sliderStep(min: number, max: number, target = 200): number {
  const span = max - min;
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const base = niceFloor(span / target);
  if (min < 0 && max > 0) {
    const k = Math.max(1, Math.round(-min / base));
    return roundSig(-min / k);
  }
  return base;
}

/** Number of decimals needed to show multiples of `step` exactly (at most 8). */
export function stepDecimals(step: number): number {
  if (!(step > 0) || !Number.isFinite(step)) return 0;
  for (let d = 0; d <= 8; d++) {
    const s = step * Math.pow(10, d);
    if (Math.abs(s - Math.round(s)) < 1e-6 * Math.max(1, s)) return d;
  }
  return 8;
}

/** Clamp to [min, max], snap to the grid min + k*step, and round away float noise (no -0). */
export function snap(value: number, min: number, max: number, step: number): number {
  if (!Number.isFinite(value)) return 0;
  let v = Math.min(max, Math.max(min, value));
  if (step > 0) v = min + Math.round((v - min) / step) * step;
  v = Math.min(max, Math.max(min, v));
  const d = stepDecimals(step);
  const out = Number(v.toFixed(Math.min(d + 2, 12)));
  return out === 0 ? 0 : out;
}

/** A strength as shown in the readout, with the decimals the slider step needs. */
export function formatStrength(value: number, step: number): string {
  if (!Number.isFinite(value)) return String(value);
  const s = value.toFixed(stepDecimals(step));
  return /^-0(\.0*)?$/.test(s) ? s.slice(1) : s;
}

/** Milliseconds for the status line. */
export function formatMs(ms: number): string {
  return `${Math.max(0, Math.round(ms))} ms`;
}

export type Phase = "idle" | "generating" | "done" | "cancelled" | "error";

/** The status line's text. */
export function statusText(phase: Phase, ms = 0): string {
  switch (phase) {
    case "generating": return "generating…";
    case "done": return `done in ${formatMs(ms)}`;
    case "cancelled": return "cancelled";
    case "error": return "error";
    default: return "";
  }
}

/** Strengths by direction name. */
export function strengthsOf(dirs: Direction[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of dirs) out[d.name] = d.strength;
  return out;
}

/** A copy of `dirs` with strengths taken from `strengths` (missing names keep theirs). */
export function withStrengths(dirs: Direction[], strengths: Record<string, number>): Direction[] {
  return dirs.map((d) => (d.name in strengths ? { ...d, strength: strengths[d.name] } : { ...d }));
}

/** All strengths set to zero. */
export function zeroStrengths(dirs: Direction[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of dirs) out[d.name] = 0;
  return out;
}

/** What identifies the rows (everything except the strengths). */
export function structureKey(dirs: Direction[]): string {
  return JSON.stringify(dirs.map((d) => [d.name, d.layer, d.kind, d.min, d.max]));
}

/**
 * Compare directions coming from the kernel with what the view shows: `rebuild` when rows
 * were added, removed or re-ranged; `changed` lists names whose strength differs from the
 * local one (a change made in Python, which needs a rerun).
 */
export function diffDirections(shown: Direction[], incoming: Direction[], local: Record<string, number>): { rebuild: boolean; changed: string[] } {
  const rebuild = structureKey(shown) !== structureKey(incoming);
  const changed = incoming.filter((d) => local[d.name] !== d.strength).map((d) => d.name);
  return { rebuild, changed };
}

/** True when two strength maps hold the same values for the same names. */
export function sameStrengths(a: Record<string, number>, b: Record<string, number>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => k in b && a[k] === b[k]);
}

/**
 * Which request's replies may touch the view: only the latest. `start(id)` returns the
 * previous in-flight id (to cancel); replies for any other id are stale and dropped.
 */
export class LatestRequest {
  private current: number | null = null;

  start(id: number): number | null {
    const prev = this.current;
    this.current = id;
    return prev === id ? null : prev;
  }

  /** The request in flight, if any. */
  get inFlight(): number | null {
    return this.current;
  }

  isCurrent(id: number): boolean {
    return this.current === id;
  }

  /** Mark `id` finished; false (and nothing changes) when it was superseded. */
  finish(id: number): boolean {
    if (this.current !== id) return false;
    this.current = null;
    return true;
  }
}

export interface Timers {
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (t: any) => void;
}

export interface Debounced<A extends unknown[]> {
  (...args: A): void;
  /** Drop a pending call. */
  cancel(): void;
  /** Run a pending call now (no-op when none is pending). */
  flush(): void;
  readonly pending: boolean;
}

/** Trailing-edge debounce with cancel/flush (timers injectable for tests). */
export function debounced<A extends unknown[]>(fn: (...args: A) => void, ms: number,
  timers: Timers = { setTimeout: (f, t) => setTimeout(f, t), clearTimeout: (t) => clearTimeout(t) }): Debounced<A> {
  let handle: unknown;
  let args: A | null = null;
  const fire = () => {
    handle = undefined;
    const a = args;
    args = null;
    if (a) fn(...a);
  };
  const d = ((...a: A) => {
    args = a;
    if (handle !== undefined) timers.clearTimeout(handle);
    handle = timers.setTimeout(fire, ms);
  }) as Debounced<A>;
  d.cancel = () => {
    if (handle !== undefined) timers.clearTimeout(handle);
    handle = undefined;
    args = null;
  };
  d.flush = () => {
    if (handle === undefined) return;
    timers.clearTimeout(handle);
    fire();
  };
  Object.defineProperty(d, "pending", { get: () => handle !== undefined });
  return d;
}
