// Request/response custom messages keyed by id (the quak / mosaic-widget pattern).
// A widget asks the kernel to do something with request(); the kernel answers with
// one or more "reply" messages carrying the same id; the last one has done=true.
import { hydrate } from "./arrays";

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
  /** Identifies this view: the kernel supersedes older requests per (method, view). */
  readonly view = Math.random().toString(36).slice(2);
  private handler = (msg: any, buffers: any[]) => this.receive(msg, buffers ?? []);

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

  /** Ask the kernel to stop request `id`; its promise rejects with Cancelled. */
  cancel(id: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    this.model.send({ type: "cancel", id });
    p.reject(new Cancelled(`request ${id} cancelled`));
  }

  receive(msg: any, buffers: any[]): void {
    if (!msg || msg.type !== "reply") return;
    const p = this.pending.get(msg.id);
    if (!p) return; // stale or cancelled
    if (msg.error) {
      this.pending.delete(msg.id);
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
      p.resolve(content);
    } else if (p.onPartial) {
      p.onPartial(content);
    }
  }

  dispose(): void {
    this.model.off("msg:custom", this.handler);
    for (const p of this.pending.values()) p.reject(new Cancelled("widget closed"));
    this.pending.clear();
  }
}
