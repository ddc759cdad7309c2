/**
 * Prometheus metrics of the subscribers and the index they feed, on a Registry passed in (never
 * the global one). Per-stream series carry a `stream` label (`<pod>` or `<pod>#<rank>`) and are
 * removed when the stream goes away.
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { PrefixIndex } from "../index/types.ts";
import type { StreamState, StreamStatus } from "./types.ts";

export const STREAM_STATES: readonly StreamState[] = [
  "connecting",
  "live",
  "replaying",
  "resyncing",
  "suspect",
  "down",
];

export interface SubscriberMetrics {
  eventsApplied: Counter<"stream">;
  batchesApplied: Counter<"stream">;
  decodeErrors: Counter<"stream">;
  gaps: Counter<"stream">;
  replays: Counter<"stream">;
  replayFailures: Counter<"stream">;
  resyncs: Counter<"stream">;
  restarts: Counter<"stream">;
  staleBatches: Counter<"stream">;
  stalls: Counter<"stream">;
  suspects: Counter<"stream">;
  rebuilds: Counter<"stream">;
  verified: Counter<"stream">;
  reconnects: Counter<"stream">;
  socketReplacements: Counter<"stream">;
  bogusSeqs: Counter<"stream">;
  decodeRepairs: Counter<"stream">;
  replaysThrottled: Counter<"stream">;
  lagHigh: Counter<"stream">;
  clockSkews: Counter<"stream">;
  /** smallest lag of the last closed window, per stream */
  lagFloorSeconds: Gauge<"stream">;
  /** how far ahead of our clock the stream's last skewed batch was stamped (0 when none) */
  clockSkewSeconds: Gauge<"stream">;
  applySeconds: Histogram<string>;
  /** engine batch timestamp → applied in the index, for batches applied while the stream is live */
  lagSeconds: Histogram<string>;
  /** forget a stream's labelled series */
  removeStream(streamId: string): void;
}

