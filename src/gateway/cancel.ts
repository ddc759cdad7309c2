import { EventEmitter } from "node:events";

/**
 * A request's cancel signal in the shape undici documents for `signal` (an EventEmitter with
 * `aborted`, emitting "abort"). An AbortController + AbortSignal pair costs ~13 µs of CPU per
 * request on Node 20 (EventTarget machinery, listeners through WeakRefs), more than the routing
 * decision: the request path uses this instead and keeps AbortSignal off it.
 */
export class Cancel extends EventEmitter {
  aborted = false;
  reason: unknown = undefined;

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.emit("abort");
  }

  /** Abort when `parent` aborts; returns the unlink. */
  follow(parent: Cancel): () => void {
    const forward = () => this.abort(parent.reason);
    if (parent.aborted) {
      forward();
      return () => {};
    }
    parent.once("abort", forward);
    return () => parent.removeListener("abort", forward);
  }
}
