import { test } from "node:test";
import assert from "node:assert/strict";
import { contrast, fileName, foreignObjectSvg, over, parseColor, pixelSize, pngSize, xmlSafe } from "../src/lib/snapshot";
import { Rpc, type AnyModel } from "../src/lib/rpc";

test("pngSize reads the IHDR width and height", () => {
  const b = new Uint8Array(33);
  b.set([137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82]);
  new DataView(b.buffer).setUint32(16, 1032);
  new DataView(b.buffer).setUint32(20, 177);
  assert.deepEqual(pngSize(b), { width: 1032, height: 177 });
  assert.equal(pngSize(new Uint8Array(10)), null);
  b[1] = 0;
  assert.equal(pngSize(b), null);
});

test("parseColor handles the computed-style forms", () => {
  assert.deepEqual(parseColor("rgb(17, 17, 17)"), [17, 17, 17, 1]);
  assert.deepEqual(parseColor("rgba(0, 0, 0, 0.54)"), [0, 0, 0, 0.54]);
  assert.deepEqual(parseColor("#fff"), [255, 255, 255, 1]);
  assert.deepEqual(parseColor("#1a7f37"), [26, 127, 55, 1]);
  assert.deepEqual(parseColor("transparent"), [0, 0, 0, 0]);
  assert.equal(parseColor("var(--x)"), null);
});

test("contrast follows WCAG", () => {
  assert.ok(Math.abs(contrast([0, 0, 0, 1], [255, 255, 255, 1]) - 21) < 1e-9);
  assert.equal(contrast([9, 9, 9, 1], [9, 9, 9, 1]), 1);
  // JupyterLab's secondary text: 54% black on white is just above 4.5, 54% white on #111 too
  const light = over([0, 0, 0, 0.54], [255, 255, 255, 1]);
  assert.ok(contrast(light, [255, 255, 255, 1]) > 4.5);
  const dark = over([255, 255, 255, 0.54], [17, 17, 17, 1]);
  assert.ok(contrast(dark, [17, 17, 17, 1]) > 4.5);
  // the light theme's grey on the dark background is not readable
  assert.ok(contrast([85, 85, 85, 1], [17, 17, 17, 1]) < 4.5);
});

test("pixel sizes, file names, the foreignObject wrapper", () => {
  assert.deepEqual(pixelSize(516.4, 88, 2), { width: 1033, height: 176 });
  assert.deepEqual(pixelSize(10, 10, NaN), { width: 10, height: 10 });
  assert.deepEqual(pixelSize(0, 0, 1), { width: 1, height: 1 });
  assert.equal(fileName("neuron-dashboard", "png"), "neuron-dashboard.png");
  assert.equal(fileName("../a b", "svg"), "a-b.svg");
  assert.equal(fileName("", "png"), "widget.png");
  const s = foreignObjectSvg("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", 30, 20);
  assert.match(s, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="30" height="20"/);
  assert.match(s, /<foreignObject x="0" y="0" width="30" height="20"><div/);
});

test("Rpc passes the kernel's snapshot message to onSnapshot and notify sends buffers", () => {
  const handlers: ((msg: any, buffers: any[]) => void)[] = [];
  const sent: [any, ArrayBuffer[] | undefined][] = [];
  const model: AnyModel = {
    get: () => undefined, set: () => {}, save_changes: () => {},
    send: (content: any, _cb?: any, buffers?: ArrayBuffer[]) => sent.push([content, buffers]),
    on: (_e: string, cb: any) => handlers.push(cb), off: () => {},
  };
  const rpc = new Rpc(model);
  const got: any[] = [];
  rpc.onSnapshot = (m) => got.push(m);
  handlers.forEach((h) => h({ type: "snapshot", id: 7, format: "svg" }, []));
  assert.deepEqual(got, [{ type: "snapshot", id: 7, format: "svg" }]);
  rpc.notify("image", { id: 7, format: "png" }, [new Uint8Array([1, 2, 3]).subarray(1)]);
  const [msg, bufs] = sent[0];
  assert.equal(msg.type, "request");
  assert.equal(msg.method, "image");
  assert.deepEqual(msg.params, { id: 7, format: "png" });
  assert.deepEqual([...new Uint8Array(bufs![0])], [2, 3]);
  rpc.dispose(); // tells the kernel this view is gone
  assert.equal(sent[1][0].method, "image_view");
  assert.deepEqual(sent[1][0].params, { view: rpc.view, open: false });
});

test("xmlSafe replaces what XML cannot hold", () => {
  assert.equal(xmlSafe("a\u0001b\u0009c\n\ud800d\ud83d\ude00"), "a\ufffdb\u0009c\n\ufffdd\ud83d\ude00");
});
