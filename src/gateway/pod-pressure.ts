/**
 * Per-pod resource pressure: a pod whose container waits for CPU, memory or IO, or whose
 * processes the kernel OOM-kills, from the container figures on its `/metrics` (cAdvisor's
 * names: `container_pressure_{cpu,memory,io}_waiting_seconds_total`, PSI `some` stall time, and
 * `container_oom_events_total`; the mock engine exports its own, src/engine/container-stats.ts;
 * a real engine's pod gets them from an exporter sidecar).
 *
 * Why next to the latency signal (pod-latency.ts): a noisy neighbour in the pod's cgroup, a
 * memory limit the pod overruns or a stalled disk hurts the pod before, or without, its answers
 * turning slower than the fleet's (a loaded machine slows every pod, so the fleet-relative
 * latency signal hides a starved one). Stall time is the kernel's own account of that.
 *
 * Each scrape (`observe`) turns the counters' growth since the pod's previous scrape into a
 * stall share (stalled seconds per wall second, 0..1) per resource. A resource whose share is at
 * least `ratio` on `sustain` scrapes in a row puts the pod under pressure for it
 * (`gateway.pod_pressure`, counted); below half of `ratio` it leaves (`gateway.pod_pressure_cleared`).
 * OOM kills are reported as they grow (`gateway.pod_oom_kill`). A counter that went down (the
 * process moved to another cgroup, the pod restarted) starts over. Lines are rate-limited per
 * pod; counters count every transition. Pressure does not change routing: it is a diagnosis.
 */
import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";
import type { GatewayMetrics } from "./metrics.ts";

export const PRESSURE_RESOURCES = ["cpu", "memory", "io"] as const;
export type PressureResource = (typeof PRESSURE_RESOURCES)[number];

export interface PressureOptions {
  /** stall share (0..1) at or above which a pod is under pressure for a resource (0 = off) */
  ratio: number;
  /** consecutive scrapes at or above `ratio` before it is reported */
  sustain: number;
}

export const PRESSURE_DEFAULTS: Readonly<PressureOptions> = Object.freeze({ ratio: 0.5, sustain: 2 });

export interface ContainerSample {
  /** stall seconds (PSI some) by resource, summed over the pod's containers */
  stall: Partial<Record<PressureResource, number>>;
  oomKills: number | null;
}

const LINE_RE =
  /^container_(?:pressure_(cpu|memory|io)_waiting_seconds_total|(oom_events_total))(?:\{[^}]*\})?\s+(\S+)/;

/** The container figures in a pod's Prometheus text (null when it has none). */
export function parseContainerSample(text: string): ContainerSample | null {
  const out: ContainerSample = { stall: {}, oomKills: null };
  let seen = false;
  let from = 0;
  // only the lines naming container figures are matched: the rest of an engine's text is skipped
  for (;;) {
    const at = text.indexOf("\ncontainer_", from);
    if (at === -1) break;
    const end = text.indexOf("\n", at + 1);
    const m = LINE_RE.exec(text.slice(at + 1, end === -1 ? undefined : end));
    from = at + 1;
    if (m === null) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    seen = true;
    if (m[2] !== undefined) out.oomKills = (out.oomKills ?? 0) + v;
    else {
      const r = m[1] as PressureResource;
      out.stall[r] = (out.stall[r] ?? 0) + v;
    }
  }
  return seen ? out : null;
}

interface PodPressureState {
  at: number;
  last: ContainerSample;
  streak: Record<PressureResource, number>;
  under: Record<PressureResource, boolean>;
  logs: LogBucket;
}

export class PodPressure {
  readonly o: PressureOptions;
  private readonly pods = new Map<string, PodPressureState>();

  constructor(
    opts: Partial<PressureOptions>,
    private readonly metrics: GatewayMetrics,
    private readonly log: Logger,
  ) {
    this.o = { ...PRESSURE_DEFAULTS, ...opts };
    if (!(this.o.ratio >= 0 && this.o.ratio <= 1)) throw new Error("pod pressure ratio must be within 0..1");
    if (!(this.o.sustain >= 1)) throw new Error("pod pressure sustain must be >= 1");
  }

  get enabled(): boolean {
    return this.o.ratio > 0;
  }

  /** A scrape of `pod`'s metrics returned `text` at `now` (ms, monotonic). */
  observe(pod: string, text: string, now = performance.now()): void {
    if (!this.enabled) return;
    const sample = parseContainerSample(text);
    if (sample === null) return;
    const s = this.pods.get(pod);
    if (s === undefined) {
      this.pods.set(pod, {
        at: now,
        last: sample,
        streak: { cpu: 0, memory: 0, io: 0 },
        under: { cpu: false, memory: false, io: false },
        logs: new LogBucket(10_000),
      });
      return;
    }
    const dt = (now - s.at) / 1000;
    if (!(dt > 0)) return;
    for (const r of PRESSURE_RESOURCES) this.judge(pod, s, r, s.last.stall[r], sample.stall[r], dt, now);
    const before = s.last.oomKills;
    if (before !== null && sample.oomKills !== null && sample.oomKills > before) {
      const kills = sample.oomKills - before;
      this.metrics.podOomKills.inc({ pod }, kills);
      if (s.logs.take(now))
        this.log.warn(
          { event: "gateway.pod_oom_kill", pod, kills, total: sample.oomKills },
          "the kernel OOM-killed processes in the pod (its memory limit is overrun)",
        );
    }
    s.at = now;
    s.last = sample;
  }

  private judge(
    pod: string,
    s: PodPressureState,
    r: PressureResource,
    before: number | undefined,
    after: number | undefined,
    dt: number,
    now: number,
  ): void {
    if (before === undefined || after === undefined || after < before) {
      // no figure, or a counter that started over: nothing to judge until the next scrape
      s.streak[r] = 0;
      if (after === undefined) this.metrics.podPressure.remove({ pod, resource: r });
      return;
    }
    const share = Math.min(1, (after - before) / dt);
    this.metrics.podPressure.set({ pod, resource: r }, share);
    s.streak[r] = share >= this.o.ratio ? s.streak[r] + 1 : 0;
    const under = s.under[r] ? share >= this.o.ratio / 2 : s.streak[r] >= this.o.sustain;
    if (under === s.under[r]) return;
    s.under[r] = under;
    if (under) this.metrics.podPressureTotal.inc({ pod, resource: r });
    if (!s.logs.take(now)) return;
    const fields = { pod, resource: r, stallShare: Math.round(share * 1000) / 1000 };
    if (under)
      this.log.warn(
        { event: "gateway.pod_pressure", ...fields, ratio: this.o.ratio },
        `the pod's tasks wait for ${r} (kernel pressure stall information)`,
      );
    else
      this.log.info({ event: "gateway.pod_pressure_cleared", ...fields }, `the pod's ${r} pressure is gone`);
  }

  /** Forget pods not in `names` (gone from discovery). */
  retain(names: Set<string>): void {
    for (const pod of this.pods.keys()) {
      if (names.has(pod)) continue;
      this.pods.delete(pod);
      for (const resource of PRESSURE_RESOURCES) this.metrics.podPressure.remove({ pod, resource });
    }
  }
}
