import { test } from "node:test";
import assert from "node:assert/strict";
import * as N from "../src/lib/neuron-dashboard-logic";

function rgbOf(s: string): number[] {
  const m = /^rgb\((\d+),(\d+),(\d+)\)$/.exec(s);
  assert.ok(m, s);
  return m!.slice(1).map(Number);
}

test("actScale: the largest |activation| over all exemplars, 1 when empty or all zero", () => {
  assert.equal(N.actScale([[0.5, -3, 2], new Float32Array([1, 2.5])]), 3);
  assert.equal(N.actScale([]), 1);
  assert.equal(N.actScale([[0, 0]]), 1);
  assert.equal(N.actScale([[NaN, Infinity, -2]]), 2, "non-finite values are ignored");
});

test("actColor: white at zero, orange for positive, blue for negative, clamped", () => {
  assert.deepEqual(rgbOf(N.actColor(0, 4)), [255, 255, 255]);
  assert.deepEqual(rgbOf(N.actColor(4, 4)), [245, 130, 32], "full positive = orange");
  assert.deepEqual(rgbOf(N.actColor(-4, 4)), [60, 120, 230], "full negative = blue");
  assert.deepEqual(rgbOf(N.actColor(9, 4)), rgbOf(N.actColor(4, 4)), "clamped above");
  assert.deepEqual(rgbOf(N.actColor(-9, 4)), rgbOf(N.actColor(-4, 4)), "clamped below");
  const half = rgbOf(N.actColor(2, 4));
  assert.deepEqual(half, [250, 193, 144], "linear blend halfway");
  const neg = rgbOf(N.actColor(-1, 4));
  assert.ok(neg[2] > neg[0], "negative tints are blue-ish");
  assert.deepEqual(rgbOf(N.actColor(NaN, 4)), [255, 255, 255]);
  assert.deepEqual(rgbOf(N.actColor(1, 0)), [255, 255, 255], "no scale: no tint");
  assert.equal(N.actLevel(-2, 4), -0.5);
  assert.equal(N.actTextColor(3.9, 4), "#fff");
  assert.equal(N.actTextColor(-3.9, 4), "#fff");
  assert.equal(N.actTextColor(1, 4), "#111");
});

test("histRange: the non-empty bins [lo, hi)", () => {
  assert.deepEqual(N.histRange([0, 0, 3, 0, 1, 0]), { lo: 2, hi: 5 });
  assert.deepEqual(N.histRange([7]), { lo: 0, hi: 1 });
  assert.equal(N.histRange([0, 0, 0]), null);
  assert.equal(N.histRange(new Float64Array(0)), null);
});

test("zeroBin finds the exact-zero bin [0, 0]", () => {
  const edges = [-Infinity, -2, -1, 0, 0, 1, 2, Infinity];
  assert.equal(N.zeroBin(edges), 3);
  assert.equal(N.zeroBin([0, 1, 2]), -1);
  assert.equal(N.binLabel(edges, 3), "0");
  assert.equal(N.binLabel(edges, 0), "[-∞, -2)");
  assert.equal(N.binLabel(edges, 5), "[1, 2)");
  assert.equal(N.binLabel(edges, 6), "[2, ∞)");
});

test("histBars: equal widths over the range, log-count heights, empty bins flat", () => {
  const counts = [0, 9, 0, 99, 1, 0];
  const bars = N.histBars(counts, { lo: 1, hi: 5 }, 100, 50, 1);
  assert.deepEqual(bars.map((b) => b.bin), [1, 2, 3, 4]);
  assert.deepEqual(bars.map((b) => b.x), [0, 25, 50, 75]);
  assert.ok(bars.every((b) => b.w === 24), "bar width minus the gap");
  assert.equal(bars[2].h, 50, "the largest count fills the height");
  assert.equal(bars[0].h, 25, "log10(1 + 9) / log10(1 + 99) = 1/2");
  assert.equal(bars[1].h, 0, "empty bin");
  assert.ok(Math.abs(bars[3].h - (50 * Math.log10(2)) / 2) < 1e-9);
  for (const b of bars) assert.equal(b.y + b.h, 50, "baseline at the bottom");
  const tiny = N.histBars([1, 100000], { lo: 0, hi: 2 }, 10, 20);
  assert.ok(tiny[0].h >= 1, "a count of 1 is still visible");
  assert.deepEqual(N.histBars(counts, { lo: 3, hi: 3 }, 100, 50), []);
});

test("zeroMarker: in the zero bin, or the side of the range zero lies on", () => {
  assert.deepEqual(N.zeroMarker({ lo: 2, hi: 6 }, 3, 100), { x: 37.5, side: "in" });
  assert.deepEqual(N.zeroMarker({ lo: 4, hi: 6 }, 3, 100), { x: 0, side: "left" }, "all positive");
  assert.deepEqual(N.zeroMarker({ lo: 0, hi: 3 }, 3, 100), { x: 100, side: "right" }, "all negative");
});

test("tickBins: evenly spaced and including the zero bin", () => {
  assert.deepEqual(N.tickBins({ lo: 0, hi: 10 }, 7, 5), [0, 2, 4, 7], "6 and 8 would crowd the zero label");
  assert.deepEqual(N.tickBins({ lo: 0, hi: 10 }, 12, 5), [0, 2, 4, 6, 8], "zero not shown");
  assert.deepEqual(N.tickBins({ lo: 3, hi: 5 }, 0, 5), [3, 4]);
  assert.equal(N.shortNum(0.0009765625), "1e-3");
  assert.equal(N.shortNum(1.6817928), "1.7");
  assert.equal(N.shortNum(-12.3), "-12");
});

