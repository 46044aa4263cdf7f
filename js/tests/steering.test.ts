import { test } from "node:test";
import assert from "node:assert/strict";
import {
  LatestRequest, debounced, diffDirections, formatMs, formatStrength, niceFloor, sameStrengths,
  sliderStep, snap, statusText, stepDecimals, strengthsOf, structureKey, withStrengths, zeroStrengths,
  type Direction, type Timers,
} from "../src/lib/steering-logic";

const dir = (name: string, strength = 0, max = 5, layer = 3): Direction =>
  ({ name, layer, kind: "neuron", min: -max, max, strength });

test("niceFloor picks 1/2/5 x 10^k", () => {
  assert.equal(niceFloor(0.07), 0.05);
  assert.equal(niceFloor(0.025), 0.02);
  assert.equal(niceFloor(1), 1);
  assert.equal(niceFloor(9.99), 5);
  assert.equal(niceFloor(150), 100);
  assert.equal(niceFloor(0), 1);
  assert.equal(niceFloor(NaN), 1);
});

test("sliderStep gives ~200 steps and keeps zero on the grid", () => {
  for (const max of [1, 2.5, 5, 7, 0.3, 0.777, 123.4, 40]) {
    const step = sliderStep(-max, max);
    const n = (2 * max) / step;
    assert.ok(n >= 100 && n <= 500, `max ${max}: ${n} steps`);
    const k = max / step;
    assert.ok(Math.abs(k - Math.round(k)) < 1e-6, `zero reachable for max ${max} (k=${k})`);
  }
  assert.equal(sliderStep(-5, 5), 0.05);
  assert.equal(sliderStep(0, 10), 0.05);
  assert.equal(sliderStep(3, 3), 1);
});

test("stepDecimals and formatStrength", () => {
  assert.equal(stepDecimals(1), 0);
  assert.equal(stepDecimals(0.05), 2);
  assert.equal(stepDecimals(0.025), 3);
  assert.equal(stepDecimals(0.1 + 0.2), 1); // float noise ignored
  assert.equal(formatStrength(2.5, 0.05), "2.50");
  assert.equal(formatStrength(-1.234, 0.01), "-1.23");
  assert.equal(formatStrength(-0.001, 0.05), "0.00"); // no "-0.00"
  assert.equal(formatStrength(0, 1), "0");
});

test("snap clamps, snaps to the grid and never yields -0", () => {
  assert.equal(snap(7, -5, 5, 0.05), 5);
  assert.equal(snap(-9, -5, 5, 0.05), -5);
  assert.equal(snap(1.2345, -5, 5, 0.05), 1.25);
  assert.equal(Object.is(snap(-0.01, -5, 5, 0.05), -0), false);
  assert.equal(snap(-0.01, -5, 5, 0.05), 0);
  const step = sliderStep(-0.777, 0.777);
  assert.equal(snap(0.0001, -0.777, 0.777, step), 0);
  assert.equal(snap(NaN, -1, 1, 0.1), 0);
  // the browser's own arithmetic: min + k*step lands back on clean values
  assert.equal(snap(-5 + 130 * 0.05, -5, 5, 0.05), 1.5);
});

test("status texts", () => {
  assert.equal(statusText("generating"), "generating…");
  assert.equal(statusText("done", 123.6), "done in 124 ms");
  assert.equal(statusText("cancelled"), "cancelled");
  assert.equal(statusText("idle"), "");
  assert.equal(formatMs(-3), "0 ms");
});

test("strength maps", () => {
  const dirs = [dir("a", 1), dir("b", -2)];
  assert.deepEqual(strengthsOf(dirs), { a: 1, b: -2 });
  const upd = withStrengths(dirs, { b: 0.5 });
  assert.deepEqual(strengthsOf(upd), { a: 1, b: 0.5 });
  assert.equal(dirs[1].strength, -2, "input not mutated");
  assert.deepEqual(zeroStrengths(dirs), { a: 0, b: 0 });
  assert.ok(sameStrengths({ a: 1, b: 2 }, { b: 2, a: 1 }));
  assert.ok(!sameStrengths({ a: 1 }, { a: 1, b: 0 }));
  assert.ok(!sameStrengths({ a: 1 }, { a: 2 }));
});

