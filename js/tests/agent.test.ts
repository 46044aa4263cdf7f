import { test } from "node:test";
import assert from "node:assert/strict";
import * as L from "../src/lib/agent-logic";

function step(index: number, tool = "run_texts", extra: Partial<L.StepPayload> = {}): L.StepPayload {
  return { index, tool, thought: "", hypothesis: "", args: {}, python: "", seconds: 0, error: null, summary: "",
           texts: [], details: {}, ...extra };
}

function rgbOf(s: string): number[] {
  const m = /^rgb\((\d+),(\d+),(\d+)\)$/.exec(s);
  assert.ok(m, s);
  return m!.slice(1).map(Number);
}

test("mergeStep: appends, replaces by index, keeps index order, does not mutate", () => {
  const a = [step(0), step(2)];
  const b = L.mergeStep(a, step(1, "ablate"));
  assert.deepEqual(b.map((s) => s.index), [0, 1, 2]);
  assert.equal(a.length, 2, "input list unchanged");
  const c = L.mergeStep(b, step(1, "steer"));
  assert.deepEqual(c.map((s) => [s.index, s.tool]), [[0, "run_texts"], [1, "steer"], [2, "run_texts"]]);
  assert.deepEqual(L.mergeStep([], step(5)).map((s) => s.index), [5]);
});

test("isStep: only objects with an integer index and a tool name", () => {
  assert.ok(L.isStep(step(0)));
  assert.ok(!L.isStep(null) && !L.isStep(undefined) && !L.isStep({ index: 1 }) && !L.isStep({ index: 0.5, tool: "x" }));
  assert.ok(!L.isStep({ tool: "x" }));
});

test("tokenActs: decoded array payloads and plain arrays; missing values are NaN", () => {
  const t: L.StepText = { label: "a", tokens: ["The", " cat", "<img src=x onerror=1>"],
                          acts: { data: new Float32Array([0.5, -1, 2]), shape: [3], dtype: "float32" }, argmax: 2, max: 2 };
  assert.deepEqual(L.tokenActs(t), [{ text: "The", act: 0.5 }, { text: " cat", act: -1 }, { text: "<img src=x onerror=1>", act: 2 }]);
  const short: L.StepText = { label: "b", tokens: ["x", "y"], acts: [1], argmax: 0, max: 1 };
  const pairs = L.tokenActs(short);
  assert.equal(pairs[0].act, 1);
  assert.ok(Number.isNaN(pairs[1].act));
  assert.deepEqual(L.valuesOf(null), []);
});

test("controls: no agent → nothing runs; running → only Stop; Continue needs steps", () => {
  assert.deepEqual(L.controls("idle", 0, false), { run: false, stop: false, cont: false, edit: false });
  assert.deepEqual(L.controls("idle", 0, true), { run: true, stop: false, cont: false, edit: true });
  assert.deepEqual(L.controls("running", 3, true), { run: false, stop: true, cont: false, edit: false });
  assert.deepEqual(L.controls("stopping", 3, true), { run: false, stop: false, cont: false, edit: false });
  assert.deepEqual(L.controls("stopped", 3, true), { run: true, stop: false, cont: true, edit: true });
  assert.deepEqual(L.controls("done", 5, true), { run: true, stop: false, cont: true, edit: true });
  assert.deepEqual(L.controls("error", 1, true), { run: true, stop: false, cont: true, edit: true });
});

test("statusText: phases, final statuses and step counts", () => {
  assert.equal(L.statusText("idle", "", 0), "not run yet: press Run");
  assert.equal(L.statusText("running", "", 1, 12), "running… 1 step (up to 12 more per run)");
  assert.equal(L.statusText("stopping", "", 2), "stopping after the current step… 2 steps");
  assert.equal(L.statusText("stopped", "", 2), "stopped · 2 steps");
  assert.equal(L.statusText("done", "final", 4), "finished with a final answer · 4 steps");
  assert.match(L.statusText("done", "forced", 4), /forced/);
  assert.equal(L.statusText("idle", "cancelled", 3), "stopped · 3 steps");
  assert.equal(L.statusText("idle", "", 3), "3 steps");
});

test("hypothesisToSend: only an edited, non-empty, changed hypothesis is sent", () => {
  assert.equal(L.hypothesisToSend(false, "new idea", "old"), null);
  assert.equal(L.hypothesisToSend(true, "  new idea ", "old"), "new idea");
  assert.equal(L.hypothesisToSend(true, "old ", "old"), null, "unchanged");
  assert.equal(L.hypothesisToSend(true, "   ", "old"), null, "empty");
});

test("formatArgs: compact JSON, cut with an ellipsis", () => {
  assert.equal(L.formatArgs({ texts: ["a", "b"] }), '{"texts":["a","b"]}');
  assert.equal(L.formatArgs(undefined), "{}");
  const long = L.formatArgs({ t: "x".repeat(500) }, 50);
  assert.equal(long.length, 50);
  assert.ok(long.endsWith("…"));
  const cyclic: any = {};
  cyclic.self = cyclic;
  assert.equal(L.formatArgs(cyclic), "[object Object]");
});

test("scoreRows: LLM scores with intervals, and hypothesis-test summaries", () => {
  const rows = L.scoreRows({ detection: { value: 0.75, lo: 0.5, hi: 0.9, n: 20 }, detection_f1: { value: null, lo: null, hi: null, n: 0 } });
  assert.deepEqual(rows, [
    { name: "detection", value: "0.750", ci: "0.50–0.90", n: "20" },
    { name: "detection_f1", value: "–", ci: "", n: "0" },
  ]);
  const h = L.scoreRows({ precision: 0.5, precision_lo: 0.2, precision_hi: 0.8, recall: 1, recall_lo: 0.6, recall_hi: 1,
                          f1: 0.667, pearson: null, n_tokens: 1234, tp: 3 });
  assert.deepEqual(h.map((r) => r.name), ["precision", "recall", "f1", "pearson"]);
  assert.deepEqual(h[0], { name: "precision", value: "0.500", ci: "0.20–0.80", n: "1234" });
  assert.equal(h[3].value, "–");
  assert.equal(h[2].ci, "");
  assert.deepEqual(L.scoreRows(null), []);
  assert.deepEqual(L.scoreRows({}), []);
});

test("toolLabel", () => {
  assert.equal(L.toolLabel("score_explanation"), "score explanation");
  assert.equal(L.toolLabel("user_hypothesis"), "your hypothesis");
});

test("actColor: white at zero, orange positive, blue negative, clamped; text turns white on strong tints", () => {
  assert.deepEqual(rgbOf(L.actColor(0, 4)), [255, 255, 255]);
  assert.deepEqual(rgbOf(L.actColor(4, 4)), [245, 130, 32]);
  assert.deepEqual(rgbOf(L.actColor(-8, 4)), [60, 120, 230]);
  assert.deepEqual(rgbOf(L.actColor(2, 4)), [250, 193, 144]);
  assert.deepEqual(rgbOf(L.actColor(NaN, 4)), [255, 255, 255]);
  assert.deepEqual(rgbOf(L.actColor(3, 0)), [255, 255, 255]);
  assert.equal(L.actTextColor(3.9, 4), "#fff");
  assert.equal(L.actTextColor(1, 4), "#111");
  assert.equal(L.actLevel(-2, 4), -0.5);
});