const LANE: N.LaneEntry[] = [
  { key: "neurons.0", layer: 0, width: 4 },
  { key: "neurons.1", layer: 1, width: 3 },
  { key: "neurons.2", layer: 2, width: 5 },
];

test("step: ±1 within a layer, wrapping to the next / previous layer and around the ends", () => {
  assert.deepEqual(N.step(LANE, "neurons.0", 1, 1), { site: "neurons.0", layer: 0, unit: 2 });
  assert.deepEqual(N.step(LANE, "neurons.0", 3, 1), { site: "neurons.1", layer: 1, unit: 0 });
  assert.deepEqual(N.step(LANE, "neurons.1", 0, -1), { site: "neurons.0", layer: 0, unit: 3 });
  assert.deepEqual(N.step(LANE, "neurons.2", 4, 1), { site: "neurons.0", layer: 0, unit: 0 }, "last → first");
  assert.deepEqual(N.step(LANE, "neurons.0", 0, -1), { site: "neurons.2", layer: 2, unit: 4 }, "first → last");
  const one: N.LaneEntry[] = [{ key: "toy", layer: -1, width: 5 }];
  assert.deepEqual(N.step(one, "toy", 4, 1), { site: "toy", layer: -1, unit: 0 }, "a key alone wraps on itself");
  assert.deepEqual(N.step(one, "toy", 0, -1), { site: "toy", layer: -1, unit: 4 });
  assert.throws(() => N.step(LANE, "resid_post.0", 0, 1), /not in the lane/);
});

test("findLayer / parseIndex / titles / targets", () => {
  assert.equal(N.findLayer(LANE, 1)?.key, "neurons.1");
  assert.equal(N.findLayer(LANE, 7), null);
  assert.equal(N.findLayer([{ key: "toy", layer: -1, width: 2 }], -1), null);
  assert.equal(N.parseIndex("12"), 12);
  assert.equal(N.parseIndex(" "), null);
  assert.equal(N.parseIndex("1.5"), null);
  assert.equal(N.parseIndex("abc"), null);
  assert.equal(N.parseIndex("-3"), -3, "negative goes to the kernel, which names the range");
  assert.equal(N.unitTitle("neurons.3", 3, 7), "Layer 3 · neuron 7");
  assert.equal(N.unitTitle("resid_post.2", 2, 7), "resid_post.2 · unit 7");
  assert.equal(N.unitTitle("toy", -1, 0), "toy · unit 0");
  assert.ok(N.sameTarget({ site: "a", unit: 1 }, { site: "a", unit: 1 }));
  assert.ok(!N.sameTarget({ site: "a", unit: 1 }, { site: "a", unit: 2 }));
  assert.ok(!N.sameTarget(null, { site: "a", unit: 1 }));
});

test("statRows: fixed order, percentages, counts, missing values", () => {
  const rows = N.statRows({ mean: 0.5, std: 1, skew: null, kurtosis: NaN, frac_active: 0.25, max: 3.14159, count: 12345 });
  assert.deepEqual(rows.map((r) => r[0]), ["mean", "std", "skew", "kurtosis", "frac_active", "max", "count"]);
  assert.deepEqual(rows.map((r) => r[2]), ["0.500", "1.000", "–", "–", "25.0%", "3.142", "12,345"]);
});

test("prediction changes: percentage points with a sign", () => {
  assert.deepEqual(N.formatChange(0.1, 0.35), { text: "+25.0 pp", sign: "up" });
  assert.deepEqual(N.formatChange(0.5, 0.45), { text: "−5.00 pp", sign: "down" });
  assert.deepEqual(N.formatChange(0.2, 0.2), { text: "±0 pp", sign: "same" });
  assert.deepEqual(N.formatChange(0.2, 0.2 + 1e-12), { text: "±0 pp", sign: "same" }, "float noise");
  assert.deepEqual(N.formatChange(0, 0.00002), { text: "+2.0e-3 pp", sign: "up" });
  assert.deepEqual(N.formatChange(NaN, 0.1), { text: "–", sign: "same" });
  assert.equal(N.formatPct(0.4321), "43.2%");
  assert.equal(N.formatPct(0.01234), "1.23%");
  assert.equal(N.formatPct(0), "0%");
  assert.equal(N.formatPct(1e-7), "1.0e-5%");
  const rows = N.orderPredictions([
    { token: "a", id: 5, p_base: 0.1, p_edit: 0.2 },
    { token: "b", id: 2, p_base: 0.6, p_edit: 0.05 },
    { token: "c", id: 1, p_base: 0.2, p_edit: 0.1 },
    { token: "d", id: 0, p_base: 0.2, p_edit: 0.0 },
  ]);
  assert.deepEqual(rows.map((r) => r.token), ["b", "d", "c", "a"], "by the larger probability, ties by id");
  assert.equal(N.editLabel("ablate", 4), "ablated");
  assert.equal(N.editLabel("amplify", 4), "amplified ×4");
  assert.equal(N.editLabel("amplify", 0.333333), "amplified ×0.3333");
});
