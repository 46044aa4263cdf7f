// The model shim of a static HTML copy (workbench.widgets.export): no kernel, no network.
// A widget's `_static` trait holds the replies its view asked for on its first render
// ({"replies": [{method, params, partials: [{content, buffers}], content, buffers} | {method, params, error}]},
// recorded by WorkbenchWidget.snapshot); StaticModel answers the view's requests from them and
// any other request with a "static copy" error, so a control that needs the kernel says so.
import type { AnyModel } from "./rpc";

export const STATIC_NOTE = "static copy: open the notebook to rerun";

type Buf = DataView | ArrayBuffer | Uint8Array;

export interface RecordedPart {
  content: unknown;
  buffers?: (Buf | null)[];
}

export interface Recorded extends RecordedPart {
  method: string;
  params?: Record<string, unknown>;
  partials?: RecordedPart[];
  error?: { message: string; kind?: string };
}

export interface SavedBuffer {
  path: (string | number)[];
  data: string;
  encoding?: string;
}

/** Bytes of a base64 string (atob where there is one, else Node's Buffer). */
export function fromBase64(data: string): DataView {
  const g = globalThis as any;
  let bytes: Uint8Array;
  if (typeof g.atob === "function") {
    const bin: string = g.atob(data);
    bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  } else {
    bytes = new Uint8Array(g.Buffer.from(data, "base64"));
  }
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Put each saved buffer back into a model's state at its path (as ipywidgets' put_buffers does). */
export function putBuffers(state: Record<string, any>, buffers: SavedBuffer[] = []): Record<string, any> {
  for (const b of buffers) {
    if (!b.path?.length) continue;
    let obj: any = state;
    for (const key of b.path.slice(0, -1)) {
      if (obj[key] === undefined || obj[key] === null) obj[key] = typeof key === "number" ? [] : {};
      obj = obj[key];
    }
    const raw = b.encoding === "hex" ? fromHex(b.data) : fromBase64(b.data);
    obj[b.path[b.path.length - 1]] = raw;
  }
  return state;
}

function fromHex(data: string): DataView {
  const bytes = new Uint8Array(data.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(data.slice(2 * i, 2 * i + 2), 16);
  return new DataView(bytes.buffer);
}

/** A JSON text with sorted keys: equal for the params Python recorded and those the view sends. */
export function canonical(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(canonical).join(",")}]`;
  if (x && typeof x === "object") {
    const keys = Object.keys(x as object).filter((k) => (x as any)[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((x as any)[k])}`).join(",")}}`;
  }
  return JSON.stringify(x ?? null);
}

/**
 * The recorded reply for a request: the one whose params equal the request's; failing that, on the
 * view's first request of that method (its first render, whose params the kernel may spell another
 * way), the only one recorded for the method. Otherwise null: this request needs the kernel.
 */
export function findReply(replies: Recorded[], method: string, params: unknown, first: boolean): Recorded | null {
  const same = replies.filter((r) => r.method === method);
  const want = canonical(params ?? {});
  const exact = same.find((r) => canonical(r.params ?? {}) === want);
  if (exact) return exact;
  return first && same.length === 1 ? same[0] : null;
}

/** The reply messages (partials, then the final one) that answer request `id` with `rec` (or a static error). */
export function replyMessages(rec: Recorded | null, id: number): [any, Buf[]][] {
  if (!rec) return [[{ type: "reply", id, done: true, error: { message: STATIC_NOTE, kind: "Static" } }, []]];
  if (rec.error) return [[{ type: "reply", id, done: true, error: { message: rec.error.message, kind: rec.error.kind ?? "Error" } }, []]];
  const bufs = (p: RecordedPart) => (p.buffers ?? []).map((b) => b ?? new Uint8Array(0));
  const out: [any, Buf[]][] = (rec.partials ?? []).map((p) => [{ type: "reply", id, done: false, content: p.content }, bufs(p)]);
  out.push([{ type: "reply", id, done: true, content: rec.content }, bufs(rec)]);
  return out;
}

type Handler = (...args: any[]) => void;

/** A widget model with no kernel: traits change locally (change events fire), requests replay recordings. */
export class StaticModel implements AnyModel {
  private handlers = new Map<string, Set<Handler>>();
  private asked = new Set<string>();
  /** Requests answered with the static error (method names), for tests and the banner. */
  readonly misses: string[] = [];

  constructor(
    private state: Record<string, any>,
    private schedule: (fn: () => void) => void = (fn) => setTimeout(fn, 0),
  ) {}

  get replies(): Recorded[] {
    return (this.state._static?.replies ?? []) as Recorded[];
  }

  get(name: string): any {
    return this.state[name];
  }

  set(name: string, value: any): void {
    const old = this.state[name];
    this.state[name] = value;
    if (old !== value) {
      this.emit(`change:${name}`, this, value);
      this.emit("change", this);
    }
  }

  save_changes(): void {}

  on(event: string, cb: Handler): void {
    for (const e of event.split(/\s+/).filter(Boolean)) {
      if (!this.handlers.has(e)) this.handlers.set(e, new Set());
      this.handlers.get(e)!.add(cb);
    }
  }

  off(event?: string, cb?: Handler): void {
    if (!event) {
      this.handlers.clear();
      return;
    }
    for (const e of event.split(/\s+/).filter(Boolean)) {
      if (cb) this.handlers.get(e)?.delete(cb);
      else this.handlers.delete(e);
    }
  }

  send(content: any): void {
    if (!content || content.type !== "request") return; // "cancel" and the rest: nothing to stop
    const method = String(content.method ?? "");
    const first = !this.asked.has(method);
    this.asked.add(method);
    const rec = findReply(this.replies, method, content.params ?? {}, first);
    if (!rec) this.misses.push(method);
    const messages = replyMessages(rec, content.id);
    this.schedule(() => {
      for (const [msg, buffers] of messages) this.emit("msg:custom", msg, buffers);
    });
  }

  private emit(event: string, ...args: any[]): void {
    for (const h of [...(this.handlers.get(event) ?? [])]) h(...args);
  }
}
