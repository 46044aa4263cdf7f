import { test } from "node:test";
import assert from "node:assert/strict";
import * as L from "../src/lib/patching-logic";

function rgbOf(css: string): number[] {
  const m = /rgb\((\d+),(\d+),(\d+)\)/.exec(css);
  assert.ok(m, css);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

test("colour scale is centred at 0: white at 0, blue for positive, red for negative", () => {
  assert.deepEqual(rgbOf(L.cellColor(0, 1)), [255, 255, 255]);
  const [r1, , b1] = rgbOf(L.cellColor(1, 1));
  assert.ok(b1 > r1 + 100, "1 (clean) is blue");
  const [r2, , b2] = rgbOf(L.cellColor(-1, 1));
  assert.ok(r2 > b2 + 100, "-1 is red");
  // symmetric intensity: ±v are equally far from white
  const dist = (c: number[]) => c.reduce((s, x) => s + (255 - x), 0);
  assert.ok(Math.abs(dist(rgbOf(L.cellColor(0.5, 1))) - dist(rgbOf(L.cellColor(-0.5, 1)))) < 60);
  // monotone in |v|
  assert.ok(dist(rgbOf(L.cellColor(0.8, 1))) > dist(rgbOf(L.cellColor(0.3, 1))));
  // out-of-range values clamp, NaN is white
  assert.equal(L.cellColor(5, 1), L.cellColor(1, 1));
  assert.equal(L.cellColor(NaN, 1), L.cellColor(0, 1));
});

test("scaleHalfWidth is at least 1 and widens for overshooting values", () => {
  assert.equal(L.scaleHalfWidth([0, 0.2, 0.9]), 1);
  assert.equal(L.scaleHalfWidth([0.1, -2.5, 1.3]), 2.5);
  assert.equal(L.scaleHalfWidth(new Float32Array([NaN, 0.5])), 1);
  assert.equal(L.scaleHalfWidth([]), 1);
  assert.equal(L.toUnit(1.25, 2.5), 0.5);
  assert.equal(L.toUnit(-10, 2.5), -1);
  assert.equal(L.toUnit(1, 0), 0);
  assert.equal(L.inkColor(0.9, 1), "#fff");
  assert.equal(L.inkColor(0.1, 1), "#222");
});

test("gridLayout fits the columns and clamps the cell size", () => {
  const lay = L.gridLayout(30, 20, 744, 10, 36, 44, 64);
  assert.equal(lay.cell, 35);
  assert.equal(lay.width, 44 + 20 * 35);
  assert.equal(lay.height, 64 + 30 * 35);
  assert.equal(L.gridLayout(2, 3, 1000).cell, 36, "few columns: max cell");
  assert.equal(L.gridLayout(2, 500, 700).cell, 10, "many columns: min cell (scrolls)");
  assert.equal(L.gridLayout(2, 0, 700).cell, 36);
});

test("cellAt hit-tests points to [row, col] and rejects the label margins", () => {
  const lay = L.gridLayout(30, 20, 744, 10, 36, 44, 64); // cell 35
  assert.deepEqual(L.cellAt(lay, 44, 64), [0, 0]);
  assert.deepEqual(L.cellAt(lay, 44 + 34.9, 64 + 34.9), [0, 0]);
  assert.deepEqual(L.cellAt(lay, 44 + 35, 64), [0, 1]);
  assert.deepEqual(L.cellAt(lay, 44 + 19 * 35 + 1, 64 + 29 * 35 + 1), [29, 19]);
  assert.equal(L.cellAt(lay, 43, 100), null);
  assert.equal(L.cellAt(lay, 100, 63), null);
  assert.equal(L.cellAt(lay, 44 + 20 * 35, 100), null);
  assert.equal(L.cellAt(lay, 100, 64 + 30 * 35), null);
});

test("labelStride thins labels on small cells; cellIndex finds a cell by ids", () => {
  assert.equal(L.labelStride(20), 1);
  assert.equal(L.labelStride(10, 12), 2);
  assert.equal(L.labelStride(4, 12), 3);
  assert.equal(L.labelStride(0), 1);
  assert.equal(L.cellIndex([0, 2, 4], [3, 5], 2, 5), 3);
  assert.equal(L.cellIndex(new Int32Array([0, 1]), new Int32Array([7, 8, 9]), 1, 7), 3);
  assert.equal(L.cellIndex([0, 1], [7], 3, 7), -1);
});

test("columnLabels: tokens for positions, H/N indices for heads and neurons", () => {
  const toks = ["<s>", "The", " cat"];
  assert.deepEqual(L.columnLabels("position", [0, 2], toks), ["<s>", " cat"]);
  assert.deepEqual(L.columnLabels("position", [5], toks), ["pos 5"]);
  assert.deepEqual(L.columnLabels("head", new Int32Array([0, 3]), toks), ["H0", "H3"]);
  assert.deepEqual(L.columnLabels("neuron", [17], toks), ["N17"]);
  assert.equal(L.columnName("head", 2), "head 2");
});

test("formatting of values, probabilities and the readout", () => {
  assert.equal(L.formatValue(0.5321), "+0.532");
  assert.equal(L.formatValue(-0.041), "−0.041");
  assert.equal(L.formatValue(0), "0.000");
  assert.equal(L.formatValue(-0.0001), "0.000");
  assert.equal(L.formatValue(NaN), "NaN");
  assert.equal(L.formatValue(123456), "+1.23e+5");
  assert.equal(L.formatProb(0.1234), "12.3%");
  assert.equal(L.formatProb(0.005), "0.50%");
  assert.equal(L.formatProb(1e-6), "<0.01%");
  const r = L.readout("position", 3, 2, " cat", 0.75, 1.5, "exact");
  assert.ok(r.includes("layer 3") && r.includes('position 2 " cat"') && r.includes("+0.750") && r.includes("exact"), r);
  assert.ok(L.readout("head", 1, 2, "", -0.2, -3, "attribution").includes("head 2"));
});

test("the method toggle chooses the grid of the chosen method", () => {
  const mk = (method: string, v: number[]): L.Grid => ({
    method,
    values: { data: v, shape: [1, v.length] },
    raw: { data: v, shape: [1, v.length] },
    layers: { data: [0], shape: [1] },
    columns: { data: v.map((_, i) => i), shape: [v.length] },
  });
  const grids = [mk("attribution", [0.1, 0.9]), mk("exact", [0.2, 0.8])];
  assert.deepEqual(L.methodsOf(grids), ["exact", "attribution"]);
  assert.equal(L.chooseGrid(grids, "exact")!.values.data[0], 0.2);
  assert.equal(L.chooseGrid(grids, "attribution")!.values.data[0], 0.1);
  assert.equal(L.chooseGrid(grids, "missing")!.method, "attribution", "falls back to the first");
  assert.equal(L.chooseGrid([], "exact"), null);
  assert.equal(L.nextMethod(["exact", "attribution"], "exact"), "attribution");
  assert.equal(L.nextMethod(["exact", "attribution"], "attribution"), "exact");
  assert.equal(L.nextMethod(["exact"], "exact"), "exact");
  assert.equal(L.nextMethod([], "exact"), "exact");
});

test("predictionRows aligns clean/corrupted/patched by rank", () => {
  const p = (tokens: string[], probs: number[]): L.Prediction => ({
    tokens, ids: { data: tokens.map((_, i) => i + 10) }, probs: { data: probs },
  });
  const rows = L.predictionRows({ clean: p([" Paris", " the"], [0.6, 0.1]), corrupted: p([" Rome"], [0.5]) });
  assert.equal(rows.length, 2);
  assert.deepEqual(rows[0].clean, { token: " Paris", id: 10, prob: 0.6 });
  assert.deepEqual(rows[0].corrupted, { token: " Rome", id: 10, prob: 0.5 });
  assert.equal(rows[0].patched, null);
  assert.equal(rows[1].corrupted, null);
  const withPatched = L.predictionRows({ clean: p(["a"], [1]), corrupted: p(["b"], [1]), patched: p(["c", "d", "e"], [0.5, 0.3, 0.2]) });
  assert.equal(withPatched.length, 3);
  assert.equal(withPatched[2].patched!.token, "e");
  assert.deepEqual(L.predictionRows({}), []);
});

test("run names and row labels: the patching defaults, or an IIA sweep's own", () => {
  assert.deepEqual(L.runNames(undefined), { clean: "clean", corrupted: "corrupted" });
  assert.deepEqual(L.runNames({ clean: "source", corrupted: "base" }), { clean: "source", corrupted: "base" });
  assert.deepEqual(L.runNames({ clean: "" }), { clean: "clean", corrupted: "corrupted" });
  assert.equal(L.rowLabel(undefined, [3, 7], 1), "7");
  assert.equal(L.rowLabel(["resid_post.3", "resid_post.7"], [3, 7], 1), "resid_post.7");
  assert.ok(L.readout("position", 3, 2, " cat", 0.75, 0.5, "k=1", "resid_post.3").startsWith("resid_post.3 · position 2"));
  assert.ok(L.readout("position", 3, 2, " cat", 0.75, 0.5, "exact").startsWith("layer 3 · "));
});
