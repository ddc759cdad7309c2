/**
 * The stream-health flags `kvsync gateway`, `kvsync index` and `kvsync events tail` share:
 * ZMTP heartbeats and the reconnect backoff cap of every engine event stream (docs/events.md).
 */
import { type Command, InvalidArgumentError } from "commander";
import type { SubscriberOptions } from "../events/subscriber.ts";
import { opt, parseIntArg } from "../util/cli-options.ts";

export const STREAM_HEALTH_DEFAULTS = {
  heartbeatIntervalMs: 1000,
  heartbeatTimeoutMs: 3000,
  reconnectMaxMs: 1000,
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
    );
}

export function streamHealthFrom(
  o: Record<string, unknown>,
): Pick<SubscriberOptions, "heartbeatIntervalMs" | "heartbeatTimeoutMs" | "reconnectMaxMs"> {
  return {
    heartbeatIntervalMs: o.heartbeatIntervalMs as number,
    heartbeatTimeoutMs: o.heartbeatTimeoutMs as number,
    reconnectMaxMs: o.reconnectMaxMs as number,
  };
}
