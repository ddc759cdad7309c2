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

interface PrefillClaim {
  /** dispatch time (ms) */
  t: number;
  tokens: number;
  /** estimated prefill backlog ahead of it at dispatch (tokens) */
  ahead: number;
}

interface StreamLoad {
  requests: number;
  prefillRequests: number;
  prefillTokens: number;
  /** this gateway's requests still in prefill, in dispatch order */
  claims: Set<PrefillClaim>;
  /**
   * The fluid queue at the last claim's dispatch time under `rate` (drainedPrefillTokens' loop),
   * kept so a route reads it in O(1): a new claim extends it, a release or a new rate voids it.
   */
  drain: { rate: number; backlog: number; last: number } | null;
}

/**
 * Prefill rate (tokens per ms) learned per stream from observed time to first byte:
 * a request that found `ahead` tokens queued and brought `tokens` of its own took `ttft` ms, so
 * the stream prefilled about (ahead + tokens) / ttft tokens per ms (decode steps and step overhead
 * included). Moving average; kept after a stream goes idle, bounded by `maxStreams`.
 */
export interface PrefillRateOptions {
  alpha: number;
  maxStreams: number;
  now: () => number;
}

const RATE_DEFAULTS: PrefillRateOptions = { alpha: 0.2, maxStreams: 10_000, now: () => performance.now() };

/** In-flight work other gateway replicas sent to one stream (src/cluster/ keeps it). */
export interface RemoteLoad {
  requests: number;
  prefillRequests: number;
  prefillTokens: number;
}

/** The other replicas' load per stream; undefined when none of them has work on it. */
export interface RemoteLoadSource {
  remoteLoad(streamId: string): RemoteLoad | undefined;
}

/** Told every change of this gateway's own load, as deltas (the cluster link publishes them). */
export interface LoadListener {
  loadDelta(streamId: string, requests: number, prefillRequests: number, prefillTokens: number): void;
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
  private readonly rates = new Map<string, number>();
  private readonly r: PrefillRateOptions;
  private remote: RemoteLoadSource | null = null;
  private listener: LoadListener | null = null;

  constructor(
    private readonly engine: EngineLoadSource | null = null,
    rate: Partial<PrefillRateOptions> = {},
  ) {
    this.r = { ...RATE_DEFAULTS, ...rate };
  }

  /**
   * Share load with other replicas: `remote` adds their load to every view, `listener` hears
   * each change of this gateway's own (null: this gateway alone).
   */
  share(remote: RemoteLoadSource | null, listener: LoadListener | null): void {
    this.remote = remote;
    this.listener = listener;
  }

  /** Learned prefill rate of a stream (tokens/ms), undefined before its first sample. */
  prefillRate(streamId: string): number | undefined {
    return this.rates.get(streamId);
  }

  /**
   * The stream's prefill backlog now, if it had drained this gateway's in-prefill requests at the
   * learned rate since they were sent (a fluid FIFO queue); the plain sum before a rate is known.
   */
  drainedPrefillTokens(streamId: string, now = this.r.now()): number {
    const s = this.streams.get(streamId);
    if (s === undefined) return 0;
    const rate = this.rates.get(streamId);
    if (rate === undefined) return s.prefillTokens;
    if (s.claims.size === 0) return 0;
    let d = s.drain;
    if (d === null || d.rate !== rate) {
      let backlog = 0;
      let last = Number.NEGATIVE_INFINITY;
      for (const c of s.claims) {
        if (last > Number.NEGATIVE_INFINITY) backlog = Math.max(0, backlog - rate * (c.t - last));
        backlog += c.tokens;
        last = c.t;
      }
      d = { rate, backlog, last };
      s.drain = d;
    }
    return Math.max(0, d.backlog - rate * (now - d.last));
  }

  private learn(streamId: string, c: PrefillClaim, now: number): void {
    const ttft = now - c.t;
    if (!(ttft > 0)) return;
    const sample = (c.ahead + c.tokens) / ttft;
    const old = this.rates.get(streamId);
    if (old === undefined && this.rates.size >= this.r.maxStreams) {
      const oldest = this.rates.keys().next().value;
      if (oldest !== undefined) this.rates.delete(oldest);
    }
    this.rates.set(streamId, old === undefined ? sample : old + this.r.alpha * (sample - old));
  }

  begin(streamId: string, prefillTokens: number): LoadTicket {
    let s = this.streams.get(streamId);
    if (s === undefined) {
      s = { requests: 0, prefillRequests: 0, prefillTokens: 0, claims: new Set(), drain: null };
      this.streams.set(streamId, s);
    }
    const tokens = Math.max(0, Math.floor(prefillTokens));
    const now = this.r.now();
    const claim: PrefillClaim = { t: now, tokens, ahead: this.drainedPrefillTokens(streamId, now) };
    s.claims.add(claim);
    // the same step drainedPrefillTokens' loop takes for a claim appended last
    const d = s.drain;
    if (d !== null && s.claims.size > 1 && now >= d.last) {
      s.drain = {
        rate: d.rate,
        backlog: Math.max(0, d.backlog - d.rate * (now - d.last)) + tokens,
        last: now,
      };
    } else s.drain = null;
    s.requests++;
    s.prefillRequests++;
    s.prefillTokens += tokens;
    this.listener?.loadDelta(streamId, 1, 1, tokens);
    let prefillOpen = true;
    let open = true;
    const release = (prefill: boolean, request: boolean): void => {
      const cur = this.streams.get(streamId);
      if (cur === undefined) return;
      if (prefill) {
        cur.claims.delete(claim);
        cur.drain = null;
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
        this.learn(streamId, claim, this.r.now());
        release(true, false);
        this.listener?.loadDelta(streamId, 0, -1, -tokens);
      },
      done: () => {
        if (!open) return;
        open = false;
        const p = prefillOpen;
        prefillOpen = false;
        release(p, true);
        this.listener?.loadDelta(streamId, -1, p ? -1 : 0, p ? -tokens : 0);
      },
    };
  }

  load(streamId: string, pod: string): LoadView {
    const s = this.streams.get(streamId);
    const rankSep = streamId.lastIndexOf("#");
    const rank =
      rankSep > 0 && streamId.slice(0, rankSep) === pod ? Number(streamId.slice(rankSep + 1)) : null;
    const e = this.engine?.engineLoad(pod, rank);
    // the other replicas' prefill is not drained: their dispatch times are not known here
    const o = this.remote?.remoteLoad(streamId);
    const oTokens = o?.prefillTokens ?? 0;
    return {
      // null until the stream has a learned rate (a fixed shape: a spread object is slow on the hot path)
      drainedPrefillTokens: this.rates.has(streamId) ? this.drainedPrefillTokens(streamId) + oTokens : null,
      inflightRequests: (s?.requests ?? 0) + (o?.requests ?? 0),
      inflightPrefillRequests: (s?.prefillRequests ?? 0) + (o?.prefillRequests ?? 0),
      inflightPrefillTokens: (s?.prefillTokens ?? 0) + oTokens,
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
    return [...this.streams].map(([streamId, s]) => ({
      streamId,
      requests: s.requests,
      prefillRequests: s.prefillRequests,
      prefillTokens: s.prefillTokens,
    }));
  }
}
