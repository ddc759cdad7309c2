import type { LoadSource, LoadView } from "./types.ts";

/** Scraped engine figures (see engine-metrics.ts). */
export interface EngineLoad {
  waiting: number;
  running: number;
  kvUsage: number;
}

export interface EngineLoadSource {
  /** latest fresh figures for the pod (and rank, when the engine labels them), or undefined */
  engineLoad(pod: string, rank: number | null): EngineLoad | undefined;
}

interface StreamLoad {
  requests: number;
  prefillRequests: number;
  prefillTokens: number;
}

/** One in-flight request's claim on a stream's load; release each part exactly once. */
export interface LoadTicket {
  readonly streamId: string;
  /** the first response byte arrived: its prefill is done */
  prefillDone(): void;
  /** the request finished (any way): idempotent, also ends the prefill part */
  done(): void;
}

/**
 * In-flight requests and in-flight prefill tokens per stream at this gateway. Entries exist only
 * while a stream has in-flight work, so the map is bounded by the number of live requests.
 */
export class LoadTracker implements LoadSource {
  private readonly streams = new Map<string, StreamLoad>();

  constructor(private readonly engine: EngineLoadSource | null = null) {}

  begin(streamId: string, prefillTokens: number): LoadTicket {
    let s = this.streams.get(streamId);
    if (s === undefined) {
      s = { requests: 0, prefillRequests: 0, prefillTokens: 0 };
      this.streams.set(streamId, s);
    }
    const tokens = Math.max(0, Math.floor(prefillTokens));
    s.requests++;
    s.prefillRequests++;
    s.prefillTokens += tokens;
    let prefillOpen = true;
    let open = true;
    const release = (prefill: boolean, request: boolean): void => {
      const cur = this.streams.get(streamId);
      if (cur === undefined) return;
      if (prefill) {
        cur.prefillTokens = Math.max(0, cur.prefillTokens - tokens);
        cur.prefillRequests = Math.max(0, cur.prefillRequests - 1);
      }
      if (request) cur.requests = Math.max(0, cur.requests - 1);
      if (cur.requests === 0) this.streams.delete(streamId);
    };
    return {
      streamId,
      prefillDone: () => {
        if (!prefillOpen) return;
        prefillOpen = false;
        release(true, false);
      },
      done: () => {
        if (!open) return;
        open = false;
        const p = prefillOpen;
        prefillOpen = false;
        release(p, true);
      },
    };
  }

  load(streamId: string, pod: string): LoadView {
    const s = this.streams.get(streamId);
    const rankSep = streamId.lastIndexOf("#");
    const rank =
      rankSep > 0 && streamId.slice(0, rankSep) === pod ? Number(streamId.slice(rankSep + 1)) : null;
    const e = this.engine?.engineLoad(pod, rank);
    return {
      inflightRequests: s?.requests ?? 0,
      inflightPrefillRequests: s?.prefillRequests ?? 0,
      inflightPrefillTokens: s?.prefillTokens ?? 0,
      engineWaiting: e?.waiting ?? null,
      engineRunning: e?.running ?? null,
      kvUsage: e?.kvUsage ?? null,
    };
  }

  /** total in-flight requests (all streams) */
  totalInflight(): number {
    let n = 0;
    for (const s of this.streams.values()) n += s.requests;
    return n;
  }

  snapshot(): Array<{ streamId: string; requests: number; prefillRequests: number; prefillTokens: number }> {
    return [...this.streams].map(([streamId, s]) => ({ streamId, ...s }));
  }
}
