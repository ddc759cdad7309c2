import type { Logger } from "../util/log.ts";
import { definedOnly } from "./shared.ts";
import type { TrustSource } from "./types.ts";

/**
 * The prediction feedback loop: what the index claimed a stream would reuse (the routed
 * candidate's matched tokens) against what its engine reports it reused
 * (`usage.prompt_tokens_details.cached_tokens`).
 *
 * Only over-prediction counts against a stream: claimed blocks the engine did not reuse are
 * claims the index holds wrongly (events the engine never published, removals lost before their
 * seq, a cache reset nobody heard of). Under-prediction is normal: concurrent requests store
 * blocks the index has not seen yet. Each sample's agreement is min(reported, predicted) /
 * predicted; a stream's trust is a moving average of it (1 until it has evidence). Below
 * `suspectBelow` the stream is `suspect`: kv-aware weighs its claims by its trust (until then by
 * 1), one warning says why, and a rebuild of the stream (drop, replay from the engine's oldest
 * buffered batch) is requested. At `recoverAbove` again it counts fully.
 *
 * Evidence ages: between samples, the distance of a stream's trust from 1 halves every
 * `halfLifeMs`. A suspect stream gets few requests (its claims are down-weighted, and a lossy
 * engine's rebuild changes nothing), so its samples alone may never lift it again even after the
 * cause went away (an engine restarted, its lost events long evicted). Aged trust lets its claims
 * weigh more as time passes; once they count again, requests follow and the next samples judge it
 * afresh: a stream still wrong falls back under `suspectBelow` within a few samples (each moves
 * trust by `alpha` of the way), so a broken stream costs a few requests per half-life at most.
 */
export interface FeedbackOptions {
  /** weight of the newest agreement sample in a stream's trust (moving average) */
  alpha: number;
  /** samples per stream that only warm up (the index may still be catching up) */
  warmupSamples: number;
  /** trust below which a stream is suspect */
  suspectBelow: number;
  /** trust at which a suspect stream counts fully again */
  recoverAbove: number;
  /** at most one warning per stream per this many ms */
  warnIntervalMs: number;
  /** at most one rebuild request per stream per this many ms (a refused one is retried after 1 s) */
  rebuildIntervalMs: number;
  /** weight of the newest sample in the per-pod |error| average (the error-ratio gauge) */
  errorAlpha: number;
  /** streams (and pods) tracked at most (the oldest is forgotten) */
  maxStreams: number;
  /** between samples, 1 - trust halves every this many ms (0: trust moves only with samples) */
  halfLifeMs: number;
  /** the clock (ms, monotonic); tests inject one */
  now?: () => number;
}

export const FEEDBACK_DEFAULTS: Readonly<FeedbackOptions> = Object.freeze({
  alpha: 0.2,
  warmupSamples: 3,
  suspectBelow: 0.5,
  recoverAbove: 0.8,
  warnIntervalMs: 60_000,
  rebuildIntervalMs: 60_000,
  errorAlpha: 0.1,
  maxStreams: 10_000,
  halfLifeMs: 600_000,
});

/** One stream's trust as the admin API and metrics show it. */
export interface StreamTrust {
  stream: string;
  pod: string;
  rank: number | null;
  /** 0..1: the moving average of agreement (kv-aware multiplies the claims by it while suspect) */
  trust: number;
  suspect: boolean;
  /** samples seen (warm-up included) */
  samples: number;
  /** tokens claimed per sample and of those, tokens the engine reported reusing (moving averages) */
  predictedTokens: number;
  reportedTokens: number;
}

export interface FeedbackHooks {
  /** drop the stream and replay the engine's buffer from its oldest batch; false: not now */
  rebuild?(streamId: string): boolean;
  /** a stream's trust state changed (suspect or not) */
  changed?(streamId: string): void;
}

interface StreamStat {
  pod: string;
  rank: number | null;
  trust: number;
  samples: number;
  suspect: boolean;
  predicted: number;
  reported: number;
  lastWarn: number;
  lastRebuild: number;
  rebuildRefused: boolean;
  /** when `trust` was last brought up to date (ms on the feedback's clock) */
  at: number;
}

interface PodError {
  ewma: number;
  samples: number;
}

export class PredictionFeedback implements TrustSource {
  private readonly o: FeedbackOptions;
  private readonly streams = new Map<string, StreamStat>();
  private readonly pods = new Map<string, PodError>();
  private readonly now: () => number;