test("diffDirections: structure changes rebuild, kernel-side strength changes rerun, echoes do nothing", () => {
  const shown = [dir("a", 0), dir("b", 0)];
  const local = { a: 1.5, b: 0 };
  // echo of what the view itself sent
  assert.deepEqual(diffDirections(shown, [dir("a", 1.5), dir("b", 0)], local), { rebuild: false, changed: [] });
  // Python set b
  assert.deepEqual(diffDirections(shown, [dir("a", 1.5), dir("b", 3)], local), { rebuild: false, changed: ["b"] });
  // a direction added
  const added = diffDirections(shown, [dir("a", 1.5), dir("b", 0), dir("c", 0)], local);
  assert.equal(added.rebuild, true);
  assert.deepEqual(added.changed, ["c"]);
  // a range changed
  assert.equal(diffDirections(shown, [dir("a", 1.5, 10), dir("b", 0)], local).rebuild, true);
  assert.notEqual(structureKey([dir("a")]), structureKey([dir("a", 0, 5, 4)]));
  assert.equal(structureKey([dir("a", 1)]), structureKey([dir("a", 2)]));
});

test("LatestRequest: only the newest request's replies apply", () => {
  const t = new LatestRequest();
  assert.equal(t.start(1), null);
  assert.equal(t.inFlight, 1);
  assert.equal(t.start(2), 1, "the older one is returned for cancellation");
  assert.equal(t.isCurrent(1), false, "stale partials of 1 are dropped");
  assert.equal(t.isCurrent(2), true);
  assert.equal(t.finish(1), false, "a late final of 1 is ignored");
  assert.equal(t.inFlight, 2);
  assert.equal(t.finish(2), true);
  assert.equal(t.inFlight, null);
  assert.equal(t.finish(2), false, "finishing twice does nothing");
  assert.equal(t.start(3), null);
});

test("LatestRequest drives a simulated stream: stale partials and finals are dropped", () => {
  const t = new LatestRequest();
  const view: string[] = [];
  const applied: number[] = [];
  const partial = (id: number, text: string) => { if (t.isCurrent(id)) view.push(text); };
  const final = (id: number, text: string) => { if (t.finish(id)) { view.push(text); applied.push(id); } };
  t.start(1);
  partial(1, "a");
  t.start(2);
  partial(1, "ab"); // late partial of the superseded request
  partial(2, "x");
  final(1, "abc");
  final(2, "xyz");
  assert.deepEqual(view, ["a", "x", "xyz"]);
  assert.deepEqual(applied, [2]);
});

class FakeTimers implements Timers {
  now = 0;
  private queue: { at: number; fn: () => void; id: number }[] = [];
  private next = 1;
  setTimeout = (fn: () => void, ms: number) => {
    const id = this.next++;
    this.queue.push({ at: this.now + ms, fn, id });
    return id;
  };
  clearTimeout = (id: any) => { this.queue = this.queue.filter((q) => q.id !== id); };
  advance(ms: number) {
    this.now += ms;
    for (;;) {
      const due = this.queue.filter((q) => q.at <= this.now).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.queue = this.queue.filter((q) => q !== due);
      due.fn();
    }
  }
}

test("debounced: a burst of slider events makes one call with the last value", () => {
  const timers = new FakeTimers();
  const calls: number[] = [];
  const d = debounced((v: number) => calls.push(v), 150, timers);
  for (let i = 0; i < 10; i++) { d(i); timers.advance(30); }
  assert.deepEqual(calls, []);
  assert.equal(d.pending, true);
  timers.advance(149);
  assert.deepEqual(calls, [9]);
  assert.equal(d.pending, false);
  d(42);
  d.cancel();
  timers.advance(500);
  assert.deepEqual(calls, [9]);
  d(7);
  d.flush();
  assert.deepEqual(calls, [9, 7]);
  d.flush(); // nothing pending
  timers.advance(500);
  assert.deepEqual(calls, [9, 7]);
});

test("debounced with real timers", async () => {
  const calls: string[] = [];
  const d = debounced((s: string) => calls.push(s), 20);
  d("a"); d("b");
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(calls, ["b"]);
});
