import { Agent, request } from "undici";
import type { Logger } from "../util/log.ts";
import { Cancel } from "./cancel.ts";
import type { GatewayMetrics } from "./metrics.ts";
import { PodSlowness, SLOWNESS_DEFAULTS, type SlownessOptions } from "./pod-latency.ts";

export interface HealthOptions {
  /** period of the active probe of every pod's `probePath` (ms) */
  probeIntervalMs: number;
  /** a probe that has not answered after this long failed (ms) */
  probeTimeoutMs: number;
  /** consecutive failed probes that take a pod out of rotation */
  unhealthyAfterProbes: number;
  /** consecutive failed requests (connect error, reset, first-byte timeout) that take a pod out */
  unhealthyAfterFailures: number;
  /** the engine's liveness endpoint (vLLM: GET /health, 200 when the engine loop runs) */
  probePath: string;
  /** the slowness signal against the fleet (pod-latency.ts) */
  slowness: SlownessOptions;
}

/** a probe timer this late (ms, or half the timeout if more) says the gateway stalled, not the pod */
const LATE_MIN_MS = 100;
/** times a probe's timeout restarts after firing late before it counts */
const MAX_LATE_REARMS = 2;

export const HEALTH_DEFAULTS: Readonly<HealthOptions> = Object.freeze({
  probeIntervalMs: 1_000,
  probeTimeoutMs: 1_000,
  unhealthyAfterProbes: 2,
  unhealthyAfterFailures: 3,
  probePath: "/health",
  slowness: SLOWNESS_DEFAULTS,
});

/** What `PodHealth` reports about one pod (admin API, explain, metrics). */
export interface PodHealthStatus {
  pod: string;
  healthy: boolean;
  /** why the pod is out of rotation (null while healthy) */
  reason: string | null;
  /** ms since the epoch of the last change between healthy and unhealthy (or of first sight) */
  since: number;
  probeFailures: number;
  requestFailures: number;
  /** ms since the epoch of the last successful probe, null before the first */
  lastProbeOk: number | null;
  inflight: number;
  /** answering far slower than the fleet (gateway.pod_slow); still in rotation */
  slow: boolean;
  /** upper quartile of its time to first byte over the slowness window (ms), null when unjudged */
  ttfbP75Ms: number | null;
  /** upper quartile of its health probes' round trips over the slowness window (ms) */
  probeP75Ms: number | null;
}

/** The abort reason of a request cut because its pod went out of rotation. */
export class PodUnhealthyError extends Error {
  override readonly name = "PodUnhealthyError";
  readonly code = "KVSYNC_POD_UNHEALTHY";
  constructor(
    readonly pod: string,
    readonly reason: string,
  ) {
    super(`pod ${pod} is out of rotation (${reason})`);
  }
}

/**
 * One request in flight to a pod: its abort signal (also aborted when `parent` aborts), the time
 * of its last upstream byte, and why the health signal cut it (null when it did not).
 */
export class TrackedRequest {
  private readonly ac = new Cancel();
  private readonly unlink: () => void;
  last = performance.now();
  abortedBy: PodUnhealthyError | null = null;
  /** the relay is waiting for its client to drain (see clientWait) */
  waitingOnClient = false;

  constructor(
    readonly pod: string,
    parent: Cancel,
    private readonly onRelease: (t: TrackedRequest) => void,
  ) {
    this.unlink = this.ac.follow(parent);
  }

  /** aborted with the parent, or by the health signal */
  get signal(): Cancel {
    return this.ac;
  }

  /** An upstream byte arrived: the pod is demonstrably alive for this request. */
  touch(): void {
    this.last = performance.now();
  }

  /**
   * The relay waits for its client to drain: it reads nothing from the pod meanwhile, so the
   * pod's silence says nothing about the pod. The silence clock restarts when the wait ends.
   */
  clientWait(waiting: boolean): void {
    this.waitingOnClient = waiting;
    if (!waiting) this.touch();
  }

  abort(err: PodUnhealthyError): void {
    if (this.ac.aborted) return;
    this.abortedBy = err;
    this.ac.abort(err);
  }

  release(): void {
    this.unlink();
    this.onRelease(this);
  }
}

interface PodState {
  name: string;
  origin: string;
  healthy: boolean;
  reason: string | null;
  since: number;
  probeFailures: number;
  requestFailures: number;
  lastProbeOk: number | null;
  probing: AbortController | null;
  inflight: Set<TrackedRequest>;
}

/**
 * The per-pod health signal. Passive: connect failures, resets and first-byte timeouts of real
 * requests count against a pod; `unhealthyAfterFailures` in a row take it out of rotation.
 * Active: every `probeIntervalMs` each pod's `/health` is probed with `probeTimeoutMs`;
 * `unhealthyAfterProbes` failures in a row take it out, one answered probe brings it back. A pod
 * that goes out of rotation has its in-flight requests aborted once they have been silent for
 * longer than a probe period (a stream still delivering tokens is left to finish). State is kept
 * only for the pods last given to `setPods`.
 */
