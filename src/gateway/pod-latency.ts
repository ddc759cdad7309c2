/**
 * Per-pod upstream slowness: a pod that answers far slower than the rest of the fleet.
 *
 * A pod that answers, but slowly, is not unhealthy (its probes pass) and its event stream can be
 * current: packet loss (TCP retransmits), a delayed or throttled link, an engine starved of CPU.
 * The fleet is the baseline: every pod serves the same model and the same mix of requests, so
 * whatever slows all of them at once (a loaded machine, a burst of long prompts) moves the
 * reference too and is not one pod's fault.
 *
 * Two latencies are kept per pod, each in a fixed ring: the time to first byte of its requests
 * (request sent → response headers) and the round trip of its health probes (a timed-out probe
 * counts as the probe timeout). Requests are many but routing steers them away from a slow pod,
 * so a slow pod soon has too few to judge; probes come once a second whatever routing does.
 * Every `evaluate()` (the health timer, once a second) takes, per source, each pod's upper
 * quartile over the last `windowMs`; the reference is the median of the other pods' quartiles.
 * A source finds a pod slow when its quartile is both `ratio` × the reference and `minExcessMs`
 * above it (a ratio alone fires on 3 ms against 1 ms). A pod is slow after `sustain` judgements
 * in a row in which a source found it slow. A pod with fewer than the source's minimum samples
 * in the window is not judged by it and does not count in its reference. Entering and leaving
 * `slow` are logged (`gateway.pod_slow`, `gateway.pod_slow_cleared`; rate-limited per pod) and
 * counted; the quartiles are gauges. Slowness does not take a pod out of rotation: routing
 * already weighs load, and a slow pod still holds its cache.
 */
import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";
import type { GatewayMetrics } from "./metrics.ts";

export interface SlownessOptions {
  /** a pod's latency quartile this many times the fleet's is slow (0 = off) */
  ratio: number;
  /** ...and at least this much above it (ms) */
  minExcessMs: number;
  /** the window judged (ms) */
  windowMs: number;
  /** requests a pod needs in the window to be judged on its time to first byte */
  minSamples: number;
  /** answered (or timed-out) probes a pod needs in the window to be judged on them */
  minProbes: number;
  /** consecutive slow judgements before a pod is reported slow */
  sustain: number;
}

export const SLOWNESS_DEFAULTS: Readonly<SlownessOptions> = Object.freeze({
  ratio: 3,
  minExcessMs: 100,
  windowMs: 5_000,
  minSamples: 5,
  minProbes: 4,
  sustain: 3,
});

/** Samples kept per pod and source: more than any window needs at a few hundred requests a second. */
const RING = 512;

type Source = "ttfb" | "probe";

class Ring {
  readonly at = new Float64Array(RING);
  readonly ms = new Float64Array(RING);
  next = 0;
  count = 0;
  /** the last judged quartile (ms), null when too few samples */
  p75Ms: number | null = null;

  push(now: number, ms: number): void {
    this.at[this.next] = now;
    this.ms[this.next] = ms;
    this.next = (this.next + 1) % RING;
    if (this.count < RING) this.count++;
  }
}

interface PodWindow {
  ttfb: Ring;
  probe: Ring;
  slow: boolean;
  /** consecutive judgements that found it slow */
  streak: number;
  /** a flapping pod's lines are rate-limited (the counter counts every entry) */
  logs: LogBucket;
}

