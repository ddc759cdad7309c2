/**
 * Per-stream watch over the engine's batch timestamps as batches arrive live: event lag (the
 * batch is applied long after the engine stamped it: a delayed, lossy or throttled link, a
 * starved router) and clock skew (the batch is stamped ahead of our clock: the engine's clock
 * runs ahead, or ours behind).
 *
 * Lag is judged on the smallest lag of a window (1 s by default): one late batch (a GC pause, a
 * burst read after a busy event loop) does not make a window late; a link that delays every
 * batch does. A stream enters `high` when a window's floor exceeds the threshold and leaves it
 * when a window's floor is back under it; each transition is logged (a flapping stream is
 * rate-limited: a bucket of 5 lines refilled one per `logEveryMs`; the counter always counts)
 * and the floor is a gauge.
 *
 * A batch stamped more than `clockSkewWarnMs` ahead of our clock is skew, not negative lag: it
 * is kept out of the lag histogram and the lag window (it would read as 0 s and hide a real
 * delay), counted, logged (rate-limited) and its skew is a gauge.
 */

import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";

export interface LagWatchOptions {
  /** a window whose smallest lag exceeds this is "lag high" (ms; 0 = off). Default 250. */
  lagWarnMs?: number;
  /** a batch stamped this far ahead of our clock is clock skew (ms; 0 = off). Default 2000. */
  clockSkewWarnMs?: number;
  /** lag window (ms). Default 1000. */
  windowMs?: number;
  /** at most one log line per stream and kind this often (ms). Default 10 s. */
  logEveryMs?: number;
}

export const LAG_WATCH_DEFAULTS = {
  lagWarnMs: 250,
  clockSkewWarnMs: 2000,
  windowMs: 1000,
  logEveryMs: 10_000,
};

export interface LagSink {
  /** a live batch's lag, seconds (only batches not judged skewed) */
  lag(seconds: number): void;
  /** a window closed: its smallest lag, seconds */
  lagFloor(seconds: number): void;
  /** the stream entered the `high` state */
  lagHigh(): void;
  /** a batch stamped ahead of our clock beyond the threshold: by how much, seconds */
  skew(seconds: number): void;
  /** the skew is gone (a batch within the threshold again) */
  skewCleared(): void;
}

export class LagWatch {
  private readonly o: Required<LagWatchOptions>;
  private windowStart = -1;
  private windowMin = Number.POSITIVE_INFINITY;
  private high = false;
  private skewed = false;
  private readonly lagLogs: LogBucket;
  private lastSkewLog = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly sink: LagSink,
    private readonly log: Logger,
    private readonly ctx: Record<string, unknown>,
    opts: LagWatchOptions = {},
    private readonly now: () => number = Date.now,
  ) {
    this.o = { ...LAG_WATCH_DEFAULTS, ...opts };
    this.lagLogs = new LogBucket(this.o.logEveryMs);
  }

  /** A batch applied while the stream is live, stamped `ts` (engine clock, epoch seconds). */
  observe(ts: number, seq: number): void {
    if (!Number.isFinite(ts)) return;
    const now = this.now();
    const lagMs = now - ts * 1000;
    if (this.o.clockSkewWarnMs > 0 && -lagMs > this.o.clockSkewWarnMs) {
      this.sink.skew(-lagMs / 1000);
      if (!this.skewed || now - this.lastSkewLog >= this.o.logEveryMs) {
        this.lastSkewLog = now;
        this.log.warn(
          {
            event: "subscriber.clock_skew",
            ...this.ctx,
            seq,
            skewMs: Math.round(-lagMs),
            thresholdMs: this.o.clockSkewWarnMs,
          },
          "engine batch stamped ahead of the local clock: clocks disagree (lag of this stream is not measured)",
        );
      }
      this.skewed = true;
      return;
    }
    if (this.skewed) {
      this.skewed = false;
      this.sink.skewCleared();
      this.log.info(
        { event: "subscriber.clock_skew_cleared", ...this.ctx, seq },
        "engine clock agrees again",
      );
    }
    const lag = Math.max(0, lagMs);
    this.sink.lag(lag / 1000);
    if (this.o.lagWarnMs <= 0) return;
    if (this.windowStart < 0) this.windowStart = now;
    this.windowMin = Math.min(this.windowMin, lag);
    if (now - this.windowStart < this.o.windowMs) return;
    const floor = this.windowMin;
    this.windowStart = now;
    this.windowMin = Number.POSITIVE_INFINITY;
    this.sink.lagFloor(floor / 1000);
    const high = floor > this.o.lagWarnMs;
    if (high === this.high) return;
    this.high = high;
    if (high) this.sink.lagHigh();
    if (this.lagLogs.take(now)) {
      if (high)
        this.log.warn(
          {
            event: "subscriber.lag_high",
            ...this.ctx,
            seq,
            lagMs: Math.round(floor),
            thresholdMs: this.o.lagWarnMs,
          },
          "every batch of the last window arrived late: events reach the index behind the engine",
        );
      else
        this.log.info(
          { event: "subscriber.lag_normal", ...this.ctx, seq, lagMs: Math.round(floor) },
          "event lag back under the threshold",
        );
    }
  }

  /** Forget the window (the stream left `live`: lag across a gap means nothing). */
  reset(): void {
    this.windowStart = -1;
    this.windowMin = Number.POSITIVE_INFINITY;
  }
}