export class PodHealth {
  readonly o: HealthOptions;
  private readonly pods = new Map<string, PodState>();
  private readonly agent: Agent;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  readonly slowness: PodSlowness;

  constructor(
    opts: Partial<HealthOptions>,
    private readonly metrics: GatewayMetrics,
    private readonly log: Logger,
  ) {
    this.o = { ...HEALTH_DEFAULTS, ...opts, slowness: { ...SLOWNESS_DEFAULTS, ...opts.slowness } };
    this.slowness = new PodSlowness(this.o.slowness, metrics, log);
    if (!(this.o.probeIntervalMs > 0) || !(this.o.probeTimeoutMs > 0))
      throw new Error("health probe interval and timeout must be > 0 ms");
    if (!(this.o.unhealthyAfterProbes >= 1) || !(this.o.unhealthyAfterFailures >= 1))
      throw new Error("health thresholds (failed probes, failed requests) must be >= 1");
    // probes get their own connections: a request pool saturated by a slow pod must not fail them
    // the probe's own timer judges timeouts (probe()); undici's are only a backstop past it
    const backstopMs = this.o.probeTimeoutMs * (MAX_LATE_REARMS + 2);
    this.agent = new Agent({
      connections: 1,
      connect: { timeout: backstopMs },
      headersTimeout: backstopMs,
      bodyTimeout: backstopMs,
      keepAliveTimeout: Math.max(this.o.probeIntervalMs * 4, 4_000),
    });
  }

  /** The pods to watch (name → http base URL); state of pods not listed is forgotten. */
  setPods(pods: Iterable<{ name: string; http: string }>): void {
    const seen = new Set<string>();
    for (const p of pods) {
      seen.add(p.name);
      const origin = originOf(p.http);
      const s = this.pods.get(p.name);
      // a pod back at another address is a new engine: it starts with a clean record
      if (s !== undefined && s.origin === origin) continue;
      if (s !== undefined) s.probing?.abort();
      this.pods.set(p.name, {
        name: p.name,
        origin,
        healthy: true,
        reason: null,
        since: Date.now(),
        probeFailures: 0,
        requestFailures: 0,
        lastProbeOk: null,
        probing: null,
        inflight: s?.inflight ?? new Set(),
      });
      if (this.timer !== null) this.probe(this.pods.get(p.name)!);
    }
    for (const [name, s] of this.pods) {
      if (seen.has(name)) continue;
      s.probing?.abort();
      this.pods.delete(name);
    }
    this.slowness.retain(seen);
  }

