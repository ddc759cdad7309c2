/**
 * `/readyz` of `kvsync gateway` and `kvsync index`: ready once discovery has answered and
 * every event stream of a ready pod is `live` or has given up waiting. A stream gives up when it
 * has not been live within `streamTimeoutMs` of its start; that is logged once
 * (`readiness.stream_gave_up`, with its state and what that state means) so a never-ready
 * replica says why, and readiness does not hang on an engine whose events are broken (requests
 * to that pod route by load).
 *
 * Readiness is a start-up gate: once reached it stays (`ready` latches) while a routable pod
 * exists (gateway) — one engine's stream dropping later must not pull every gateway replica
 * out of its Service at once, while routing by load still works; that trouble shows in
 * /admin/pods, the `kvsync_subscriber_*` metrics and the logs instead.
 */
import type { PodInfo } from "../discovery/types.ts";
import type { Logger } from "../util/log.ts";
import type { StreamState, StreamStatus } from "./types.ts";

export interface ReadinessOptions {
  /** a ready pod's stream not live this long after it started counts as given up (ms) */
  streamTimeoutMs?: number;
  /** the fleet needs a routable pod to be ready (the gateway: it has nothing to route to otherwise) */
  requirePod?: boolean;
  /** the clock (tests) */
  now?: () => number;
}

export const READINESS_DEFAULTS = { streamTimeoutMs: 10_000 };

export interface ReadyReport {
  ready: boolean;
  /** discovery has answered (its first snapshot is applied) */
  discovery: boolean;
  /** ready pods */
  pods: number;
  streams: {
    live: number;
    /** not live yet, still within the timeout */
    waiting: Array<{ stream: string; state: StreamState; waitedMs: number }>;
    /** not live within the timeout: ignored by readiness (logged once) */
    gaveUp: Array<{ stream: string; state: StreamState; reason: string }>;
  };
}

/** What a stream state means when readiness stops waiting for it. */
const REASONS: Record<StreamState, string> = {
  connecting:
    "no ZMTP handshake with the engine's events endpoint yet (wrong address, firewall, engine without KV events)",
  down: "connected once, then disconnected: the engine stopped or the network dropped it",
  replaying: "still replaying the engine's buffered batches",
  resyncing: "its cache view was dropped after an unrecoverable gap and is rebuilding",
  suspect: "the transport garbled messages: its claims are not trusted until audited",
  live: "",
};

export class Readiness {
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private discovered = false;
  private latched = false;
  /** when each stream was first seen not live, and which ones gave up (logged) */
  private readonly firstSeen = new Map<string, number>();
  private readonly gaveUp = new Set<string>();

  constructor(
    private readonly fleet: { pods(): PodInfo[]; statuses(): StreamStatus[] },
    private readonly log: Logger,
    private readonly o: ReadinessOptions = {},
  ) {
    this.timeoutMs = o.streamTimeoutMs ?? READINESS_DEFAULTS.streamTimeoutMs;
    this.now = o.now ?? Date.now;
  }

  private timer: NodeJS.Timeout | null = null;

  /** Check every `everyMs` until ready, so a stream that gives up is logged without a probe asking. */
  start(everyMs = 500): this {
    this.timer ??= setInterval(() => {
      if (this.check().ready) this.stop();
    }, everyMs);
    this.timer.unref();
    return this;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Discovery's first snapshot is applied. */
  discoveryAnswered(): void {
    this.discovered = true;
  }

  check(): ReadyReport {
    const pods = this.fleet.pods().filter((p) => p.ready);
    const readyPods = new Set(pods.map((p) => p.name));
    const report: ReadyReport = {
      ready: false,
      discovery: this.discovered,
      pods: pods.length,
      streams: { live: 0, waiting: [], gaveUp: [] },
    };
    const now = this.now();
    const seen = new Set<string>();
    for (const s of this.fleet.statuses()) {
      if (!readyPods.has(s.pod)) continue;
      seen.add(s.streamId);
      const since = this.firstSeen.get(s.streamId) ?? now;
      if (!this.firstSeen.has(s.streamId)) this.firstSeen.set(s.streamId, now);
      if (s.state === "live") {
        report.streams.live++;
        continue;
      }
      const waited = now - since;
      if (waited < this.timeoutMs && !this.gaveUp.has(s.streamId)) {
        report.streams.waiting.push({ stream: s.streamId, state: s.state, waitedMs: waited });
        continue;
      }
      const reason = REASONS[s.state];
      report.streams.gaveUp.push({ stream: s.streamId, state: s.state, reason });
      if (!this.gaveUp.has(s.streamId)) {
        this.gaveUp.add(s.streamId);
        if (!this.latched) {
          this.log.warn(
            {
              event: "readiness.stream_gave_up",
              pod: s.pod,
              stream: s.streamId,
              state: s.state,
              waitedMs: waited,
              reason,
            },
            "readiness stops waiting for this event stream: its pod is routed by load until the stream is live",
          );
        }
      }
    }
    // streams that went away (pod removed or no longer ready) are forgotten: bounded by the fleet
    for (const id of this.firstSeen.keys()) if (!seen.has(id)) this.firstSeen.delete(id);
    for (const id of this.gaveUp) if (!seen.has(id)) this.gaveUp.delete(id);
    const hasPod = !(this.o.requirePod ?? false) || pods.length > 0;
    if (this.latched) {
      report.ready = hasPod;
      return report;
    }
    report.ready = this.discovered && hasPod && report.streams.waiting.length === 0;
    if (report.ready) {
      this.latched = true;
      this.log.info(
        {
          event: "readiness.ready",
          pods: pods.length,
          live: report.streams.live,
          gaveUp: report.streams.gaveUp.length,
        },
        "ready: discovery answered and every ready pod's event stream is live or given up",
      );
    }
    return report;
  }
}
