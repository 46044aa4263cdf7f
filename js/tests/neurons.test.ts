import { test } from "node:test";
import assert from "node:assert/strict";
import * as L from "../src/lib/neurons-logic";

const base: L.ViewState = {
  prompt: "The cat", layer: 2, top_n: 24, top_k: 10, mode: "zero", factor: 0, ablated: [3, 7], selected_neuron: 5,
  color_by: "activation", target: "",
};

test("toggleIndex adds and removes, keeping the set sorted and unique", () => {
  assert.deepEqual(L.toggleIndex([], 4), [4]);
  assert.deepEqual(L.toggleIndex([9, 1], 4), [1, 4, 9]);
  assert.deepEqual(L.toggleIndex([1, 4, 9], 4), [1, 9]);
  assert.deepEqual(L.toggleIndex(L.toggleIndex([2], 7), 7), [2]);
  const orig = [1, 2];
  L.toggleIndex(orig, 3);
  assert.deepEqual(orig, [1, 2], "input not mutated");
});

test("normalizeIndices sorts, dedupes and drops non-numbers", () => {
  assert.deepEqual(L.normalizeIndices([5, 1, 5, 3]), [1, 3, 5]);
  assert.deepEqual(L.normalizeIndices(null), []);
  assert.deepEqual(L.normalizeIndices([NaN as number, 2]), [2]);
});

test("toggleSelected selects and clears", () => {
  assert.equal(L.toggleSelected(-1, 4), 4);
  assert.equal(L.toggleSelected(4, 4), -1);
  assert.equal(L.toggleSelected(4, 6), 6);
});

test("updateState: a layer change clears ablations and selection unless given", () => {
  const s = L.updateState(base, { layer: 3 });
  assert.equal(s.layer, 3);
  assert.deepEqual(s.ablated, []);
  assert.equal(s.selected_neuron, -1);
  const kept = L.updateState(base, { layer: 3, ablated: [8, 1], selected_neuron: 2 });
  assert.deepEqual(kept.ablated, [1, 8]);
  assert.equal(kept.selected_neuron, 2);
  const same = L.updateState(base, { layer: 2, factor: 0.5 });
  assert.deepEqual(same.ablated, [3, 7]);
  assert.equal(same.factor, 0.5);
  assert.equal(base.factor, 0, "input not mutated");
});

test("changedKeys compares arrays by value", () => {
  assert.deepEqual(L.changedKeys(base, { ...base, ablated: [3, 7] }), []);
  assert.deepEqual(L.changedKeys(base, { ...base, ablated: [3], mode: "scale" }), ["mode", "ablated"]);
});

test("readState reads traits with defaults and normalizes", () => {
  const traits: Record<string, any> = { prompt: "x", layer: 1, ablated: [4, 2, 4], mode: "bogus" };
  const s = L.readState((k) => traits[k]);
  assert.equal(s.prompt, "x");
  assert.equal(s.layer, 1);
  assert.deepEqual(s.ablated, [2, 4]);
  assert.equal(s.mode, "zero");
  assert.equal(s.top_n, 24);
  assert.equal(s.selected_neuron, -1);
  assert.equal(s.color_by, "activation");  // anything but "attribution" colours by activation
  assert.equal(L.readState((k) => ({ color_by: "attribution", target: " Paris" } as any)[k]).color_by, "attribution");
  assert.equal(L.readState((k) => ({ color_by: "attribution", target: " Paris" } as any)[k]).target, " Paris");
});

test("colorLegend names what the colours show", () => {
  assert.match(L.colorLegend("activation"), /activation/);
  assert.match(L.colorLegend("attribution", "logit of ' Paris'"), /attribution to logit of ' Paris'/);
});

test("runParams carries the whole state", () => {
  const p = L.runParams(base);
  assert.deepEqual(p, { ...base, ablated: [3, 7] });
  assert.notEqual(p.ablated, base.ablated, "a copy");
});

