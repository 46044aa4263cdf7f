import { test } from "node:test";
import assert from "node:assert/strict";
import * as D from "../src/lib/graph-draw";
import * as C from "../src/lib/circuit-logic";

test("circuit-logic re-exports the shared drawing code (one implementation)", () => {
  assert.equal(C.edgeColor, D.edgeColor);
  assert.equal(C.edgeWidth, D.edgeWidth);
  assert.equal(C.togglePin, D.togglePin);
  assert.equal(C.signed, D.signed);
});

test("the MLP gets its own caption (its row label would name a head)", () => {
  assert.equal(C.nodeCaption("mlp", 3), "MLP 3");
  assert.equal(C.nodeCaption("attn", 3), "");
  assert.equal(C.nodeCaption("embed", -1), "");
});

test("edge buckets: by sign and magnitude, every edge once, weakest first", () => {
  const w = new Float32Array([1, -1, 0.05, -0.05, 0.5, 0, NaN]);
  const b = D.edgeBuckets(w, 1, 4);
  const all = b.flatMap((x) => x.edges).sort((a, c) => a - c);
  assert.deepEqual(all, [0, 1, 2, 3, 4, 5, 6]);
  for (const x of b) for (const e of x.edges) {
    const s = w[e] > 0 ? 1 : w[e] < 0 ? -1 : 0;
    assert.equal(x.sign, s, `edge ${e} in a bucket of its sign`);
  }
  const strong = b.find((x) => x.edges.includes(0))!, weak = b.find((x) => x.edges.includes(2))!;
  assert.ok(strong.width > weak.width && strong.opacity > weak.opacity);
  assert.ok(b.indexOf(weak) < b.indexOf(strong), "weak buckets are drawn first");
  assert.notEqual(b.find((x) => x.edges.includes(0)), b.find((x) => x.edges.includes(1)), "signs apart");
  assert.deepEqual(D.edgeBuckets(w, 1, 4, [1, 4]).flatMap((x) => x.edges).sort(), [1, 4]);
});

test("spread in a cell: centred, at least the spacing apart when it fits, tightened when not", () => {
  const one = D.spreadInCell(1, 100, 50, 10);
  assert.deepEqual([one.dx[0], one.dy[0]], [0, 0]);
  const three = D.spreadInCell(3, 100, 50, 10);
  assert.deepEqual(Array.from(three.dx), [-10, 0, 10]);
  assert.deepEqual(Array.from(three.dy), [0, 0, 0]);
  const many = D.spreadInCell(50, 40, 40, 10);
  for (let i = 0; i < 50; i++) {
    assert.ok(Math.abs(many.dx[i]) <= 20 + 1e-6 && Math.abs(many.dy[i]) <= 20 + 1e-6, "inside the cell");
  }
  const keys = new Set(Array.from({ length: 50 }, (_, i) => `${many.dx[i]},${many.dy[i]}`));
  assert.equal(keys.size, 50);
  assert.ok(D.radiusOf(1, 1) > D.radiusOf(0.25, 1) && D.radiusOf(0, 1) === 2.5 && D.radiusOf(NaN, 1) === 2.5);
});
