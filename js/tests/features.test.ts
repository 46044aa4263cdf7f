import { test } from "node:test";
import assert from "node:assert/strict";
import * as F from "../src/lib/features-logic";

test("tokenLatents: a token's positive entries of the row-major top-k arrays, largest first", () => {
  // 3 tokens, k = 3
  const idx = new Int32Array([5, 2, 9, 7, 1, 4, 3, 8, 6]);
  const val = new Float32Array([3, 1.5, 0, 2, 2, 0.5, 0, 0, 0]);
  assert.deepEqual(F.tokenLatents(idx, val, 3, 0), [{ latent: 5, act: 3 }, { latent: 2, act: 1.5 }]);
  assert.deepEqual(F.tokenLatents(idx, val, 3, 1), [{ latent: 1, act: 2 }, { latent: 7, act: 2 }, { latent: 4, act: 0.5 }],
    "ties: lower latent first");
  assert.deepEqual(F.tokenLatents(idx, val, 3, 2), [], "nothing active");
  assert.deepEqual(F.tokenLatents(idx, val, 3, 3), [], "out of range");
  assert.deepEqual(F.tokenLatents(idx, val, 3, -1), []);
  assert.deepEqual(F.tokenLatents(idx, val, 0, 0), []);
  assert.deepEqual(F.tokenLatents([1], [NaN], 1, 0), [], "NaN is not active");
});

test("setEdit: add, change in place, remove; scale takes the factor", () => {
  let e: F.Edit[] = [];
  e = F.setEdit(e, 4, "zero", 3);
  assert.deepEqual(e, [{ latent: 4, op: "zero", value: null }]);
  e = F.setEdit(e, 9, "scale", 2.5);
  assert.deepEqual(e, [{ latent: 4, op: "zero", value: null }, { latent: 9, op: "scale", value: 2.5 }]);
  const before = e;
  e = F.setEdit(e, 4, "scale", 0.5);
  assert.deepEqual(e.map((x) => [x.latent, x.op, x.value]), [[4, "scale", 0.5], [9, "scale", 2.5]], "keeps its place");
  assert.deepEqual(before[0], { latent: 4, op: "zero", value: null }, "the old list is not mutated");
  e = F.setEdit(e, 9, "", 1);
  assert.deepEqual(e, [{ latent: 4, op: "scale", value: 0.5 }]);
  assert.deepEqual(F.setEdit(e, 1, "scale", NaN), [...e, { latent: 1, op: "scale", value: 1 }], "a bad factor scales by 1");
  assert.deepEqual(F.setEdit([], 3, "", 2), [], "turning off an absent toggle is a no-op");
});

test("editsFrom / editOf / sameEdits", () => {
  const raw = [{ latent: 3, op: "zero", value: 7 }, { latent: 5, op: "scale", value: 2 }, { latent: 1.5, op: "zero" },
    { latent: 2, op: "set", value: 1 }, null, "x", { latent: 8, op: "scale" }];
  const e = F.editsFrom(raw);
  assert.deepEqual(e, [{ latent: 3, op: "zero", value: null }, { latent: 5, op: "scale", value: 2 }, { latent: 8, op: "scale", value: null }]);
  assert.deepEqual(F.editsFrom(undefined), []);
  assert.equal(F.editOf(e, 5)?.value, 2);
  assert.equal(F.editOf(e, 6), null);
  assert.ok(F.sameEdits(e, F.editsFrom(raw)));
  assert.ok(!F.sameEdits(e, e.slice(1)));
  assert.ok(!F.sameEdits(e, F.setEdit(e, 5, "scale", 3)));
});

test("edit labels", () => {
  assert.equal(F.editLabel(null), "off");
  assert.equal(F.editLabel({ latent: 1, op: "zero", value: null }), "zeroed");
  assert.equal(F.editLabel({ latent: 1, op: "scale", value: 4 }), "×4");
  assert.equal(F.editLabel({ latent: 1, op: "scale", value: 1 / 3 }), "×0.3333");
  assert.equal(F.describeEdits([]), "none");
  assert.equal(F.describeEdits([{ latent: 3, op: "zero", value: null }, { latent: 7, op: "scale", value: -2 }]), "#3 zeroed, #7 ×-2");
});

test("stepLatent wraps; parseLatent accepts integers in range only", () => {
  assert.equal(F.stepLatent(0, -1, 64), 63);
  assert.equal(F.stepLatent(63, 1, 64), 0);
  assert.equal(F.stepLatent(10, 1, 64), 11);
  assert.equal(F.stepLatent(5, -130, 64), 3);
  assert.equal(F.stepLatent(3, 1, 0), 0);
  assert.equal(F.parseLatent("12", 64), 12);
  assert.equal(F.parseLatent(" 0 ", 64), 0);
  for (const bad of ["", "  ", "64", "-1", "1.5", "abc"]) assert.equal(F.parseLatent(bad, 64), null, bad);
  assert.equal(F.latentTitle(5), "Latent 5");
  assert.equal(F.latentTitle(5, "French"), "Latent 5 · French");
});

test("densityText: percent and log10, unknown and never active", () => {
  assert.equal(F.densityText(0.0321), "3.21% of tokens (log10 −1.49)");
  assert.equal(F.densityText(0.25), "25.0% of tokens (log10 −0.60)");
  assert.equal(F.densityText(1e-6), "1.0e-4% of tokens (log10 −6.00)");
  assert.equal(F.densityText(0), "never active (0% of tokens)");
  assert.equal(F.densityText(null), "–");
  assert.equal(F.densityText(NaN), "–");
});

test("activeCounts empties the zero bin (and, optionally, the negative side) in a copy", () => {
  const counts = new Float64Array([1, 2, 100, 3, 4]);
  const out = F.activeCounts(counts, 2);
  assert.deepEqual(Array.from(out), [1, 2, 0, 3, 4]);
  assert.equal(counts[2], 100, "input untouched");
  assert.deepEqual(Array.from(F.activeCounts(counts, 2, true)), [0, 0, 0, 3, 4]);
  assert.deepEqual(Array.from(F.activeCounts(counts, -1)), [1, 2, 100, 3, 4], "no zero bin: unchanged");
});

test("intervalLabel, formatCos, bars", () => {
  assert.equal(F.intervalLabel(2.788, 5.577, 3, 8), "(2.79, 5.58]: 3 of 8 sampled windows");
  assert.equal(F.intervalLabel(0, 1, 0, 1), "(0.00, 1.00]: 0 of 1 sampled window");
  assert.equal(F.formatCos(0.4567), "0.46");
  assert.equal(F.formatCos(-0.1), "−0.10");
  assert.equal(F.formatCos(NaN), "–");
  assert.equal(F.maxAbs([{ score: -3 }, { score: 2 }, { score: NaN }]), 3);
  assert.equal(F.maxAbs([]), 1);
  assert.equal(F.barWidth(-3, 3, 60), 60);
  assert.equal(F.barWidth(1.5, 3, 60), 30);
  assert.equal(F.barWidth(0.0001, 3, 60), 1, "a non-zero score stays visible");
  assert.equal(F.barWidth(0, 3, 60), 0);
  assert.equal(F.barWidth(9, 3, 60), 60, "clamped");
  assert.equal(F.maxPositive(new Float32Array([0, 2, -5, NaN, 1])), 2);
  assert.equal(F.maxPositive([]), 0);
  assert.equal(F.formatFactor(2), "2");
  assert.equal(F.formatFactor(null), "?");
});