export function createSubscriberMetrics(
  registry: Registry,
  statuses: () => StreamStatus[],
  index: PrefixIndex,
): SubscriberMetrics {
  const perStream = (name: string, help: string) =>
    new Counter({ name, help, labelNames: ["stream"] as const, registers: [registry] });
  const m = {
    eventsApplied: perStream("kvsync_subscriber_events_applied_total", "KV events applied to the index"),
    batchesApplied: perStream(
      "kvsync_subscriber_batches_applied_total",
      "event batches applied to the index",
    ),
    decodeErrors: perStream(
      "kvsync_subscriber_decode_errors_total",
      "messages that could not be decoded (asked again from the replay buffer; none there: the stream is rebuilt)",
    ),
    gaps: perStream("kvsync_subscriber_gaps_total", "sequence gaps detected"),
    replays: perStream("kvsync_subscriber_replays_total", "replay requests sent to the engine"),
    replayFailures: perStream("kvsync_subscriber_replay_failures_total", "replays that failed or timed out"),
    resyncs: perStream(
      "kvsync_subscriber_resyncs_total",
      "unrecoverable gaps: the stream's entries were dropped and rebuilt",
    ),
    restarts: perStream(
      "kvsync_subscriber_restarts_total",
      "engine restarts detected (seq went backwards): the stream's entries were dropped",
    ),
    suspects: perStream(
      "kvsync_subscriber_suspects_total",
      "times a stream became suspect (garbled frames, repaired batches, bogus seqs, protocol errors)",
    ),
    rebuilds: perStream(
      "kvsync_subscriber_rebuilds_total",
      "suspect streams dropped and rebuilt from the engine's replay buffer (their audit failed)",
    ),
    verified: perStream(
      "kvsync_subscriber_verified_total",
      "suspect streams trusted again with nothing dropped: every batch applied while suspect matched the engine's replay buffer",
    ),
    stalls: perStream(
      "kvsync_subscriber_stalls_total",
      "connections dropped because ZMTP heartbeats went unanswered (partition, stopped engine)",
    ),
    reconnects: perStream(
      "kvsync_subscriber_reconnects_total",
      "connections re-established after being down",
    ),
    socketReplacements: perStream(
      "kvsync_subscriber_socket_replacements_total",
      "SUB sockets replaced (session ended for good on a protocol error, watchdog, socket failure)",
    ),
    staleBatches: perStream(
      "kvsync_subscriber_stale_batches_total",
      "late copies of old batches verified stale (the engine still holds our last batch) and ignored",
    ),
    decodeRepairs: perStream(
      "kvsync_subscriber_decode_repairs_total",
      "undecodable batches applied from a good copy out of the engine's replay buffer",
    ),
    bogusSeqs: perStream(
      "kvsync_subscriber_bogus_seqs_total",
      "live seqs beyond everything the engine's replay buffer holds (corrupt or jumped), discarded",
    ),
    replaysThrottled: perStream(
      "kvsync_subscriber_replays_throttled_total",
      "replays held back by the per-stream replay rate bound",
    ),
    lagHigh: perStream(
      "kvsync_subscriber_lag_high_total",
      "times a live stream's event lag stayed above the threshold for a whole window (delayed, lossy or throttled link; starved router)",
    ),
    clockSkews: perStream(
      "kvsync_subscriber_clock_skews_total",
      "batches stamped ahead of the local clock beyond the skew threshold (engine and router clocks disagree)",
    ),
    lagFloorSeconds: new Gauge({
      name: "kvsync_subscriber_event_lag_floor_seconds",
      help: "smallest event lag of the last window per live stream (engine batch timestamp to applied)",
      labelNames: ["stream"] as const,
      registers: [registry],
    }),
    clockSkewSeconds: new Gauge({
      name: "kvsync_subscriber_clock_skew_seconds",
      help: "how far ahead of the local clock the stream's batches are stamped, when beyond the skew threshold (0: clocks agree)",
      labelNames: ["stream"] as const,
      registers: [registry],
    }),
    applySeconds: new Histogram({
      name: "kvsync_index_apply_duration_seconds",
      help: "time to apply one decoded event batch to the index",
      buckets: [1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2, 5e-2, 0.25],
      registers: [registry],
    }),
    lagSeconds: new Histogram({
      name: "kvsync_subscriber_event_lag_seconds",
      help: "time from an engine's batch timestamp to the batch applied in the index, on a sub-millisecond wall clock (live streams only; replayed batches are old by design; batches stamped ahead of the local clock beyond the skew threshold are left out)",
      // fine below 10 ms, where an unloaded router's lag sits (a quantile read from the buckets
      // is only as exact as they are)
      buckets: [
        0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
        1, 2.5, 5,
      ],
      registers: [registry],
    }),
    removeStream(streamId: string): void {
      for (const c of [
        m.eventsApplied,
        m.batchesApplied,
        m.decodeErrors,
        m.gaps,
        m.replays,
        m.replayFailures,
        m.resyncs,
        m.restarts,
        m.staleBatches,
        m.stalls,
        m.suspects,
        m.rebuilds,
        m.verified,
        m.reconnects,
        m.socketReplacements,
        m.bogusSeqs,
        m.replaysThrottled,
        m.lagHigh,
        m.clockSkews,
        m.lagFloorSeconds,
        m.clockSkewSeconds,
      ]) {
        c.remove({ stream: streamId });
      }
    },
  };
  new Gauge({
    name: "kvsync_subscriber_streams",
    help: "engine event streams by state",
    labelNames: ["state"] as const,
    registers: [registry],
    collect() {
      const counts = new Map<StreamState, number>(STREAM_STATES.map((s) => [s, 0]));
      for (const s of statuses()) counts.set(s.state, (counts.get(s.state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });
  const stat = (name: string, help: string, pick: (s: ReturnType<PrefixIndex["stats"]>) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(pick(index.stats()));
      },
    });
  stat("kvsync_index_entries", "(block, stream) entries in the index", (s) => s.entries);
  stat("kvsync_index_blocks", "distinct matchable blocks in the index", (s) => s.blocks);
  stat("kvsync_index_streams", "streams with entries in the index", (s) => s.streams);
  stat("kvsync_index_bytes", "approximate memory held by the index", (s) => s.approxBytes);
  let evictionsSeen = 0;
  new Counter({
    name: "kvsync_index_evictions_total",
    help: "entries evicted by the index caps (least recently touched first)",
    registers: [registry],
    collect() {
      const now = index.stats().evictions;
      if (now > evictionsSeen) this.inc(now - evictionsSeen);
      evictionsSeen = Math.max(evictionsSeen, now);
    },
  });
  return m;
}
