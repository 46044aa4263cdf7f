import { test } from "node:test";
import assert from "node:assert/strict";
import {
  cellAt,
  colorLut,
  describeCell,
  detailCss,
  fmtP,
  headThumb,
  intensity,
  labelStep,
  Lru,
  MASKED_RGB,
  maxPoolTril,
  paintRGBA,
  poolPlan,
  seqFromTril,
  shortLabel,
  thumbCss,
  tint,
  trilCol,
  trilRow,
  trilSize,
  unpackTril,
} from "../src/lib/attention-logic";
import { trilIndex } from "../src/lib/arrays";

/** Pack [H, s, s] (as a function of h, q, k) row by row like widgets._transport.pack_tril. */
function packed(H: number, s: number, f: (h: number, q: number, k: number) => number): Float32Array {
  const out = new Float32Array(H * trilSize(s));
  let i = 0;
  for (let h = 0; h < H; h++) for (let q = 0; q < s; q++) for (let k = 0; k <= q; k++) out[i++] = f(h, q, k);
  return out;
}

const val = (h: number, q: number, k: number) => h * 1000 + q * 10 + k;

test("trilSize and seqFromTril are inverse", () => {
  for (const s of [1, 2, 3, 7, 128, 512]) assert.equal(seqFromTril(trilSize(s)), s);
  assert.equal(trilSize(512), 131328);
  assert.throws(() => seqFromTril(5));
});

test("packing order matches trilIndex", () => {
  const s = 6;
  const d = packed(1, s, val);
  for (let q = 0; q < s; q++) for (let k = 0; k <= q; k++) assert.equal(d[trilIndex(q, k)], val(0, q, k));
});

