import { test } from "node:test";
import assert from "node:assert/strict";
import * as L from "../src/lib/lens-logic";

// 2 layers × 3 positions, k = 2, one target
const grid: L.LensGrid = {
  layers: [0, 1],
  positions: [0, 1, 2],
  k: 2,
  top_ids: [10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25],
  top_probs: [0.5, 0.2, 0.4, 0.3, 0.9, 0.05, 0.6, 0.1, 0.7, 0.2, 0.8, 0.1],
  targets: [" Paris"],
  target_probs: [0.01, 0.02, 0.03, 0.1, 0.2, 0.3],
  target_ranks: [50, 40, 30, 3, 2, 1],
  kl: [1, 2, 3, 0, 0, 0],
  id_text: { "10": "a", "11": "b", "24": " Paris", "25": "\n" },
};

test("flat indexes row-major [layer, pos, n]", () => {
  assert.equal(L.flat(0, 0, 3, 2), 0);
  assert.equal(L.flat(1, 2, 3, 2, 1), 11);
  assert.equal(L.flat(1, 0, 3, 1), 3);
});

test("cellTopK returns ranked rows with token texts", () => {
  const rows = L.cellTopK(grid, 1, 2);
  assert.deepEqual(rows.map((r) => r.id), [24, 25]);
  assert.deepEqual(rows.map((r) => r.token), [" Paris", "\n"]);
  assert.equal(rows[0].rank, 1);
  assert.ok(Math.abs(rows[0].prob - 0.8) < 1e-9);
  assert.equal(L.cellTopK(grid, 0, 1)[0].token, "#12", "unknown ids fall back to #id");
});

test("colorValue: top-token probability or the chosen target's", () => {
  assert.equal(L.colorValue(grid, 0, 2, "top"), 0.9);
  assert.equal(L.colorValue(grid, 1, 1, " Paris"), 0.2);
  assert.equal(L.colorValue(grid, 1, 1, "missing"), 0.7, "unknown target falls back to top");
  assert.equal(L.normalizeColorBy(" Paris", grid.targets), " Paris");
  assert.equal(L.normalizeColorBy("gone", grid.targets), "top");
});

test("truncateToken makes whitespace visible and cuts long tokens", () => {
  assert.equal(L.truncateToken("abc", 6), "abc");
  assert.equal(L.truncateToken("abcdefghij", 6), "abcde…");
  assert.equal(L.truncateToken("\n", 6), "⏎");
  assert.equal(L.truncateToken("😀😀😀😀😀😀😀", 4), "😀😀😀…", "does not split surrogate pairs");
});

test("colours: light for low probability, dark for high, text contrast follows", () => {
  assert.equal(L.cellColor(0), "rgb(255,255,255)");
  assert.notEqual(L.cellColor(1), L.cellColor(0));
  assert.equal(L.cellColor(2), L.cellColor(1), "clamped");
  assert.equal(L.cellTextColor(0.05), "#111");
  assert.equal(L.cellTextColor(0.9), "#fff");
});

test("rows are displayed last layer first", () => {
  assert.deepEqual(L.displayRows(3), [2, 1, 0]);
});

test("pinnedCell maps [layer, pos] to grid indices; togglePin pins and unpins", () => {
  assert.deepEqual(L.pinnedCell([1, 2], grid), [1, 2]);
  assert.equal(L.pinnedCell([5, 0], grid), null);
  assert.equal(L.pinnedCell([], grid), null);
  assert.equal(L.pinnedCell(null, grid), null);
  assert.deepEqual(L.togglePin([], 1, 2), [1, 2]);
  assert.deepEqual(L.togglePin([1, 2], 1, 2), []);
  assert.deepEqual(L.togglePin([1, 2], 0, 2), [0, 2]);
});

test("formatProb", () => {
  assert.equal(L.formatProb(0.5), "50%");
  assert.equal(L.formatProb(0.999), "100%");
  assert.equal(L.formatProb(0.0123), "1.2%");
  assert.equal(L.formatProb(0), "0%");
});
