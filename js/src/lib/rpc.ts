// Request/response custom messages keyed by id (the quak / mosaic-widget pattern).
// A widget asks the kernel to do something with request(); the kernel answers with
// one or more "reply" messages carrying the same id; the last one has done=true.
// A reply over the kernel's byte budget (widgets/_transport.py MAX_MESSAGE_BYTES) comes as
// consecutive chunk messages {type, id, chunk: {part, index, count, sizes, head}}, each with
// one slice of a byte stream (the content's JSON text, then every buffer); Chunks
// reassembles them, in any order, into the reply they came from.
// The kernel may also ask a view for an image ({type: "snapshot", id, format}, from
// widget.save_image): `onSnapshot` (set by lib/snapshot.ts imageButtons) answers it.
import { hydrate } from "./arrays";

type Raw = DataView | ArrayBuffer | Uint8Array;

export interface ChunkInfo {
  part: number;
  index: number;
  count: number;
  sizes: number[];
  head: Record<string, unknown>;
}

function bytesOf(buf: Raw): Uint8Array {
  if (buf instanceof Uint8Array) return buf;
  if (buf instanceof ArrayBuffer) return new Uint8Array(buf);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Collects chunk messages; `add` returns the whole [msg, buffers] once its last chunk arrives. */
export class Chunks {
  private groups = new Map<string, { got: Map<number, Uint8Array>; info: ChunkInfo }>();

  add(msg: { id: number; chunk: ChunkInfo }, buffers: Raw[]): [any, Uint8Array[]] | null {
    const info = msg.chunk;
    const key = `${msg.id}:${info.part}`;
    let g = this.groups.get(key);
    if (!g) {
      g = { got: new Map(), info };
      this.groups.set(key, g);
    }
    g.got.set(info.index, bytesOf(buffers[0] ?? new Uint8Array(0)));
    if (g.got.size < info.count) return null;
    this.groups.delete(key);
    const total = info.sizes.reduce((a, b) => a + b, 0);
    const all = new Uint8Array(total);
    let off = 0;
    for (let i = 0; i < info.count; i++) {
      const piece = g.got.get(i);
      if (!piece) throw new Error(`chunk ${i} of ${info.count} missing`);
      all.set(piece, off);
      off += piece.byteLength;
    }
    if (off !== total) throw new Error(`chunks hold ${off} bytes, expected ${total}`);
    const pieces: Uint8Array[] = [];
    off = 0;
    for (const n of info.sizes) {
      pieces.push(all.subarray(off, off + n));
      off += n;
    }
    const content = JSON.parse(new TextDecoder().decode(pieces[0]));
    return [{ ...info.head, content }, pieces.slice(1)];
  }

  /** Forget the incomplete chunks of request `id` (cancelled or stale). */
  drop(id: number): void {
    for (const key of [...this.groups.keys()]) if (key.startsWith(`${id}:`)) this.groups.delete(key);
  }

  get size(): number {
    return this.groups.size;
  }
}

export interface AnyModel {
  get(name: string): any;
  set(name: string, value: any): void;
  save_changes(): void;
  send(content: any, callbacks?: any, buffers?: ArrayBuffer[]): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string, cb?: (...args: any[]) => void): void;
}

export class KernelError extends Error {
  constructor(message: string, public kind: string, public traceback: string) {
    super(message);
  }
}

export class Cancelled extends Error {}

interface Pending {
  resolve: (value: any) => void;
  reject: (err: Error) => void;
  onPartial?: (content: any) => void;
}

export class Rpc {
  // Random start: two views of one widget share the comm, so their ids must not collide.
  private next = 1 + Math.floor(Math.random() * 1e9);
  private pending = new Map<number, Pending>();
  private chunks = new Chunks();
  /** Identifies this view: the kernel supersedes older requests per (method, view). */
  readonly view = Math.random().toString(36).slice(2);
  private handler = (msg: any, buffers: any[]) => this.receive(msg, buffers ?? []);
  /** Answers the kernel's {type: "snapshot", id, format} (see lib/snapshot.ts). */
  onSnapshot: ((msg: { id: number; format: string }) => void) | null = null;

  constructor(private model: AnyModel) {
    model.on("msg:custom", this.handler);
  }

  /** Send `method(params)` to the kernel; partial replies go to onPartial. */
  request<T = any>(method: string, params: Record<string, unknown> = {}, onPartial?: (content: any) => void): { id: number; promise: Promise<T> } {
    const id = this.next++;
    const promise = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onPartial });
    });
    this.model.send({ type: "request", id, method, params, view: this.view });
    return { id, promise };
  }

  /** Send `method(params)` (binary `buffers` too) without waiting for the reply (it is ignored). */
  notify(method: string, params: Record<string, unknown> = {}, buffers: Uint8Array[] = []): void {
    const id = this.next++;
    const bufs = buffers.map((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer);
    try {
      this.model.send({ type: "request", id, method, params, view: this.view }, undefined, bufs.length ? bufs : undefined);
    } catch {
      // no kernel (a static HTML copy): nothing to tell
    }
  }

  /** Ask the kernel to stop request `id`; its promise rejects with Cancelled. */
  cancel(id: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    this.chunks.drop(id);
    this.model.send({ type: "cancel", id });
    p.reject(new Cancelled(`request ${id} cancelled`));
  }

  receive(msg: any, buffers: any[]): void {
    if (msg && msg.type === "snapshot") {
      this.onSnapshot?.(msg);
      return;
    }
    if (!msg || msg.type !== "reply") return;
    const p = this.pending.get(msg.id);
    if (!p) return; // stale or cancelled
    if (msg.chunk) {
      const whole = this.chunks.add(msg, buffers);
      if (whole) this.receive(whole[0], whole[1]);
      return;
    }
    if (msg.error) {
      this.pending.delete(msg.id);
      this.chunks.drop(msg.id);
      if (msg.error.kind === "Cancelled") {
        p.reject(new Cancelled(msg.error.message));
        return;
      }
      p.reject(new KernelError(msg.error.message, msg.error.kind, msg.error.traceback ?? ""));
      return;
    }
    const content = hydrate(msg.content, buffers);
    if (msg.done) {
      this.pending.delete(msg.id);
      this.chunks.drop(msg.id);
      p.resolve(content);
    } else if (p.onPartial) {
      p.onPartial(content);
    }
  }

  dispose(): void {
    if (this.onSnapshot) this.notify("image_view", { view: this.view, open: false });
    this.onSnapshot = null;
    this.model.off("msg:custom", this.handler);
    for (const p of this.pending.values()) p.reject(new Cancelled("widget closed"));
    this.pending.clear();
    this.chunks = new Chunks();
  }
}
