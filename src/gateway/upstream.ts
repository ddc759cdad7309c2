import type { Dispatcher } from "undici";
import { errors, Pool } from "undici";

export interface UpstreamTimeouts {
  /** TCP connect timeout (ms) */
  connectTimeoutMs: number;
  /** request sent → response headers (ms): the engine's time to first byte for streams */
  headersTimeoutMs: number;
  /** longest pause between two body chunks (ms) */
  bodyTimeoutMs: number;
}

/** How an upstream attempt failed. */
export type UpstreamFailureKind =
  | "connect"
  | "headers_timeout"
  | "body_timeout"
  | "reset"
  | "aborted"
  | "other";

const CONNECT_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EPIPE",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
]);

export function classifyUpstreamError(err: unknown): UpstreamFailureKind {
  const e = err as { code?: string; name?: string; cause?: { code?: string } };
  const code = e?.code ?? e?.cause?.code;
  if (err instanceof errors.HeadersTimeoutError || code === "UND_ERR_HEADERS_TIMEOUT")
    return "headers_timeout";
  if (err instanceof errors.BodyTimeoutError || code === "UND_ERR_BODY_TIMEOUT") return "body_timeout";
  if (err instanceof errors.RequestAbortedError || code === "UND_ERR_ABORTED" || e?.name === "AbortError")
    return "aborted";
  if (code === "UND_ERR_SOCKET" || code === "ECONNRESET" || code === "EPIPE") return "reset";
  if (code !== undefined && CONNECT_CODES.has(code)) return "connect";
  return "other";
}

/** True when an error before any response byte means the request can go to another pod. */
export function isRetryableBeforeResponse(err: unknown): boolean {
  const kind = classifyUpstreamError(err);
  return kind === "connect" || kind === "reset";
}

/** One undici Pool per engine origin, created on demand and closed when the pod goes away. */
export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();

  constructor(
    private readonly t: UpstreamTimeouts,
    private readonly connectionsPerPod: number,
  ) {}

  get(origin: string): Dispatcher {
    let p = this.pools.get(origin);
    if (p === undefined || p.closed || p.destroyed) {
      p = new Pool(origin, {
        connections: this.connectionsPerPod,
        connect: { timeout: this.t.connectTimeoutMs },
        headersTimeout: this.t.headersTimeoutMs,
        bodyTimeout: this.t.bodyTimeoutMs,
        keepAliveTimeout: 30_000,
      });
      this.pools.set(origin, p);
    }
    return p;
  }

  /** Close pools whose origin is not in `keep` (in-flight requests finish first). */
  retain(keep: Set<string>): void {
    for (const [origin, p] of this.pools) {
      if (keep.has(origin)) continue;
      this.pools.delete(origin);
      void p.close().catch(() => undefined);
    }
  }

  get size(): number {
    return this.pools.size;
  }

  async close(): Promise<void> {
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((p) => p.destroy().catch(() => undefined)));
  }
}
