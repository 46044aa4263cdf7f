import { test } from "node:test";
import assert from "node:assert/strict";
import { Rpc, KernelError } from "../src/lib/rpc";
import { canonical, findReply, putBuffers, replyMessages, STATIC_NOTE, StaticModel, type Recorded } from "../src/lib/static-logic";

const REPLIES: Recorded[] = [
  { method: "patterns", params: { prompt: "a b", layers: [0, 1] },
    partials: [{ content: { layer: 0, thumbs: { __array__: 0, dtype: "float32", shape: [2] } }, buffers: [null] }],
    content: { tokens: ["a", " b"] }, buffers: [] },
  { method: "head", params: { prompt: "a b", layer: 0, head: 1 }, content: { seq: 2 }, buffers: [] },
  { method: "head", params: { prompt: "a b", layer: 1, head: 0 }, content: { seq: 3 }, buffers: [] },
  { method: "graph", params: {}, error: { message: "no model", kind: "ValueError" } },
];

test("canonical ignores key order and undefined keys", () => {
  assert.equal(canonical({ b: 1, a: [1, { d: 2, c: null }] }), canonical({ a: [1, { c: null, d: 2 }], b: 1, e: undefined }));
  assert.notEqual(canonical({ a: 1 }), canonical({ a: 2 }));
});

test("findReply: exact params, or the only recording on a method's first request", () => {
  assert.equal(findReply(REPLIES, "head", { head: 0, layer: 1, prompt: "a b" }, false)?.content, REPLIES[2].content);
  // a first request whose params the kernel spelled another way still gets the only recording
  assert.equal(findReply(REPLIES, "patterns", { prompt: "a b", layers: [1, 0] }, true), REPLIES[0]);
  // a later request with other params needs the kernel
  assert.equal(findReply(REPLIES, "patterns", { prompt: "other", layers: [0, 1] }, false), null);
  // two recordings and no exact match: no guess, even on the first request
  assert.equal(findReply(REPLIES, "head", { prompt: "a b", layer: 5, head: 5 }, true), null);
  assert.equal(findReply(REPLIES, "unknown", {}, true), null);
});

test("putBuffers restores base64 buffers at their paths", () => {
  const state: any = { _static: { replies: [{ partials: [{ buffers: [null] }] }] } };
  putBuffers(state, [{ path: ["_static", "replies", 0, "partials", 0, "buffers", 0], data: "AAECAw==", encoding: "base64" }]);
  const dv = state._static.replies[0].partials[0].buffers[0] as DataView;
  assert.deepEqual([...new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength)], [0, 1, 2, 3]);
});

test("replyMessages: partials then the final reply; a miss or a recorded error is an error reply", () => {
  const msgs = replyMessages(REPLIES[0], 9);
  assert.deepEqual(msgs.map(([m]) => [m.id, m.done]), [[9, false], [9, true]]);
  assert.equal(replyMessages(null, 3)[0][0].error.message, STATIC_NOTE);
  assert.equal(replyMessages(REPLIES[3], 3)[0][0].error.kind, "ValueError");
});

test("StaticModel answers an Rpc from the recordings, asynchronously, and says 'static copy' otherwise", async () => {
  const buf = new Float32Array([0.25, 0.5]);
  const replies = structuredClone(REPLIES);
  replies[0].partials![0].buffers = [new DataView(buf.buffer)];
  const model = new StaticModel({ prompt: "a b", _static: { replies } });
  const rpc = new Rpc(model);
  const parts: any[] = [];
  let sync = true;
  const first = rpc.request("patterns", { prompt: "a b", layers: [0, 1] }, (p) => { parts.push(p); assert.equal(sync, false); });
  sync = false;
  assert.deepEqual(await first.promise, { tokens: ["a", " b"] });
  assert.equal(parts.length, 1);
  assert.deepEqual([...parts[0].thumbs.data], [0.25, 0.5]);
  await assert.rejects(rpc.request("patterns", { prompt: "new text", layers: [0, 1] }).promise,
    (e: unknown) => e instanceof KernelError && e.message === STATIC_NOTE && e.kind === "Static");
  await assert.rejects(rpc.request("graph").promise, (e: unknown) => e instanceof KernelError && e.message === "no model");
  assert.deepEqual(model.misses, ["patterns"]);
  model.send({ type: "cancel", id: 1 }); // ignored
});

test("StaticModel: set fires change events locally; off removes them", () => {
  const model = new StaticModel({ prompt: "x" });
  const seen: string[] = [];
  const cb = () => seen.push(model.get("prompt"));
  model.on("change:prompt", cb);
  model.set("prompt", "y");
  model.set("prompt", "y"); // unchanged: no event
  model.off("change:prompt", cb);
  model.set("prompt", "z");
  assert.deepEqual(seen, ["y"]);
});