  constructor(
    private readonly log: Logger,
    options: Partial<FeedbackOptions> = {},
    private readonly hooks: FeedbackHooks = {},
  ) {
    this.o = { ...FEEDBACK_DEFAULTS, ...definedOnly(options) };
    if (!(this.o.alpha > 0 && this.o.alpha <= 1)) throw new RangeError("trust alpha must be in (0, 1]");
    if (!(this.o.suspectBelow >= 0 && this.o.suspectBelow <= this.o.recoverAbove && this.o.recoverAbove <= 1))
      throw new RangeError("trust thresholds must satisfy 0 <= suspect-below <= recover-above <= 1");
    if (!(this.o.halfLifeMs >= 0)) throw new RangeError("trust half-life must be >= 0 ms");
    this.now = this.o.now ?? (() => performance.now());
  }

  get options(): Readonly<FeedbackOptions> {
    return this.o;
  }

  /**
   * The routing factor of a stream's claims (hot path: one map read): its trust while it is
   * suspect, else 1. A stream not yet suspect keeps its full share of ties, so the evidence that
   * makes it suspect (or clears it) keeps coming; one unlucky response does not divert traffic.
   */
  trust(streamId: string): number {
    const s = this.streams.get(streamId);
    if (s === undefined || !s.suspect) return 1;
    this.age(streamId, s);
    return s.suspect ? s.trust : 1;
  }

  /**
   * One response: the index claimed `predicted` cached tokens on the stream, the engine reported
   * `actual`. `weigh` false (a policy whose prediction is not the index's): only the per-pod error
   * average learns. Returns the signed error (predicted - actual) in tokens.
   */
  observe(
    stream: { streamId: string; pod: string; rank: number | null },
    predicted: number,
    actual: number,
    promptTokens: number,
    weigh = true,
  ): number {
    const err = predicted - actual;
    this.podError(stream.pod, Math.min(1, Math.abs(err) / Math.max(1, promptTokens)));
    // a prediction of nothing claims nothing: no evidence either way
    if (!weigh || predicted <= 0) return err;
    const s = this.statOf(stream.streamId, stream.pod, stream.rank);
    s.samples++;
    if (s.samples <= this.o.warmupSamples) return err;
    this.age(stream.streamId, s);
    const agreement = Math.min(1, Math.max(0, actual) / predicted);
    s.trust += this.o.alpha * (agreement - s.trust);
    s.predicted += this.o.alpha * (predicted - s.predicted);
    s.reported += this.o.alpha * (Math.min(predicted, Math.max(0, actual)) - s.reported);
    if (!s.suspect && s.trust < this.o.suspectBelow) {
      s.suspect = true;
      this.warn(stream.streamId, s);
      this.hooks.changed?.(stream.streamId);
    } else if (s.suspect && s.trust >= this.o.recoverAbove) {
      this.trusted(stream.streamId, s, "agreement");
    }
    if (s.suspect) this.maybeRebuild(stream.streamId, s);
    return err;
  }

  /** Bring `s.trust` up to now: its distance from 1 halves every half-life since the last update. */
  private age(streamId: string, s: StreamStat): void {
    const now = this.now();
    const dt = now - s.at;
    s.at = now;
    if (this.o.halfLifeMs <= 0 || dt <= 0 || s.trust >= 1) return;
    s.trust = 1 - (1 - s.trust) * 2 ** (-dt / this.o.halfLifeMs);
    if (s.suspect && s.trust >= this.o.recoverAbove) this.trusted(streamId, s, "aged");
  }

  private trusted(streamId: string, s: StreamStat, why: "agreement" | "aged"): void {
    s.suspect = false;
    this.log.info(
      {
        event: "routing.stream_trusted",
        stream: streamId,
        pod: s.pod,
        rank: s.rank,
        trust: round(s.trust),
        why,
      },
      why === "agreement"
        ? "the stream's cache claims agree with its engine again: they count fully"
        : "no evidence against the stream's cache claims for a while: they count fully again, the next responses judge them",
    );
    this.hooks.changed?.(streamId);
  }

  /** Every tracked stream's trust. */
  snapshot(): StreamTrust[] {
    const out: StreamTrust[] = [];
    for (const [stream, s] of this.streams) {
      this.age(stream, s);
      out.push(this.view(stream, s));
    }
    return out;
  }

