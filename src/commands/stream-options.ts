/**
 * The stream-health flags `kvsync gateway`, `kvsync index` and `kvsync events tail` share:
 * ZMTP heartbeats and the reconnect backoff cap of every engine event stream, and its flood
 * budgets: buffered bytes and apply slices (docs/events.md).
 */
import { type Command, InvalidArgumentError } from "commander";
import { LAG_WATCH_DEFAULTS, type LagWatchOptions } from "../events/lag-watch.ts";
import { READINESS_DEFAULTS } from "../events/readiness.ts";
import type { SubscriberOptions } from "../events/subscriber.ts";
import { DEFAULTS } from "../events/subscriber-options.ts";
import { opt, parseIntArg } from "../util/cli-options.ts";
import { PROCESS_WATCH_DEFAULTS, type ProcessWatchOptions } from "../util/process-watch.ts";

export const STREAM_HEALTH_DEFAULTS = {
  heartbeatIntervalMs: 1000,
  heartbeatTimeoutMs: 3000,
  reconnectMaxMs: 1000,
  streamBufferBytes: DEFAULTS.streamBufferBytes,
  streamSliceMs: DEFAULTS.streamSliceMs,
  streamSliceEvents: DEFAULTS.streamSliceEvents,
  streamEventSharePct: DEFAULTS.streamEventSharePct,
};

function nonNegative(v: string): number {
  const n = parseIntArg(v);
  if (n < 0) throw new InvalidArgumentError(`must be >= 0: ${v}`);
  return n;
}

function positive(v: string): number {
  const n = parseIntArg(v);
  if (n < 1) throw new InvalidArgumentError(`must be >= 1: ${v}`);
  return n;
}

/** Adds the flags; `envPrefix` names their env twins (`KVSYNC_` or `KVSYNC_EVENTS_`). */
export function addStreamHealthOptions(cmd: Command, envPrefix = "KVSYNC_"): Command {
  const D = STREAM_HEALTH_DEFAULTS;
  return cmd
    .addOption(
      opt(
        "--heartbeat-interval-ms <ms>",
        "ZMTP heartbeat PING period on every event stream (0 = off)",
        `${envPrefix}HEARTBEAT_INTERVAL_MS`,
        D.heartbeatIntervalMs,
      ).argParser(nonNegative),
    )
    .addOption(
      opt(
        "--heartbeat-timeout-ms <ms>",
        "an event stream without a heartbeat answer for this long goes down (stall)",
        `${envPrefix}HEARTBEAT_TIMEOUT_MS`,
        D.heartbeatTimeoutMs,
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--reconnect-max-ms <ms>",
        "cap of the event streams' reconnect backoff",
        `${envPrefix}RECONNECT_MAX_MS`,
        D.reconnectMaxMs,
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--stream-buffer-bytes <n>",
        "bytes one event stream may hold received but not applied; beyond it the stream stops reading (the engine drops, replay fills the gap)",
        `${envPrefix}STREAM_BUFFER_BYTES`,
        D.streamBufferBytes,
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--stream-slice-ms <ms>",
        "apply time per event-loop turn, shared by all event streams with work, before requests run",
        `${envPrefix}STREAM_SLICE_MS`,
        D.streamSliceMs,
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--stream-slice-events <n>",
        "events one event stream applies per event-loop turn at most",
        `${envPrefix}STREAM_SLICE_EVENTS`,
        D.streamSliceEvents,
      ).argParser(positive),
    )
    .addOption(
      opt(
        "--stream-event-share-pct <n>",
        "most of the wall time all event streams' work together may take (percent); a flood's surplus stays with its engine",
        `${envPrefix}STREAM_EVENT_SHARE_PCT`,
        D.streamEventSharePct,
      ).argParser(percent),
    );
}

function percent(v: string): number {
  const n = parseIntArg(v);
  if (n < 1 || n > 100) throw new InvalidArgumentError(`must be 1..100: ${v}`);
  return n;
}

export function streamHealthFrom(
  o: Record<string, unknown>,
): Pick<
  SubscriberOptions,
  | "heartbeatIntervalMs"
  | "heartbeatTimeoutMs"
  | "reconnectMaxMs"
  | "streamBufferBytes"
  | "streamSliceMs"
  | "streamSliceEvents"
  | "streamEventSharePct"
> {
  return {
    heartbeatIntervalMs: o.heartbeatIntervalMs as number,
    heartbeatTimeoutMs: o.heartbeatTimeoutMs as number,
    reconnectMaxMs: o.reconnectMaxMs as number,
    streamBufferBytes: o.streamBufferBytes as number,
    streamSliceMs: o.streamSliceMs as number,
    streamSliceEvents: o.streamSliceEvents as number,
    streamEventSharePct: o.streamEventSharePct as number,
  };
}

/**
 * The degradation signals' thresholds (`kvsync gateway`, `kvsync index`): event lag and clock
 * skew per stream (events/lag-watch.ts), event-loop delay and wall-clock jumps of the process
 * (util/process-watch.ts). 0 turns one off. And how long /readyz waits for a stream (events/readiness.ts).
 */
export function addSignalOptions(cmd: Command): Command {
  const L = LAG_WATCH_DEFAULTS;
  const P = PROCESS_WATCH_DEFAULTS;
  return cmd
    .addOption(
      opt(
        "--lag-warn-ms <ms>",
        "a live stream whose every batch of a 1 s window arrives later than this after the engine stamped it logs subscriber.lag_high",
        "KVSYNC_LAG_WARN_MS",
        L.lagWarnMs,
      ).argParser(nonNegative),
    )
    .addOption(
      opt(
        "--clock-skew-warn-ms <ms>",
        "a batch stamped further ahead of the local clock than this logs subscriber.clock_skew",
        "KVSYNC_CLOCK_SKEW_WARN_MS",
        L.clockSkewWarnMs,
      ).argParser(nonNegative),
    )
    .addOption(
      opt(
        "--event-loop-warn-ms <ms>",
        "an event-loop delay beyond this logs process.event_loop_blocked",
        "KVSYNC_EVENT_LOOP_WARN_MS",
        P.eventLoopWarnMs,
      ).argParser(nonNegative),
    )
    .addOption(
      opt(
        "--ready-timeout-ms <ms>",
        "/readyz stops waiting for a ready pod's event stream that is not live this long after it started (logs readiness.stream_gave_up)",
        "KVSYNC_READY_TIMEOUT_MS",
        READINESS_DEFAULTS.streamTimeoutMs,
      ).argParser(nonNegative),
    )
    .addOption(
      opt(
        "--clock-jump-warn-ms <ms>",
        "a wall-clock step against the monotonic clock beyond this logs process.clock_jump",
        "KVSYNC_CLOCK_JUMP_WARN_MS",
        P.clockJumpWarnMs,
      ).argParser(nonNegative),
    );
}

export function signalOptionsFrom(o: Record<string, unknown>): {
  lag: LagWatchOptions;
  processWatch: ProcessWatchOptions;
  readiness: { streamTimeoutMs: number };
} {
  return {
    readiness: { streamTimeoutMs: o.readyTimeoutMs as number },
    lag: { lagWarnMs: o.lagWarnMs as number, clockSkewWarnMs: o.clockSkewWarnMs as number },
    processWatch: {
      eventLoopWarnMs: o.eventLoopWarnMs as number,
      clockJumpWarnMs: o.clockJumpWarnMs as number,
    },
  };
}
