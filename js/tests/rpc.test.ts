import { test } from "node:test";
import assert from "node:assert/strict";
import { Chunks, Rpc, type AnyModel } from "../src/lib/rpc";

/** A fake comm: records what the view sends, lets the test deliver kernel messages. */
function fakeModel() {
  const handlers: ((msg: any, buffers: any[]) => void)[] = [];
  const sent: any[] = [];
  const model: AnyModel = {
    get: () => undefined,
    set: () => {},
    save_changes: () => {},
    send: (content: any) => sent.push(content),
    on: (_e: string, cb: any) => handlers.push(cb),
    off: () => {},
  };
  return { model, sent, deliver: (msg: any, buffers: any[] = []) => handlers.forEach((h) => h(msg, buffers)) };
}

/** Split a reply like widgets/_transport.split: JSON text then buffers, cut into `room`-byte slices. */
function chunked(msg: any, buffers: Uint8Array[], room: number, part = 0): [any, DataView[]][] {
  const { content, ...head } = msg;
  const pieces = [new TextEncoder().encode(JSON.stringify(content)), ...buffers];
  const sizes = pieces.map((p) => p.byteLength);
  const all = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
  let off = 0;
  for (const p of pieces) { all.set(p, off); off += p.byteLength; }
  const count = Math.ceil(all.byteLength / room);
  const out: [any, DataView[]][] = [];
  for (let index = 0; index < count; index++) {
    const slice = all.slice(index * room, (index + 1) * room);
    out.push([{ type: "reply", id: msg.id, chunk: { part, index, count, sizes, head } }, [new DataView(slice.buffer)]]);
  }
  return out;
}

const f32 = (n: number, k = 0) => Float32Array.from({ length: n }, (_, i) => i * 0.5 + k);
const bytes = (a: Float32Array) => new Uint8Array(a.buffer);

test("a small reply is one message, as before", async () => {
  const { model, sent, deliver } = fakeModel();
  const rpc = new Rpc(model);
  const parts: any[] = [];
  const { id, promise } = rpc.request("go", { x: 1 }, (c) => parts.push(c));
  assert.equal(sent[0].type, "request");
  const a = f32(5);
  deliver({ type: "reply", id, done: false, content: { layer: 0, pattern: { __array__: 0, dtype: "float32", shape: [5] } } }, [new DataView(a.buffer)]);
  deliver({ type: "reply", id, done: true, content: { tokens: ["a"] } });
  assert.deepEqual(await promise, { tokens: ["a"] });
  assert.equal(parts.length, 1);
  assert.deepEqual(Array.from(parts[0].pattern.data), Array.from(a));
});

for (const order of ["in order", "reversed", "shuffled"]) {
  test(`chunked partial and final replies reassemble (${order})`, async () => {
    const { model, deliver } = fakeModel();
    const rpc = new Rpc(model);
    const parts: any[] = [];
    const { id, promise } = rpc.request("go", {}, (c) => parts.push(c));
    const a = f32(1001), b = f32(333, 7);
    const partial = { type: "reply", id, done: false, content: { layer: 3, a: { __array__: 0, dtype: "float32", shape: [7, 143] }, b: { __array__: 1, dtype: "float32", shape: [333] } } };
    let msgs = chunked(partial, [bytes(a), bytes(b)], 997, 0);
    assert.ok(msgs.length > 4);
    if (order === "reversed") msgs = msgs.reverse();
    if (order === "shuffled") msgs = [msgs[2], msgs[0], ...msgs.slice(3), msgs[1]];
    for (const [m, bufs] of msgs.slice(0, -1)) deliver(m, bufs);
    assert.equal(parts.length, 0, "nothing before the last chunk");
    deliver(...msgs[msgs.length - 1]);
    assert.equal(parts.length, 1);
    assert.equal(parts[0].layer, 3);
    assert.deepEqual(parts[0].a.shape, [7, 143]);
    assert.deepEqual(Array.from(parts[0].a.data), Array.from(a));
    assert.deepEqual(Array.from(parts[0].b.data), Array.from(b));
    for (const [m, bufs] of chunked({ type: "reply", id, done: true, content: { tokens: ["x", "y"] } }, [], 5, 1)) deliver(m, bufs);
    assert.deepEqual(await promise, { tokens: ["x", "y"] });
  });
}

test("a chunked error rejects; cancelling drops incomplete chunks", async () => {
  const { model, deliver } = fakeModel();
  const rpc = new Rpc(model);
  const { id, promise } = rpc.request("go");
  for (const [m, bufs] of chunked({ type: "reply", id, done: true, error: { message: "boom", kind: "ValueError" }, content: null }, [], 4)) deliver(m, bufs);
  await assert.rejects(promise, /boom/);
  const r2 = rpc.request("go");
  const msgs = chunked({ type: "reply", id: r2.id, done: true, content: { v: 1 } }, [bytes(f32(100))], 64);
  deliver(...msgs[0]);
  rpc.cancel(r2.id);
  await assert.rejects(r2.promise, /cancelled/);
  for (const [m, bufs] of msgs.slice(1)) deliver(m, bufs); // stale: ignored
});

test("Chunks keeps parts of one id apart", () => {
  const c = new Chunks();
  const one = chunked({ type: "reply", id: 9, done: false, content: { k: 1 } }, [], 3, 0);
  const two = chunked({ type: "reply", id: 9, done: false, content: { k: 2 } }, [], 3, 1);
  assert.equal(c.add(two[0][0], two[0][1]), null);
  let got: any = null;
  for (const [m, b] of one) got = c.add(m, b) ?? got;
  assert.deepEqual(got[0], { type: "reply", id: 9, done: false, content: { k: 1 } });
  assert.equal(c.size, 1);
  for (const [m, b] of two.slice(1)) got = c.add(m, b) ?? got;
  assert.equal(got[0].content.k, 2);
  assert.equal(c.size, 0);
});