  /** One stream's trust, null before any evidence. */
  stream(streamId: string): StreamTrust | null {
    const s = this.streams.get(streamId);
    if (s === undefined) return null;
    this.age(streamId, s);
    return this.view(streamId, s);
  }

  /** The admin API's warning for a suspect stream (none otherwise). */
  warnings(streamId: string): Array<{ code: string; message: string }> {
    const s = this.streams.get(streamId);
    if (s !== undefined) this.age(streamId, s);
    if (s === undefined || !s.suspect) return [];
    return [{ code: "prediction_suspect", message: causeText(s) }];
  }

  /** mean relative |error| per pod (the error-ratio gauge) */
  errors(): Array<{ pod: string; meanRelError: number; samples: number }> {
    return [...this.pods].map(([pod, e]) => ({ pod, meanRelError: e.ewma, samples: e.samples }));
  }

  /** A pod went away: forget it and its streams. */
  forget(pod: string): void {
    this.pods.delete(pod);
    for (const [id, s] of this.streams) if (s.pod === pod) this.streams.delete(id);
  }

  private view(stream: string, s: StreamStat): StreamTrust {
    return {
      stream,
      pod: s.pod,
      rank: s.rank,
      trust: s.trust,
      suspect: s.suspect,
      samples: s.samples,
      predictedTokens: Math.round(s.predicted),
      reportedTokens: Math.round(s.reported),
    };
  }

  private statOf(streamId: string, pod: string, rank: number | null): StreamStat {
    let s = this.streams.get(streamId);
    if (s !== undefined) return s;
    if (this.streams.size >= this.o.maxStreams) {
      const oldest = this.streams.keys().next().value;
      if (oldest !== undefined) this.streams.delete(oldest);
    }
    s = {
      pod,
      rank,
      trust: 1,
      samples: 0,
      suspect: false,
      predicted: 0,
      reported: 0,
      lastWarn: Number.NEGATIVE_INFINITY,
      lastRebuild: Number.NEGATIVE_INFINITY,
      rebuildRefused: false,
      at: this.now(),
    };
    this.streams.set(streamId, s);
    return s;
  }

  private podError(pod: string, rel: number): void {
    let e = this.pods.get(pod);
    if (e === undefined) {
      if (this.pods.size >= this.o.maxStreams) {
        const oldest = this.pods.keys().next().value;
        if (oldest !== undefined) this.pods.delete(oldest);
      }
      e = { ewma: rel, samples: 0 };
      this.pods.set(pod, e);
    }
    e.samples++;
    e.ewma = e.samples === 1 ? rel : e.ewma + this.o.errorAlpha * (rel - e.ewma);
  }

  private warn(streamId: string, s: StreamStat): void {
    const now = this.now();
    if (now - s.lastWarn < this.o.warnIntervalMs) return;
    s.lastWarn = now;
    this.log.warn(
      {
        event: "routing.stream_suspect",
        stream: streamId,
        pod: s.pod,
        rank: s.rank,
        trust: round(s.trust),
        samples: s.samples,
        predictedTokens: Math.round(s.predicted),
        reportedTokens: Math.round(s.reported),
      },
      causeText(s),
    );
  }

  private maybeRebuild(streamId: string, s: StreamStat): void {
    const rebuild = this.hooks.rebuild;
    if (rebuild === undefined) return;
    const now = this.now();
    const wait = s.rebuildRefused ? 1_000 : this.o.rebuildIntervalMs;
    if (now - s.lastRebuild < wait) return;
    s.lastRebuild = now;
    s.rebuildRefused = !rebuild(streamId);
    if (!s.rebuildRefused)
      this.log.info(
        { event: "routing.stream_rebuild_requested", stream: streamId, pod: s.pod, rank: s.rank },
        "suspect stream: dropping its entries and replaying the engine's buffer from its oldest batch",
      );
  }
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function causeText(s: StreamStat): string {
  const pct = s.predicted > 0 ? Math.round((100 * s.reported) / s.predicted) : 0;
  return (
    `the engine keeps reusing fewer tokens than the index claims for this stream (${pct} % of the ` +
    `claimed tokens lately, trust ${round(s.trust)}): likely KV events lost without a seq gap ` +
    "(an engine that drops events before publishing them: evictions or a cache reset the index " +
    "never heard of); its claims are down-weighted and its stream is rebuilt from the engine's buffer"
  );
}
