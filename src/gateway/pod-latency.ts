/**
 * Per-pod upstream slowness: a pod whose time to first byte is far above the rest of the fleet's.
 *
 * A pod that answers, but slowly, is not unhealthy (its probes pass) and its event stream can be
 * current: packet loss (TCP retransmits), a delayed or throttled link, an engine starved of CPU.
 * The fleet is the baseline: every pod serves the same model and the same mix of requests, so
 * whatever slows all of them at once (a loaded machine, a burst of long prompts) moves the
 * reference too and is not one pod's fault.
 *
 * Each pod keeps the times to first byte (request sent → response headers) of its last requests
 * in a fixed ring. Every `evaluate()` (the health timer, once a second) takes each pod's upper
 * quartile over the last `windowMs`; the reference is the median of the other pods' quartiles.
 * A pod is slow when its quartile is both `ratio` × the reference and `minExcessMs` above it (a
 * ratio alone fires on 3 ms against 1 ms) in `sustain` judgements in a row: on a loaded machine
 * one engine process descheduled for a second slows one pod's window and not the others'. Pods with fewer than `minSamples` requests in the
 * window are not judged and do not count in the reference. Entering and leaving `slow` are
 * logged (`gateway.pod_slow`, `gateway.pod_slow_cleared`) and counted; the quartile is a gauge.
 * Slowness does not take a pod out of rotation: routing already weighs load, and a slow pod
 * still holds its cache.
 */
import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";
import type { GatewayMetrics } from "./metrics.ts";

export interface SlownessOptions {
  /** a pod's TTFB quartile this many times the fleet's is slow (0 = off) */
  ratio: number;
  /** ...and at least this much above it (ms) */
  minExcessMs: number;
  /** the window judged (ms) */
  windowMs: number;
  /** requests a pod needs in the window to be judged */
  minSamples: number;
  /** consecutive slow judgements before a pod is reported slow (one engine descheduled for a second is not) */
  sustain: number;
}

export const SLOWNESS_DEFAULTS: Readonly<SlownessOptions> = Object.freeze({
  ratio: 3,
  minExcessMs: 100,
  windowMs: 3_000,
  minSamples: 5,
  sustain: 2,
});

/** Samples kept per pod: more than any window needs at a few hundred requests per second. */
const RING = 512;

interface PodWindow {
  at: Float64Array;
  ms: Float64Array;
  next: number;
  count: number;
  slow: boolean;
  /** consecutive judgements that found it slow */
  streak: number;
  /** the last judged quartile (ms), null when the pod had too few samples */
  p75Ms: number | null;
  /** a flapping pod's lines are rate-limited (the counter counts every entry) */
  logs: LogBucket;
}

export interface PodSlownessStatus {
  slow: boolean;
  p75Ms: number | null;
}

export class PodSlowness {
  readonly o: SlownessOptions;
  private readonly pods = new Map<string, PodWindow>();
  private readonly scratch = new Float64Array(RING);

  constructor(
    opts: Partial<SlownessOptions>,
    private readonly metrics: GatewayMetrics,
    private readonly log: Logger,
  ) {
    this.o = { ...SLOWNESS_DEFAULTS, ...opts };
    if (!(this.o.ratio >= 0) || !(this.o.minExcessMs >= 0))
      throw new Error("pod slowness ratio and excess must be >= 0");
    if (!(this.o.windowMs > 0) || !(this.o.minSamples >= 1) || !(this.o.sustain >= 1))
      throw new Error("pod slowness window must be > 0 ms and need >= 1 sample");
  }

  get enabled(): boolean {
    return this.o.ratio > 0;
  }

  /** A request to `pod` got its response headers `ms` after it was sent. */
  observe(pod: string, ms: number, now = performance.now()): void {
    if (!this.enabled || !Number.isFinite(ms)) return;
    let w = this.pods.get(pod);
    if (w === undefined) {
      w = {
        at: new Float64Array(RING),
        ms: new Float64Array(RING),
        next: 0,
        count: 0,
        slow: false,
        streak: 0,
        p75Ms: null,
        logs: new LogBucket(10_000),
      };
      this.pods.set(pod, w);
    }
    w.at[w.next] = now;
    w.ms[w.next] = ms;
    w.next = (w.next + 1) % RING;
    if (w.count < RING) w.count++;
  }

  /** Forget pods not in `names` (gone from discovery). */
  retain(names: Set<string>): void {
    for (const name of this.pods.keys()) {
      if (names.has(name)) continue;
      this.pods.delete(name);
      this.metrics.podTtfbP75.remove({ pod: name });
    }
  }

  status(pod: string): PodSlownessStatus | null {
    const w = this.pods.get(pod);
    return w === undefined ? null : { slow: w.slow, p75Ms: w.p75Ms };
  }

  /** Judge every pod on the last window. */
  evaluate(now = performance.now()): void {
    if (!this.enabled) return;
    for (const [pod, w] of this.pods) {
      w.p75Ms = this.quartile(w, now);
      if (w.p75Ms === null) this.metrics.podTtfbP75.remove({ pod });
      else this.metrics.podTtfbP75.set({ pod }, w.p75Ms / 1000);
    }
    for (const [pod, w] of this.pods) {
      const ref = this.reference(pod);
      // a pod not judged this window (too few requests, or no fleet to compare with) keeps its state
      if (w.p75Ms === null || ref === null) continue;
      const over = w.p75Ms >= this.o.ratio * ref && w.p75Ms - ref >= this.o.minExcessMs;
      w.streak = over ? w.streak + 1 : 0;
      const slow = w.slow ? over : w.streak >= this.o.sustain;
      if (slow === w.slow) continue;
      w.slow = slow;
      const fields = { pod, ttfbP75Ms: Math.round(w.p75Ms), fleetP75Ms: Math.round(ref) };
      if (slow) this.metrics.podSlow.inc({ pod });
      if (!w.logs.take(now)) continue;
      if (slow)
        this.log.warn(
          { event: "gateway.pod_slow", ...fields, ratio: this.o.ratio, minExcessMs: this.o.minExcessMs },
          "pod answers far slower than the rest of the fleet (lossy or slow link, starved engine)",
        );
      else
        this.log.info(
          { event: "gateway.pod_slow_cleared", ...fields },
          "pod answers as fast as the fleet again",
        );
    }
  }

  /** Median of the other judged pods' quartiles (null when none is judged). */
  private reference(pod: string): number | null {
    let n = 0;
    for (const [name, w] of this.pods) if (name !== pod && w.p75Ms !== null) this.scratch[n++] = w.p75Ms;
    if (n === 0) return null;
    const xs = this.scratch.subarray(0, n).sort();
    return n % 2 === 1 ? xs[(n - 1) / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
  }

  /** Upper quartile of `w`'s samples in the window, null below `minSamples`. */
  private quartile(w: PodWindow, now: number): number | null {
    const from = now - this.o.windowMs;
    let n = 0;
    for (let i = 0; i < w.count; i++) if (w.at[i] >= from) this.scratch[n++] = w.ms[i];
    if (n < this.o.minSamples) return null;
    const xs = this.scratch.subarray(0, n).sort();
    return xs[Math.min(n - 1, Math.floor(n * 0.75))];
  }
}
