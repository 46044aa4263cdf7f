import { test } from "node:test";
import assert from "node:assert/strict";
import * as L from "../src/lib/circuit-logic";

// A component graph of a 2-layer model with 3 heads: embed, a0.h0..h2, m0, a1.h0..h2, m1, logits.
const IDS = ["embed", "a0.h0", "a0.h1", "a0.h2", "m0", "a1.h0", "a1.h1", "a1.h2", "m1", "logits"];
const LAYER = [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2];
const KIND = ["embed", "attn", "attn", "attn", "mlp", "attn", "attn", "attn", "mlp", "logits"];
const INDEX = [0, 0, 1, 2, 0, 0, 1, 2, 0, 0];

test("columns: inputs, then per layer heads before MLP, then logits", () => {
  const c = L.columnsOf(LAYER, KIND, INDEX);
  assert.equal(c.count, 6);
  assert.deepEqual(Array.from(c.col), [0, 1, 1, 1, 2, 3, 3, 3, 4, 5]);
  assert.deepEqual(Array.from(c.rows), [1, 3, 1, 3, 1, 1]);
  assert.deepEqual(c.kind, ["embed", "attn", "mlp", "attn", "mlp", "logits"]);
  assert.deepEqual(c.layer.map((l, j) => L.columnLabel(l, c.kind[j])), ["emb", "a0", "m0", "a1", "m1", "out"]);
  // order of the payload does not matter: shuffled nodes land in the same columns
  const perm = [9, 4, 0, 7, 1, 8, 2, 5, 3, 6];
  const s = L.columnsOf(perm.map((i) => LAYER[i]), perm.map((i) => KIND[i]), perm.map((i) => INDEX[i]));
  assert.deepEqual(perm.map((_, j) => s.col[j]), perm.map((i) => c.col[i]));
  // unknown kinds (a feature graph's) sit between heads and outputs
  assert.equal(L.kindRank("feature"), 2);
  assert.equal(L.kindRank("whatever"), 2);
});

test("layout: x increases with the column, heads stack by index, short columns are centred", () => {
  const lay = L.layout(LAYER, KIND, INDEX, { width: 600, marginLeft: 40, marginRight: 20, marginTop: 28, marginBottom: 12, rowHeight: 20 });
  assert.equal(lay.colWidth, (600 - 60) / 5);
  assert.equal(lay.width, 600);
  assert.equal(lay.height, 28 + 12 + 3 * 20);
  assert.equal(lay.x[0], 40);
  assert.equal(lay.x[9], 40 + 5 * lay.colWidth);
  for (let i = 1; i < IDS.length; i++) assert.ok(lay.x[i] >= lay.x[i - 1], `x is monotone in layer order at ${IDS[i]}`);
  // heads of layer 0 at rows 0, 1, 2; the MLP (one row) centred on the middle head
  assert.deepEqual([lay.y[1], lay.y[2], lay.y[3]], [38, 58, 78]);
  assert.equal(lay.y[4], lay.y[2]);
  assert.equal(lay.y[0], lay.y[2]);
  assert.equal(lay.x[1], lay.x[2]);
  // many columns: a minimum column width makes the drawing wider than the container
  const wide = L.layout(Array.from({ length: 100 }, (_, i) => i), Array(100).fill("mlp"), Array(100).fill(0), { width: 300, minColWidth: 12 });
  assert.equal(wide.colWidth, 12);
  assert.ok(wide.width > 300);
  // one node only: centred
  const one = L.layout([0], ["mlp"], [0], { width: 300, marginLeft: 40, marginRight: 20 });
  assert.equal(one.x[0], 40 + 240 / 2);
});

test("threshold: drawn edges, the |score| at k, and the count above a threshold", () => {
  const w = new Float32Array([0.9, -0.5, 0.5, -0.25, 0.1]); // sorted by |w|, largest first
  assert.equal(L.drawnCount(3, 5, 2000), 3);
  assert.equal(L.drawnCount(50, 5, 2000), 5, "cannot draw more than were sent");
  assert.equal(L.drawnCount(50, 5, 4), 4, "capped by max_draw");
  assert.equal(L.drawnCount(-3, 5, 4), 0);
  assert.equal(L.thresholdAt(w, 1), Math.fround(0.9));
  assert.equal(L.thresholdAt(w, 2), 0.5);
  assert.equal(L.thresholdAt(w, 0), null);
  assert.equal(L.thresholdAt(w, 6), null);
  assert.equal(L.countAbove(w, 0.5), 3);
  assert.equal(L.countAbove(w, 0.51), 1);
  assert.equal(L.countAbove(w, 0), 5);
  assert.equal(L.countAbove(w, 2), 0);
  assert.equal(L.countAbove(new Float32Array([]), 0.1), 0);
  // brute force agrees on random sorted lists
  for (let trial = 0; trial < 20; trial++) {
    const xs = Array.from({ length: 37 }, () => (Math.random() - 0.5) * 4).sort((a, b) => Math.abs(b) - Math.abs(a));
    const t = Math.random() * 2;
    assert.equal(L.countAbove(xs, t), xs.filter((x) => Math.abs(x) >= t).length);
  }
});

