/**
 * The never-matches watch: a stream that is live but whose blocks never hold what the gateway
 * computes for the requests it routes there gets zero hits forever, and routing silently falls
 * back to load (the most common complaint in the peers' trackers). So after a request answered
 * by a stream, once its events had time to land, the gateway checks that the stream now holds
 * the request's first block in the index. `minMisses` probes in a row without a hit raise a
 * named warning with the likely cause (log `gateway.stream_never_matches`, gauge
 * `kvsync_gateway_stream_never_matches{stream,cause}`, a `never_matches` line in /admin/pods);
 * the next hit clears it (`gateway.stream_matches_again`).
 *
 * A miss counts only once the stream delivered a later batch than it had when the answer came
 * (a lagging link is not a misconfiguration); a probe whose stream stays silent is dropped.
 * One probe per stream is pending at a time (the others are not sampled), so the watch costs
 * one index match per stream per check at most and its memory is bounded by the streams.
 *
 * Causes, checked in this order when the warning is raised:
 * - `no_events`: the stream delivered no KV event at all (events disabled, another topic, or
 *   another socket publishes them);
 * - `block_size`: the stream holds the request's tokens in another block size than the one the
 *   gateway hashed them with (a declared size that is wrong before any event taught the real one);
 * - `tokenizer`: the engine counted another number of prompt tokens than the gateway's tokenizer
 *   or chat template produced;
 * - `tokens`: same count, other ids: tokenizer or template revision drift, another model
 *   revision, or blocks keyed with extra keys (cache salt, multimodal) the request did not carry.
 */
import { performance } from "node:perf_hooks";
import { Counter, Gauge, type Registry } from "prom-client";
import type { StreamState, StreamStatus } from "../events/types.ts";
import type { NamespaceRef } from "../index/types.ts";
import type { MatchSource, ScoredCandidate } from "../routing/types.ts";
import type { Logger } from "../util/log.ts";

export type NeverMatchesCause = "no_events" | "block_size" | "tokenizer" | "tokens";

export interface MatchWatchOptions {
  /** probes in a row without a hit before the warning (default 5) */
  minMisses: number;
  /** time after the answer before a probe is checked: its events must have landed (ms) */
  graceMs: number;
  /** how often due probes are checked (ms) */
  checkIntervalMs: number;
}

export const MATCH_WATCH_DEFAULTS: Readonly<MatchWatchOptions> = Object.freeze({
  minMisses: 5,
  graceMs: 1_000,
  checkIntervalMs: 500,
});

/** Block sizes tried when looking for the request's tokens under another size. */
const OTHER_SIZES = [1, 8, 16, 32, 64, 128, 256];

interface Probe {
  ns: NamespaceRef;
  tokenIds: ArrayLike<number>;
  /** prompt tokens the engine counted (null: not reported) */
  enginePromptTokens: number | null;
  /** performance.now() when the answer came (monotonic: a stepped wall clock moves nothing) */
  at: number;
  /** the stream's last applied seq then: a miss counts only once later batches arrived */
  seq: number | null;
}

interface StreamWatch {
  misses: number;
  hits: number;
  /** the raised warning, null while none */
  warned: { cause: NeverMatchesCause; message: string } | null;
  /** engine prompt token counts that differed from the gateway's, among the misses */
  countDiffers: boolean;
  pod: string;
}

export interface MatchWatchDeps {
  index: MatchSource;
  streamState: (streamId: string) => StreamState | undefined;
  /** a stream's counters (events applied, learned block size); absent: not known */
  streamStatus?: (streamId: string) => StreamStatus | undefined;
  registry: Registry;
  log: Logger;
}

/** A probe of a stream whose events have not moved since the answer is dropped after this (ms). */
const LAGGING_PROBE_MS = 30_000;

/** Most streams the watch keeps state for (the subscriber manager's bound). */
const MAX_WATCHED = 20_000;

export class MatchWatch {
  private readonly o: MatchWatchOptions;
  private readonly pending = new Map<string, Probe>();
  private readonly streams = new Map<string, StreamWatch>();
  private readonly timer: NodeJS.Timeout;
  private readonly probes: Counter<"result">;
  private readonly never: Gauge<"stream" | "cause">;

  constructor(
    private readonly d: MatchWatchDeps,
    options: Partial<MatchWatchOptions> = {},
  ) {
    this.o = { ...MATCH_WATCH_DEFAULTS, ...options };
    this.probes = new Counter({
      name: "kvsync_gateway_match_probes_total",
      help: "checks that a stream holds the first block of a request it answered (result: hit | miss), the never-matches watch's samples",
      labelNames: ["result"] as const,
      registers: [d.registry],
    });
    this.never = new Gauge({
      name: "kvsync_gateway_stream_never_matches",
      help: "1 for a live stream whose blocks never held what the gateway computed for the requests it routed there (cause: no_events | block_size | tokenizer | tokens)",
      labelNames: ["stream", "cause"] as const,
      registers: [d.registry],
    });
    this.timer = setInterval(() => this.check(performance.now()), this.o.checkIntervalMs);
    this.timer.unref();
  }