  start(): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setInterval(() => this.tick(), this.o.probeIntervalMs);
    this.timer.unref();
    this.tick();
  }

  /** Pods never seen are healthy: the signal only ever takes pods out on evidence. */
  isHealthy(pod: string): boolean {
    return this.pods.get(pod)?.healthy ?? true;
  }

  status(pod: string): PodHealthStatus | null {
    const s = this.pods.get(pod);
    return s === undefined ? null : this.statusOf(s);
  }

  snapshot(): PodHealthStatus[] {
    return [...this.pods.values()].map((s) => this.statusOf(s));
  }

  /** Register a request to `pod`; `release()` it when done. */
  track(pod: string, parent: Cancel): TrackedRequest {
    const s = this.pods.get(pod);
    const t = new TrackedRequest(pod, parent, (x) => {
      this.pods.get(pod)?.inflight.delete(x);
    });
    s?.inflight.add(t);
    return t;
  }

  /** A request to `pod` got its response headers, `ttfbMs` after it was sent. */
  requestSucceeded(pod: string, ttfbMs?: number): void {
    const s = this.pods.get(pod);
    if (s === undefined) return;
    s.requestFailures = 0;
    if (ttfbMs !== undefined) this.slowness.observe(pod, ttfbMs);
  }

  /** A request to `pod` failed in a way that says the pod itself is in trouble. */
  requestFailed(pod: string, kind: string): void {
    const s = this.pods.get(pod);
    if (s === undefined) return;
    s.requestFailures++;
    if (s.healthy && s.requestFailures >= this.o.unhealthyAfterFailures) this.eject(s, kind);
  }

  private tick(): void {
    if (this.closed) return;
    const now = performance.now();
    for (const s of this.pods.values()) {
      if (s.probing === null) this.probe(s);
      if (!s.healthy) this.sweep(s, now);
    }
    this.slowness.evaluate(now);
  }

  private probe(s: PodState): void {
    const ac = new AbortController();
    s.probing = ac;
    const sentAt = performance.now();
    const timeoutMs = this.o.probeTimeoutMs;
    let due = performance.now() + timeoutMs;
    let rearms = 0;
    const expire = () => {
      // a timer that runs late means this process was stalled (a blocked or saturated event
      // loop), not the pod: the answer may be sitting unread. The pod gets its timeout again
      // (at most MAX_LATE_REARMS times), so a starved gateway does not eject every pod at once.
      const late = performance.now() - due;
      if (late > Math.max(LATE_MIN_MS, timeoutMs / 2) && rearms < MAX_LATE_REARMS) {
        rearms++;
        this.metrics.healthProbes.inc({ result: "late_timer" });
        due = performance.now() + timeoutMs;
        timer = setTimeout(expire, timeoutMs);
        return;
      }
      ac.abort();
    };
    let timer = setTimeout(expire, timeoutMs);
    request(`${s.origin}${this.o.probePath}`, { dispatcher: this.agent, signal: ac.signal })
      .then(async (r) => {
        await r.body.dump();
        return r.statusCode >= 200 && r.statusCode < 300 ? null : `probe_status_${r.statusCode}`;
      })
      .catch(() => (ac.signal.aborted ? "probe_timeout" : "probe_error"))
      .then((failure) => {
        clearTimeout(timer);
        // a probe of a pod since removed or replaced says nothing about the current one
        if (this.pods.get(s.name) !== s || s.probing !== ac || this.closed) return;
        s.probing = null;
        this.metrics.healthProbes.inc({ result: failure === null ? "ok" : failure });
        // a timed-out probe took at least the timeout; a refused one says nothing about speed
        if (failure === null || failure === "probe_timeout")
          this.slowness.observeProbe(s.name, Math.min(performance.now() - sentAt, this.o.probeTimeoutMs));
        if (failure === null) this.probeOk(s);
        else {
          s.probeFailures++;
          if (!s.healthy) return;
          if (s.probeFailures >= this.o.unhealthyAfterProbes) this.eject(s, failure);
          // confirm at once rather than a period later: a stopped pod is out within
          // interval + unhealthyAfterProbes × timeout (a bounded burst: the pod is out after it)
          else this.probe(s);
        }
      });
  }

  private probeOk(s: PodState): void {
    s.probeFailures = 0;
    s.lastProbeOk = Date.now();
    if (s.healthy) return;
    const downMs = Date.now() - s.since;
    this.log.info(
      { event: "gateway.pod_healthy", pod: s.name, was: s.reason, downMs },
      "pod answers its health probe again: back in rotation",
    );
    s.healthy = true;
    s.reason = null;
    s.since = Date.now();
    s.requestFailures = 0;
  }

  private eject(s: PodState, reason: string): void {
    s.healthy = false;
    s.reason = reason;
    s.since = Date.now();
    this.metrics.podEjections.inc({ reason });
    this.log.warn(
      {
        event: "gateway.pod_unhealthy",
        pod: s.name,
        reason,
        probeFailures: s.probeFailures,
        requestFailures: s.requestFailures,
        inflight: s.inflight.size,
      },
      "pod out of rotation",
    );
    this.sweep(s, performance.now());
  }

  /** Abort the pod's requests that have had no upstream byte for longer than a probe period. */
  private sweep(s: PodState, now: number): void {
    const silentMs = Math.max(this.o.probeIntervalMs, this.o.probeTimeoutMs);
    let n = 0;
    for (const t of s.inflight) {
      if (now - t.last < silentMs || t.signal.aborted || t.waitingOnClient) continue;
      t.abort(new PodUnhealthyError(s.name, s.reason ?? "unhealthy"));
      s.inflight.delete(t);
      n++;
    }
    if (n === 0) return;
    this.metrics.upstreamAborts.inc({ reason: "pod_unhealthy" }, n);
    this.log.warn(
      { event: "gateway.upstream_aborted", pod: s.name, reason: s.reason, requests: n },
      "requests to an unhealthy pod aborted",
    );
  }

  private statusOf(s: PodState): PodHealthStatus {
    const slow = this.slowness.status(s.name);
    return {
      pod: s.name,
      healthy: s.healthy,
      reason: s.reason,
      since: s.since,
      probeFailures: s.probeFailures,
      requestFailures: s.requestFailures,
      lastProbeOk: s.lastProbeOk,
      inflight: s.inflight.size,
      slow: slow?.slow ?? false,
      ttfbP75Ms: slow?.ttfbP75Ms ?? null,
      probeP75Ms: slow?.probeP75Ms ?? null,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const s of this.pods.values()) s.probing?.abort();
    this.pods.clear();
    await this.agent.destroy().catch(() => undefined);
  }
}

export function originOf(http: string): string {
  try {
    return new URL(http).origin;
  } catch {
    return http;
  }
}