test("colour is the sign and width the magnitude", () => {
  assert.equal(L.edgeColor(0.3), L.edgeColor(5));
  assert.notEqual(L.edgeColor(0.3), L.edgeColor(-0.3));
  assert.match(L.edgeColor(1), /rgb\(40,95,225\)/, "positive is blue");
  assert.match(L.edgeColor(-1), /rgb\(225,65,55\)/, "negative is red");
  assert.equal(L.edgeColor(0), L.edgeColor(NaN));
  assert.equal(L.edgeWidth(2, 2), 6);
  assert.equal(L.edgeWidth(-2, 2), 6, "width ignores the sign");
  assert.equal(L.edgeWidth(0, 2), 0.4);
  assert.ok(L.edgeWidth(1, 2) > L.edgeWidth(0.5, 2));
  assert.equal(L.edgeWidth(10, 2), 6, "clamped");
  assert.equal(L.edgeWidth(NaN, 2), 0.4);
  assert.ok(L.edgeOpacity(2, 2) > L.edgeOpacity(0.1, 2));
  assert.equal(L.maxAbs(new Float32Array([0.5, -3, NaN])), 3);
  assert.equal(L.maxAbs([]), 1);
});

test("edge paths are S-curves with horizontal tangents through the chord's midpoint", () => {
  assert.equal(L.edgePath(0, 0, 100, 50), "M0 0C50 0 50 50 100 50");
  assert.equal(L.edgePath(1.26, 2, 3, 4.04), "M1.3 2C2.1 2 2.1 4 3 4");
});

test("log slider: ends map to 1 and n, inverse round-trips, monotone", () => {
  const n = 40000;
  assert.equal(L.sliderToK(0, n), 1);
  assert.equal(L.sliderToK(L.SLIDER_STEPS, n), n);
  let prev = 0;
  for (let p = 0; p <= L.SLIDER_STEPS; p += 7) {
    const k = L.sliderToK(p, n);
    assert.ok(k >= prev);
    prev = k;
  }
  for (const k of [1, 10, 200, 2000, 39999]) {
    const back = L.sliderToK(L.kToSlider(k, n), n);
    assert.ok(Math.abs(back - k) / k < 0.02, `${k} -> ${back}`);
  }
  assert.equal(L.sliderToK(500, 1), 1);
  assert.equal(L.sliderToK(500, 0), 0);
  assert.equal(L.kToSlider(5, 1), 0);
});

test("pins toggle, names and node ids parse", () => {
  let p = L.togglePin([], "a0.h1->m1");
  p = L.togglePin(p, "embed->a0.h0");
  assert.deepEqual(p, ["a0.h1->m1", "embed->a0.h0"]);
  assert.deepEqual(L.togglePin(p, "a0.h1->m1"), ["embed->a0.h0"]);
  assert.equal(L.edgeName("a0.h3", "m2"), "a0.h3->m2");
  assert.deepEqual(L.parseHead("a12.h7"), [12, 7]);
  assert.equal(L.parseHead("m3"), null);
  assert.equal(L.parseMlp("m3"), 3);
  assert.equal(L.parseMlp("a1.h2"), null);
});

test("row labels name the heads and kv inputs, nothing for plain ids", () => {
  const ids = ["embed", "a0.h0", "a0.h1", "a0.kv0", "m0", "a1.h0", "a1.h1", "a1.kv0", "logits"];
  const index = [0, 0, 1, 2, 0, 0, 1, 2, 0];
  assert.deepEqual(L.rowLabels(ids, index, 3), ["h0", "h1", "kv0"]);
  assert.deepEqual(L.rowLabels(["20_1_3", "20_2_3"], [0, 1], 2), ["", ""]);
  assert.equal(L.columnLabel(3, "kv"), "a3", "kv inputs share the heads' column");
});

test("formatting", () => {
  assert.equal(L.magnitude(0.012345), "0.0123");
  assert.equal(L.magnitude(-12.34), "12.3");
  assert.equal(L.magnitude(1.5e-5), "1.50e-5");
  assert.equal(L.magnitude(0), "0");
  assert.equal(L.signed(0.5321), "+0.532");
  assert.equal(L.signed(-0.0411), "−0.041");
  assert.equal(L.signed(0), "0.000");
  assert.equal(L.signed(null), "—");
  assert.equal(L.signed(NaN), "—");
  assert.equal(L.signed(1.5e-5), "+1.50e-5");
  assert.equal(L.count(40123), "40,123");
});