  /** A request `sc` answered: sample it when the stream has no probe pending. */
  observe(
    sc: ScoredCandidate,
    ns: NamespaceRef,
    tokenIds: ArrayLike<number>,
    promptTokens: number | null,
  ): void {
    const c = sc.candidate;
    const bs = c.blockSize ?? ns.blockSize;
    if (tokenIds.length <= bs || this.pending.has(c.streamId)) return;
    if (!this.streams.has(c.streamId) && this.streams.size >= MAX_WATCHED) return;
    const probeNs = bs === ns.blockSize ? ns : { ...ns, blockSize: bs };
    this.pending.set(c.streamId, {
      ns: probeNs,
      tokenIds,
      enginePromptTokens: promptTokens,
      at: performance.now(),
      seq: this.d.streamStatus?.(c.streamId)?.lastSeq ?? null,
    });
    if (!this.streams.has(c.streamId))
      this.streams.set(c.streamId, { misses: 0, hits: 0, warned: null, countDiffers: false, pod: c.pod });
  }

  /** Check every probe older than the grace time (`now`: performance.now(), monotonic). */
  check(now: number): void {
    for (const [id, p] of this.pending) {
      if (now - p.at < this.o.graceMs) continue;
      const w = this.streams.get(id);
      if (w === undefined || this.d.streamState(id) !== "live") {
        this.pending.delete(id);
        continue;
      }
      if (this.holds(id, p.ns, p.tokenIds)) {
        this.pending.delete(id);
        this.hit(id, w);
        continue;
      }
      // a stream whose events lag (a slow link) has not sent the request's blocks yet: a miss
      // counts once a later batch arrived, or when it never delivered any event at all
      const st = this.d.streamStatus?.(id);
      const moved = st === undefined || st.eventsApplied === 0 || (st.lastSeq ?? -1) > (p.seq ?? -1);
      if (!moved && now - p.at < LAGGING_PROBE_MS) continue;
      this.pending.delete(id);
      if (moved) this.miss(id, w, p);
    }
  }

  /** The warning of a stream for /admin/pods (none while it matches). */
  warnings(streamId: string): Array<{ code: string; message: string }> {
    const w = this.streams.get(streamId)?.warned;
    return w ? [{ code: "never_matches", message: `${w.cause}: ${w.message}` }] : [];
  }

  /** The stream is gone: forget it. */
  forget(streamId: string): void {
    this.pending.delete(streamId);
    const w = this.streams.get(streamId);
    if (w?.warned) this.never.remove({ stream: streamId, cause: w.warned.cause });
    this.streams.delete(streamId);
  }

  close(): void {
    clearInterval(this.timer);
  }

  private holds(streamId: string, ns: NamespaceRef, tokenIds: ArrayLike<number>): boolean {
    try {
      for (const m of this.d.index.match(ns, tokenIds))
        if (m.streamId === streamId) return m.matchedBlocks > 0;
    } catch {
      // a failing match proves nothing either way
      return true;
    }
    return false;
  }

  private hit(id: string, w: StreamWatch): void {
    this.probes.inc({ result: "hit" });
    w.hits++;
    w.misses = 0;
    w.countDiffers = false;
    if (w.warned === null) return;
    this.never.remove({ stream: id, cause: w.warned.cause });
    w.warned = null;
    this.d.log.info(
      { event: "gateway.stream_matches_again", stream: id, pod: w.pod },
      `stream ${id} holds the blocks of the requests it answers again`,
    );
  }

  private miss(id: string, w: StreamWatch, p: Probe): void {
    this.probes.inc({ result: "miss" });
    w.misses++;
    if (p.enginePromptTokens !== null && p.enginePromptTokens !== p.tokenIds.length) w.countDiffers = true;
    if (w.warned !== null || w.misses < this.o.minMisses) return;
    w.warned = this.diagnose(id, w, p);
    this.never.set({ stream: id, cause: w.warned.cause }, 1);
    this.d.log.warn(
      {
        event: "gateway.stream_never_matches",
        stream: id,
        pod: w.pod,
        cause: w.warned.cause,
        misses: w.misses,
        hits: w.hits,
      },
      `stream ${id}: ${w.misses} requests it answered left none of their blocks in its events: ${w.warned.message}`,
    );
  }

  private diagnose(id: string, w: StreamWatch, p: Probe): { cause: NeverMatchesCause; message: string } {
    const st = this.d.streamStatus?.(id);
    if (st !== undefined && st.eventsApplied === 0) {
      return {
        cause: "no_events",
        message:
          "the stream is connected but delivered no KV event: events disabled on the engine, published under another topic (--topic), or on another endpoint",
      };
    }
    const bs = p.ns.blockSize;
    for (const other of st?.blockSize != null ? [st.blockSize, ...OTHER_SIZES] : OTHER_SIZES) {
      if (other === bs || p.tokenIds.length <= other) continue;
      if (this.holds(id, { ...p.ns, blockSize: other }, p.tokenIds)) {
        return {
          cause: "block_size",
          message: `the engine's blocks hold the requests' tokens in blocks of ${other} tokens, the gateway hashed them in blocks of ${bs}: fix the pod's block size (engines file blockSize / annotation kvsync.io/block-size) or remove it`,
        };
      }
    }
    if (w.countDiffers) {
      return {
        cause: "tokenizer",
        message: `the engine counts ${p.enginePromptTokens} prompt tokens where the gateway's tokenizer gives ${p.tokenIds.length}: the gateway's tokenizer or chat template is not the engine's (--tokenizer)`,
      };
    }
    return {
      cause: "tokens",
      message:
        "the engine counts as many prompt tokens as the gateway but stores other token ids: a tokenizer or chat template revision that differs from the engine's, another model revision, or blocks keyed with extra keys (cache salt, multimodal) the requests did not carry",
    };
  }
}
