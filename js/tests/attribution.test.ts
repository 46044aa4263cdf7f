import { test } from "node:test";
import assert from "node:assert/strict";
import * as A from "../src/lib/attribution-logic";

// A 3-layer graph over 4 positions: two features in one cell, a feature elsewhere, an error node,
// the 4 tokens and 2 logits (columns as the kernel sends them).
const KIND = [0, 0, 0, 1, 2, 2, 2, 2, 3, 3];
const LAYER = [1, 1, 2, 0, -1, -1, -1, -1, 3, 3];
const POS = [2, 2, 3, 1, 0, 1, 2, 3, 3, 3];
const FEAT = [17, 5, 40, -1, 341, 12, 99, 7, 339, 200];
const INF = [0.1, 0.3, 0.05, 0.2, 0, 0, 0, 0, 0, 0];

test("node ids are the engine's: features, errors, tokens, logits", () => {
  const ids = KIND.map((k, i) => A.nodeId(k, LAYER[i], POS[i], FEAT[i], 3, 4));
  assert.deepEqual(ids, ["1_17_2", "1_5_2", "2_40_3", "err_0_1", "E_341_0", "E_12_1", "E_99_2", "E_7_3", "4_339_3", "4_200_3"]);
});

test("layout: tokens along the bottom by position, logits on top, nodes at (position, layer)", () => {
  const lay = A.graphLayout({ kind: KIND, layer: LAYER, pos: POS, influence: INF }, 3, 4,
    { width: 600, marginLeft: 50, marginRight: 10, marginTop: 30, marginBottom: 40, rowHeight: 50 });
  assert.equal(lay.colWidth, (600 - 60) / 4);
  assert.equal(lay.height, 30 + 40 + 50 * 4);
  // tokens: one per column, left to right, on the bottom row
  for (let p = 0; p < 4; p++) {
    assert.equal(lay.x[4 + p], 50 + (p + 0.5) * lay.colWidth);
    assert.equal(lay.y[4 + p], lay.rowY[0]);
  }
  assert.ok(lay.rowY[0] > lay.rowY[1] && lay.rowY[1] > lay.rowY[2] && lay.rowY[3] > lay.rowY[4], "layers go up");
  // logits on the top row, spread around the last column
  assert.equal(lay.y[8], lay.rowY[4]);
  assert.equal(lay.y[9], lay.rowY[4]);
  assert.notEqual(lay.x[8], lay.x[9]);
  assert.ok(Math.abs((lay.x[8] + lay.x[9]) / 2 - lay.colX[3]) < 1e-3);
  // features: their layer's row, their position's column; a shared cell is spread, centred
  assert.equal(lay.y[2], lay.rowY[3]);
  assert.equal(lay.x[2], lay.colX[3]);
  assert.notEqual(lay.x[0], lay.x[1]);
  assert.ok(Math.abs((lay.x[0] + lay.x[1]) / 2 - lay.colX[2]) < 1e-3);
  assert.ok(lay.x[1] < lay.x[0], "the more influential feature comes first");
  assert.equal(lay.x[3], lay.colX[1]);
  assert.equal(lay.y[3], lay.rowY[1]);
  // size is influence (features and errors), tokens and logits fixed
  assert.ok(lay.r[1] > lay.r[0] && lay.r[0] > lay.r[2]);
  assert.equal(lay.r[4], lay.r[9]);
  assert.deepEqual(A.rowLabels(3), ["tokens", "L0", "L1", "L2", "logits"]);
});

test("layout: ten logits spread apart for their labels, inside the drawing", () => {
  const kind = Array(10).fill(A.LOGIT), layer = Array(10).fill(3), pos = Array(10).fill(11), inf = Array(10).fill(0);
  const lay = A.graphLayout({ kind, layer, pos, influence: inf }, 3, 12, { width: 700, marginLeft: 50, marginRight: 20 });
  const xs = Array.from(lay.x).sort((a, b) => a - b);
  for (let i = 1; i < 10; i++) assert.ok(xs[i] - xs[i - 1] >= A.LOGIT_SPACING - 1e-3, "labels have room");
  assert.ok(xs[0] >= 50 && xs[9] <= lay.width - 20, "inside the drawing");
  for (let i = 0; i < 10; i++) assert.equal(lay.y[i], lay.rowY[4]);
});