test("trilRow and trilCol read one head's row and column", () => {
  const H = 3, s = 5;
  const d = packed(H, s, val);
  const off = 2 * trilSize(s);
  assert.deepEqual(Array.from(trilRow(d, off, s, 3)), [2030, 2031, 2032, 2033, 0]);
  assert.deepEqual(Array.from(trilRow(d, off, s, 0)), [2000, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(trilCol(d, off, s, 2)), [0, 0, 2022, 2032, 2042]);
  assert.deepEqual(Array.from(trilCol(d, off, s, 4)), [0, 0, 0, 0, 2044]);
});

test("unpackTril fills the lower triangle and masks the rest with -1", () => {
  const s = 4;
  const d = packed(2, s, val);
  const m = unpackTril(d, trilSize(s), s);
  for (let q = 0; q < s; q++)
    for (let k = 0; k < s; k++) assert.equal(m[q * s + k], k <= q ? val(1, q, k) : -1);
});

test("poolPlan keeps thumbnails at most maxPx a side", () => {
  assert.deepEqual(poolPlan(10, 128), { factor: 1, size: 10 });
  assert.deepEqual(poolPlan(128, 128), { factor: 1, size: 128 });
  assert.deepEqual(poolPlan(129, 128), { factor: 2, size: 65 });
  assert.deepEqual(poolPlan(512, 128), { factor: 4, size: 128 });
  assert.deepEqual(poolPlan(1000, 128), { factor: 8, size: 125 });
  for (let s = 1; s < 1100; s += 37) assert.ok(poolPlan(s, 128).size <= 128);
});

test("maxPoolTril with factor 1 equals the unpacked matrix", () => {
  const s = 7;
  const d = packed(2, s, (h, q, k) => (h + 1) * (q + 1) / (k + 10));
  const off = trilSize(s);
  assert.deepEqual(Array.from(maxPoolTril(d, off, s, 1).values), Array.from(unpackTril(d, off, s)));
});

test("maxPoolTril keeps the block maximum and masks whole blocks above the diagonal", () => {
  const s = 5;
  // one sharp value at (4, 1); everything else tiny
  const d = packed(1, s, (_h, q, k) => (q === 4 && k === 1 ? 0.9 : 0.01));
  const { size, values } = maxPoolTril(d, 0, s, 2);
  assert.equal(size, 3);
  const at = (r: number, c: number) => values[r * size + c];
  assert.ok(Math.abs(at(2, 0) - 0.9) < 1e-6, "the sharp value survives pooling");
  assert.ok(Math.abs(at(0, 0) - 0.01) < 1e-6);
  assert.equal(at(0, 1), -1);
  assert.equal(at(0, 2), -1);
  assert.equal(at(1, 2), -1);
  assert.ok(Math.abs(at(1, 1) - 0.01) < 1e-6, "a block crossing the diagonal is not masked");
});

test("maxPoolTril at 512 tokens is fast enough for a 30 × 9 grid", () => {
  const s = 512, H = 9;
  const d = packed(H, s, (_h, q, k) => 1 / (q + 1) + k * 0);
  const { factor } = poolPlan(s, 128);
  const lut = colorLut(0.5);
  const t = performance.now();
  for (let h = 0; h < H; h++) {
    const { values } = maxPoolTril(d, h * trilSize(s), s, factor);
    paintRGBA(values, lut);
  }
  const ms = performance.now() - t;
  assert.ok(ms < 500, `one layer took ${ms} ms`);
});

test("colour ramp: white at 0, blue at 1, gamma lifts small values", () => {
  const lut = colorLut(0.5);
  const px = paintRGBA([0, 1, -1, 0.01], lut);
  assert.deepEqual(Array.from(px.slice(0, 4)), [255, 255, 255, 255]);
  assert.deepEqual(Array.from(px.slice(4, 8)), [30, 100, 215, 255]);
  assert.deepEqual(Array.from(px.slice(8, 12)), [...MASKED_RGB, 255]);
  // p = 0.01 with gamma 0.5 is drawn at 10% intensity: clearly not white
  assert.ok(px[12] < 240, `red channel ${px[12]}`);
  assert.equal(intensity(0.01, 0.5), 0.1);
  assert.equal(intensity(0, 0.5), 0);
  assert.equal(intensity(2, 0.5), 1);
  assert.equal(intensity(NaN, 0.5), 0);
  assert.equal(tint(0), "rgb(255,255,255)");
  assert.equal(tint(1), "rgb(30,100,215)");
});

test("paintRGBA is monotone: higher probability is darker", () => {
  const lut = colorLut(0.5);
  const vs = [0, 0.001, 0.01, 0.1, 0.5, 1];
  const px = paintRGBA(vs, lut);
  for (let i = 1; i < vs.length; i++) assert.ok(px[i * 4] <= px[(i - 1) * 4]);
});

test("layout: thumbnail and detail sizes", () => {
  assert.equal(thumbCss(9), 62);
  assert.equal(thumbCss(4), 72);
  assert.equal(thumbCss(64), 28);
  assert.equal(detailCss(5), 240);
  assert.equal(detailCss(30), 360);
  assert.equal(detailCss(512), 520);
  assert.equal(labelStep(10, 240, 10), 1);
  assert.equal(labelStep(512, 520, 10), 10);
});

test("cellAt maps pointer coordinates to (query, key)", () => {
  assert.deepEqual(cellAt(0, 0, 100, 100, 10), { q: 0, k: 0 });
  assert.deepEqual(cellAt(99.9, 15, 100, 100, 10), { q: 1, k: 9 });
  assert.deepEqual(cellAt(50, 99, 200, 100, 4), { q: 3, k: 1 });
  assert.equal(cellAt(-1, 5, 100, 100, 10), null);
  assert.equal(cellAt(5, 100, 100, 100, 10), null);
});

test("labels and readouts", () => {
  assert.equal(shortLabel("a\nb"), "a⏎b");
  assert.equal(shortLabel("abcdefghijklmnop", 6), "abcde…");
  assert.equal(fmtP(0), "0");
  assert.equal(fmtP(0.12345), "0.123");
  assert.equal(fmtP(0.00012), "1.2e-4");
  const toks = ["The", " cat", " sat"];
  assert.equal(describeCell(toks, 2, 1, 0.5), '" sat" (2) → " cat" (1): 0.500');
  assert.match(describeCell(toks, 0, 2, null), /masked/);
});

test("headThumb views one head's thumbnail in a layer's [heads, size, size] buffer", () => {
  const size = 3, H = 4;
  const data = new Float32Array(H * size * size).map((_v, i) => i);
  const t2 = headThumb(data, 2, size);
  assert.equal(t2.length, 9);
  assert.deepEqual(Array.from(t2), [18, 19, 20, 21, 22, 23, 24, 25, 26]);
  assert.equal(t2.buffer, data.buffer, "a view, not a copy");
  assert.throws(() => headThumb(data, 4, size), RangeError);
  assert.throws(() => headThumb(data, -1, size), RangeError);
});

test("kernel thumbnails paint like the JS max-pool of the full pattern", () => {
  // the kernel's layout (widgets/attention.py thumbnails): row-major blocks, -1 above the diagonal
  const s = 37, H = 2;
  const d = packed(H, s, (h, q, k) => ((h + 1) * (q * 7 + k * 3)) % 11 / 11);
  const { factor, size } = poolPlan(s, 8);
  assert.deepEqual([factor, size], [5, 8]);
  const layer = new Float32Array(H * size * size);
  for (let h = 0; h < H; h++) layer.set(maxPoolTril(d, h * trilSize(s), s, factor).values, h * size * size);
  const lut = colorLut(0.5);
  assert.deepEqual(paintRGBA(headThumb(layer, 1, size), lut), paintRGBA(maxPoolTril(d, trilSize(s), s, factor).values, lut));
});

test("Lru keeps the most recently used entries", () => {
  const c = new Lru<string, number>(2);
  c.set("a", 1);
  c.set("b", 2);
  assert.equal(c.get("a"), 1); // a is now the most recent
  c.set("c", 3); // evicts b
  assert.equal(c.has("b"), false);
  assert.deepEqual([c.get("a"), c.get("c"), c.size], [1, 3, 2]);
  c.set("a", 10);
  assert.equal(c.get("a"), 10);
  c.clear();
  assert.equal(c.size, 0);
});
