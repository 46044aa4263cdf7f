// Pure logic of the AgentTranscript widget (no DOM): step bookkeeping, button states, the
// activation tint, argument / score formatting and which hypothesis to send on Continue.
// Unit-tested in js/tests/agent.test.ts.
import { fmt } from "./dom";

export interface ArrayPayload { data: ArrayLike<number>; shape: number[]; dtype: string }

export interface StepText {
  label: string;
  tokens: string[];
  acts: ArrayPayload | ArrayLike<number>;
  argmax: number;
  max: number | null;
}

export interface StepPayload {
  index: number;
  tool: string;
  thought: string;
  hypothesis: string;
  args: Record<string, unknown>;
  python: string;
  seconds: number;
  llm_seconds?: number;
  error: string | null;
  attempts?: number;
  summary: string;
  texts: StepText[];
  details: Record<string, any>;
}

export type Phase = "idle" | "running" | "stopping" | "stopped" | "done" | "error";

// -- steps ------------------------------------------------------------------------------------

/** Insert or replace a step by its index; the list stays sorted by index. Returns a new list. */
export function mergeStep(steps: StepPayload[], step: StepPayload): StepPayload[] {
  const out = steps.filter((s) => s.index !== step.index);
  out.push(step);
  out.sort((a, b) => a.index - b.index);
  return out;
}

/** Whether a partial reply carries a well-formed step. */
export function isStep(x: unknown): x is StepPayload {
  const s = x as StepPayload;
  return !!s && typeof s === "object" && Number.isInteger(s.index) && typeof s.tool === "string";
}

/** The values of an array payload (decoded by rpc.ts) or of a plain array. */
export function valuesOf(a: ArrayPayload | ArrayLike<number> | null | undefined): ArrayLike<number> {
  if (!a) return [];
  if ((a as ArrayPayload).data !== undefined && (a as ArrayPayload).shape !== undefined) return (a as ArrayPayload).data;
  return a as ArrayLike<number>;
}

/** (token, activation) pairs of a text; a missing activation is NaN. */
export function tokenActs(t: StepText): { text: string; act: number }[] {
  const acts = valuesOf(t.acts);
  const toks = Array.isArray(t.tokens) ? t.tokens : [];
  return toks.map((text, i) => ({ text: String(text), act: i < acts.length ? Number(acts[i]) : NaN }));
}

// -- buttons and status -------------------------------------------------------------------------

export interface Controls { run: boolean; stop: boolean; cont: boolean; edit: boolean }

/** Which buttons are enabled: nothing runs without an agent; Continue needs a transcript. */
export function controls(phase: Phase, nSteps: number, canRun: boolean): Controls {
  const busy = phase === "running" || phase === "stopping";
  return {
    run: canRun && !busy,
    stop: canRun && phase === "running",
    cont: canRun && !busy && nSteps > 0,
    edit: canRun && !busy,
  };
}

const STATUS_TEXT: Record<string, string> = {
  final: "finished with a final answer",
  forced: "finished: the final answer was forced at the step limit",
  cancelled: "stopped",
  error: "stopped on an error",
};

/** The status line under the buttons. */
export function statusText(phase: Phase, status: string, nSteps: number, maxSteps = 0): string {
  const steps = `${nSteps} step${nSteps === 1 ? "" : "s"}`;
  if (phase === "running") return `running… ${steps}` + (maxSteps > 0 ? ` (up to ${maxSteps} more per run)` : "");
  if (phase === "stopping") return `stopping after the current step… ${steps}`;
  if (phase === "stopped") return `stopped · ${steps}`;
  if (phase === "error") return `error · ${steps}`;
  const s = STATUS_TEXT[status];
  if (s) return `${s} · ${steps}`;
  return nSteps ? steps : "not run yet: press Run";
}

/**
 * The hypothesis to send with Continue: the box's text when the user edited it and it differs
 * from the agent's current hypothesis; otherwise null (continue without an edit).
 */
export function hypothesisToSend(edited: boolean, boxValue: string, current: string): string | null {
  const v = boxValue.trim();
  if (!edited || !v || v === current.trim()) return null;
  return v;
}

// -- formatting ---------------------------------------------------------------------------------

/** Compact one-line JSON of a tool's arguments, cut at `max` characters. */
export function formatArgs(args: unknown, max = 300): string {
  let s: string;
  try {
    s = JSON.stringify(args ?? {});
  } catch {
    s = String(args);
  }
  if (s === undefined) s = "{}";
  return s.length > max ? s.slice(0, max - 1) + "…" : s;
}

export interface ScoreRow { name: string; value: string; ci: string; n: string }

function num(x: unknown): number | null {
  return typeof x === "number" && Number.isFinite(x) ? x : null;
}

/**
 * Table rows for scores: `{name: {value, lo, hi, n}}` (detection and other LLM scores), or a
 * hypothesis test summary (precision, recall, f1, pearson over n_tokens).
 */
export function scoreRows(scores: Record<string, any> | null | undefined): ScoreRow[] {
  if (!scores || typeof scores !== "object") return [];
  if ("precision" in scores || "f1" in scores) {
    const n = num(scores.n_tokens);
    return ["precision", "recall", "f1", "pearson"].filter((k) => k in scores).map((k) => {
      const lo = num(scores[`${k}_lo`]);
      const hi = num(scores[`${k}_hi`]);
      const v = num(scores[k]);
      return { name: k, value: v === null ? "–" : fmt(v, 3), ci: lo !== null && hi !== null ? `${fmt(lo, 2)}–${fmt(hi, 2)}` : "",
               n: n === null ? "" : String(n) };
    });
  }
  return Object.entries(scores).map(([name, s]) => {
    const v = num(s?.value);
    const lo = num(s?.lo);
    const hi = num(s?.hi);
    return { name, value: v === null ? "–" : fmt(v, 3), ci: lo !== null && hi !== null ? `${fmt(lo, 2)}–${fmt(hi, 2)}` : "",
             n: s && s.n !== undefined && s.n !== null ? String(s.n) : "" };
  });
}

/** A tool badge's short label. */
export function toolLabel(tool: string): string {
  return tool === "user_hypothesis" ? "your hypothesis" : tool.replace(/_/g, " ");
}

// -- the tint ------------------------------------------------------------------------------------

export { actColor, actLevel, actTextColor } from "./neuron-dashboard-logic";