test("layout: a crowded cell grows the rows; no two nodes of a cell coincide", () => {
  const n = 300;
  const kind = Array(n).fill(0), layer = Array(n).fill(0), pos = Array(n).fill(0);
  const inf = Array.from({ length: n }, (_, i) => 1 / (i + 1));
  const lay = A.graphLayout({ kind, layer, pos, influence: inf }, 2, 1, { width: 300 });
  const seen = new Set(Array.from({ length: n }, (_, i) => `${lay.x[i].toFixed(2)},${lay.y[i].toFixed(2)}`));
  assert.equal(seen.size, n);
  const small = A.graphLayout({ kind: [0], layer: [0], pos: [0], influence: [1] }, 2, 1, { width: 300 });
  assert.ok(lay.rowHeight > small.rowHeight);
  for (let i = 0; i < n; i++) assert.ok(Math.abs(lay.y[i] - lay.rowY[1]) < lay.rowHeight / 2, "stays in its row");
});

test("incident edges and threshold sliders", () => {
  assert.deepEqual(A.incidentEdges([0, 1, 2, 1], [1, 2, 3, 3], 1), [0, 1, 3]);
  assert.deepEqual(A.incidentEdges([0], [1], 5), []);
  assert.equal(A.sliderToThreshold(80), 0.8);
  assert.equal(A.sliderToThreshold(0), 0.01, "never zero");
  assert.equal(A.sliderToThreshold(250), 1);
  for (const t of [0.01, 0.5, 0.8, 0.98, 1]) assert.equal(A.sliderToThreshold(A.thresholdToSlider(t)), t);
});

test("supernodes: a node in one group at most, same label replaces, empty refused", () => {
  let s = A.group([], "capital", ["1_5_2", "1_17_2"])!;
  assert.deepEqual(s, [["capital", "1_5_2", "1_17_2"]]);
  s = A.group(s, "France", ["1_17_2", "2_40_3"])!;
  assert.deepEqual(s, [["capital", "1_5_2"], ["France", "1_17_2", "2_40_3"]]);
  s = A.group(s, "moved", ["1_5_2"])!;
  assert.deepEqual(s, [["France", "1_17_2", "2_40_3"], ["moved", "1_5_2"]], "a group left empty is dropped");
  assert.deepEqual(A.group(s, "France", ["err_0_1"]), [["moved", "1_5_2"], ["France", "err_0_1"]]);
  assert.equal(A.group(s, "  ", ["x"]), null);
  assert.equal(A.group(s, "x", []), null);
  assert.deepEqual(A.ungroup(s, 0), [["moved", "1_5_2"]]);
  const m = A.membership(s);
  assert.equal(m.get("2_40_3"), 0);
  assert.equal(m.get("1_5_2"), 1);
  const b = A.groupBox([0, 1], [10, 30], [5, 25], [2, 3], 1)!;
  assert.deepEqual(b, { x: 7, y: 2, w: 27, h: 27 });
  assert.equal(A.groupBox([], [], [], []), null);
});

test("edit factors and the editable selection", () => {
  assert.equal(A.editFactor("zero", "whatever"), 0);
  assert.equal(A.editFactor("scale", " 3.5 "), 3.5);
  assert.equal(A.editFactor("scale", "-2"), -2);
  assert.match(String(A.editFactor("scale", "abc")), /finite number/);
  assert.match(String(A.editFactor("scale", "")), /finite number/);
  assert.match(String(A.editFactor("scale", "Infinity")), /finite number/);
  assert.match(String(A.editFactor("boost", "1")), /unknown edit/);
  const kinds: Record<string, number> = { f: A.FEATURE, e: A.ERROR, t: A.TOKEN, l: A.LOGIT };
  assert.deepEqual(A.editNodes(["f", "t", "e", "l", "gone"], (id) => kinds[id], 0), { f: 0, e: 0 });
});

test("exemplar segments: the hot token alone, context trimmed with ellipses", () => {
  const toks = ["a", "b", "c", "<b>", "d", "e"];
  assert.deepEqual(A.exemplarSegments(toks, 3), [{ text: "abc", hot: false }, { text: "<b>", hot: true }, { text: "de", hot: false }]);
  const long = Array.from({ length: 40 }, (_, i) => `${i} `);
  const segs = A.exemplarSegments(long, 20, 5);
  assert.equal(segs[0].text, "…");
  assert.equal(segs.find((s) => s.hot)!.text, "20 ");
  assert.equal(segs[segs.length - 1].text, "…");
  assert.deepEqual(A.exemplarSegments(["x"], 0), [{ text: "x", hot: true }]);
});