export interface PodSlownessStatus {
  slow: boolean;
  ttfbP75Ms: number | null;
  probeP75Ms: number | null;
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
    if (
      !(this.o.windowMs > 0) ||
      !(this.o.minSamples >= 1) ||
      !(this.o.minProbes >= 1) ||
      !(this.o.sustain >= 1)
    )
      throw new Error("pod slowness window must be > 0 ms, minimum samples and sustain >= 1");
  }

  get enabled(): boolean {
    return this.o.ratio > 0;
  }

  /** A request to `pod` got its response headers `ms` after it was sent. */
  observe(pod: string, ms: number, now = performance.now()): void {
    if (this.enabled && Number.isFinite(ms)) this.window(pod).ttfb.push(now, ms);
  }

  /** A health probe of `pod` answered after `ms` (or timed out: the timeout). */
  observeProbe(pod: string, ms: number, now = performance.now()): void {
    if (this.enabled && Number.isFinite(ms)) this.window(pod).probe.push(now, ms);
  }

  /** Forget pods not in `names` (gone from discovery). */
  retain(names: Set<string>): void {
    for (const name of this.pods.keys()) {
      if (names.has(name)) continue;
      this.pods.delete(name);
      this.metrics.podLatencyP75.remove({ pod: name, source: "ttfb" });
      this.metrics.podLatencyP75.remove({ pod: name, source: "probe" });
    }
  }

  status(pod: string): PodSlownessStatus | null {
    const w = this.pods.get(pod);
    return w === undefined ? null : { slow: w.slow, ttfbP75Ms: w.ttfb.p75Ms, probeP75Ms: w.probe.p75Ms };
  }

  /** Judge every pod on the last window. */
  evaluate(now = performance.now()): void {
    if (!this.enabled) return;
    for (const [pod, w] of this.pods) {
      this.judgeQuartile(pod, "ttfb", w.ttfb, this.o.minSamples, now);
      this.judgeQuartile(pod, "probe", w.probe, this.o.minProbes, now);
    }
    for (const [pod, w] of this.pods) {
      const t = this.over(pod, "ttfb");
      const p = this.over(pod, "probe");
      // not judged by either source (too few samples, no fleet to compare with): state kept
      if (t === null && p === null) continue;
      const over = t === true || p === true;
      w.streak = over ? w.streak + 1 : 0;
      const slow = w.slow ? over : w.streak >= this.o.sustain;
      if (slow === w.slow) continue;
      w.slow = slow;
      if (slow) this.metrics.podSlow.inc({ pod });
      if (!w.logs.take(now)) continue;
      const fields = {
        pod,
        via: t === true ? "ttfb" : p === true ? "probe" : null,
        ttfbP75Ms: roundOrNull(w.ttfb.p75Ms),
        fleetTtfbP75Ms: roundOrNull(this.reference(pod, "ttfb")),
        probeP75Ms: roundOrNull(w.probe.p75Ms),
        fleetProbeP75Ms: roundOrNull(this.reference(pod, "probe")),
      };
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

  private window(pod: string): PodWindow {
    let w = this.pods.get(pod);
    if (w === undefined) {
      w = { ttfb: new Ring(), probe: new Ring(), slow: false, streak: 0, logs: new LogBucket(10_000) };
      this.pods.set(pod, w);
    }
    return w;
  }

  private judgeQuartile(pod: string, source: Source, r: Ring, min: number, now: number): void {
    r.p75Ms = this.quartile(r, min, now);
    if (r.p75Ms === null) this.metrics.podLatencyP75.remove({ pod, source });
    else this.metrics.podLatencyP75.set({ pod, source }, r.p75Ms / 1000);
  }

  /** Does `source` find `pod` slow (null: not judged)? */
  private over(pod: string, source: Source): boolean | null {
    const mine = this.pods.get(pod)?.[source].p75Ms ?? null;
    const ref = this.reference(pod, source);
    if (mine === null || ref === null) return null;
    return mine >= this.o.ratio * ref && mine - ref >= this.o.minExcessMs;
  }

  /** Median of the other judged pods' quartiles of `source` (null when none is judged). */
  private reference(pod: string, source: Source): number | null {
    let n = 0;
    for (const [name, w] of this.pods) {
      const q = w[source].p75Ms;
      if (name !== pod && q !== null) this.scratch[n++] = q;
    }
    if (n === 0) return null;
    const xs = this.scratch.subarray(0, n).sort();
    return n % 2 === 1 ? xs[(n - 1) / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
  }

  /** Upper quartile of the ring's samples in the window, null below `min`. */
  private quartile(r: Ring, min: number, now: number): number | null {
    const from = now - this.o.windowMs;
    let n = 0;
    for (let i = 0; i < r.count; i++) if (r.at[i] >= from) this.scratch[n++] = r.ms[i];
    if (n < min) return null;
    const xs = this.scratch.subarray(0, n).sort();
    return xs[Math.min(n - 1, Math.floor(n * 0.75))];
  }
}

const roundOrNull = (v: number | null) => (v === null ? null : Math.round(v));