test("parseNumber / parseCount", () => {
  assert.equal(L.parseNumber("0.5"), 0.5);
  assert.equal(L.parseNumber("-2"), -2);
  assert.equal(L.parseNumber(""), null);
  assert.equal(L.parseNumber("abc"), null);
  assert.equal(L.parseCount("12"), 12);
  assert.equal(L.parseCount("0"), null);
  assert.equal(L.parseCount("2.5"), null);
  assert.equal(L.parseCount("5000", 1536), 1536);
});

test("diverging colour scale: white at 0, blue positive, red negative, clamped", () => {
  assert.equal(L.heatColor(0, 2), "rgb(255,255,255)");
  assert.equal(L.heatColor(5, 0), "rgb(255,255,255)", "zero scale is neutral");
  const pos = L.heatColor(2, 2).match(/\d+/g)!.map(Number);
  const neg = L.heatColor(-2, 2).match(/\d+/g)!.map(Number);
  assert.ok(pos[2] > pos[0], "positive is blue");
  assert.ok(neg[0] > neg[2], "negative is red");
  assert.equal(L.heatColor(10, 2), L.heatColor(2, 2), "clamped");
  assert.equal(L.normalize(1, 4), 0.25);
  assert.equal(L.normalize(-8, 4), -1);
  assert.equal(L.normalize(NaN, 4), 0);
  assert.equal(L.textColorFor(2, 2), "#fff");
  assert.equal(L.textColorFor(0.1, 2), "#222");
});

test("maxAbs, at and column on a row-major matrix", () => {
  const m = new Float32Array([1, -5, 2, 3, 0, -1]); // 2 x 3
  assert.equal(L.maxAbs(m), 5);
  assert.equal(L.maxAbs([]), 0);
  assert.equal(L.at(m, 3, 1, 0), 3);
  assert.deepEqual(Array.from(L.column(m, 2, 3, 1)), [-5, 0]);
});

test("changeInfo: arrows, classes and percentage points", () => {
  assert.deepEqual(L.changeInfo(0.123), { arrow: "▲", cls: "up", text: "+12.3" });
  assert.deepEqual(L.changeInfo(-0.05), { arrow: "▼", cls: "down", text: "−5.0" });
  assert.deepEqual(L.changeInfo(0.002), { arrow: "▲", cls: "up", text: "+0.20" });
  assert.equal(L.changeInfo(1e-5).cls, "same");
  assert.equal(L.changeInfo(NaN).cls, "same");
});

test("formatProb", () => {
  assert.equal(L.formatProb(0.5), "50.0%");
  assert.equal(L.formatProb(0.005), "0.50%");
  assert.equal(L.formatProb(0), "0.00%");
  assert.equal(L.formatProb(1e-6), "<0.01%");
});

test("sortChanges orders by the larger probability, then id, without mutating", () => {
  const rows: L.ChangeRow[] = [
    { token: "a", id: 1, base: 0.1, cur: 0.1, delta: 0, base_rank: 2, cur_rank: 3 },
    { token: "b", id: 2, base: 0.5, cur: 0.05, delta: -0.45, base_rank: 1, cur_rank: null },
    { token: "c", id: 3, base: 0.01, cur: 0.6, delta: 0.59, base_rank: null, cur_rank: 1 },
    { token: "d", id: 0, base: 0.1, cur: 0.0, delta: -0.1, base_rank: 3, cur_rank: null },
  ];
  assert.deepEqual(L.sortChanges(rows).map((r) => r.token), ["c", "b", "d", "a"]);
  assert.equal(rows[0].token, "a");
});

test("describeSpec labels zero and scale edits", () => {
  assert.equal(L.describeSpec({ kind: "edit", site: "neurons.3", indices: [1, 5], op: "zero", value: null }), "zero neurons.3[1,5]");
  assert.equal(L.describeSpec({ kind: "edit", site: "neurons.3", indices: [2], op: "scale", value: 0.5 }), "scale ×0.5 neurons.3[2]");
  assert.equal(L.describeSpec({ kind: "edit", site: "neurons.0", indices: [0, 1, 2, 3, 4, 5, 6, 7, 8], op: "zero" }), "zero neurons.0[0,1,2,3,4,5,6,7…]");
  assert.equal(L.describeSpec({ kind: "steer", site: "resid_post.1" }), "steer resid_post.1");
});
