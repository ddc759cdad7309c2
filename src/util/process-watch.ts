/**
 * The process's own health: event-loop delay (a starved or blocked router applies events and
 * routes requests late) and wall-clock jumps (the wall clock moved against the monotonic one:
 * NTP step, a VM resumed, a skewed clock; event lag is measured on the wall clock).
 *
 * Every `intervalMs` the loop delay's maximum over the interval (perf_hooks'
 * monitorEventLoopDelay) becomes a gauge; beyond `eventLoopWarnMs` it is counted and logged as
 * `process.event_loop_blocked` (rate-limited). The wall clock's offset against the monotonic
 * clock since start is a gauge; a change beyond `clockJumpWarnMs` between two checks is counted
 * and logged as `process.clock_jump`.
 */
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { Counter, Gauge, type Registry } from "prom-client";
import type { Logger } from "./log.ts";
import { LogBucket } from "./log-bucket.ts";

export interface ProcessWatchOptions {
  /** loop delay beyond this is "blocked" (ms; 0 = off). Default 200. */
  eventLoopWarnMs?: number;
  /** a wall-clock step beyond this between two checks is a jump (ms; 0 = off). Default 1000. */
  clockJumpWarnMs?: number;
  /** check period (ms). Default 1000. */
  intervalMs?: number;
  /** at most 5 lines per kind, refilled one per this (ms). Default 10 s. */
  logEveryMs?: number;
  /** the clocks (tests) */
  wallNow?: () => number;
  monoNow?: () => number;
}

export const PROCESS_WATCH_DEFAULTS = {
  eventLoopWarnMs: 200,
  clockJumpWarnMs: 1000,
  intervalMs: 1000,
  logEveryMs: 10_000,
};

/** The event-loop delay of the last check interval (ms), as /healthz reports it. */
export interface LoopDelay {
  maxMs: number;
  meanMs: number;
  p99Ms: number;
  /** the interval it covers (ms) */
  intervalMs: number;
}

export interface ProcessWatch {
  /** one check now (the timer calls it every interval) */
  check(): void;
  /** the last full interval's delay (before the first check: the delay so far) */
  loopDelay(): LoopDelay;
  stop(): void;
}

export function startProcessWatch(
  registry: Registry | null,
  log: Logger,
  opts: ProcessWatchOptions = {},
): ProcessWatch {
  const o = { ...PROCESS_WATCH_DEFAULTS, ...opts };
  const wallNow = opts.wallNow ?? Date.now;
  const monoNow = opts.monoNow ?? (() => performance.now());
  const reg = registry ? [registry] : [];
  const delayGauge = new Gauge({
    name: "kvsync_process_event_loop_delay_seconds",
    help: "largest event-loop delay of the last check interval",
    registers: reg,
  });
  const blocked = new Counter({
    name: "kvsync_process_event_loop_blocked_total",
    help: "check intervals whose event-loop delay exceeded the threshold (starved CPU, blocking IO)",
    registers: reg,
  });
  const offsetGauge = new Gauge({
    name: "kvsync_process_wall_clock_offset_seconds",
    help: "how far the wall clock moved against the monotonic clock since the process started",
    registers: reg,
  });
  const jumps = new Counter({
    name: "kvsync_process_clock_jumps_total",
    help: "wall-clock steps beyond the threshold between two checks",
    registers: reg,
  });
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const loopLogs = new LogBucket(o.logEveryMs);
  const jumpLogs = new LogBucket(o.logEveryMs);
  const base = wallNow() - monoNow();
  let lastOffset = 0;
  const round = (ns: number) => Math.round(ns / 1e4) / 100;
  const current = (): LoopDelay => ({
    maxMs: h.count > 0 ? round(h.max) : 0,
    meanMs: h.count > 0 ? round(h.mean) : 0,
    p99Ms: h.count > 0 ? round(h.percentile(99)) : 0,
    intervalMs: o.intervalMs,
  });
  let last: LoopDelay | null = null;
  const check = () => {
    const now = wallNow();
    const maxMs = h.count > 0 ? h.max / 1e6 : 0;
    last = current();
    h.reset();
    delayGauge.set(maxMs / 1000);
    if (o.eventLoopWarnMs > 0 && maxMs > o.eventLoopWarnMs) {
      blocked.inc();
      if (loopLogs.take(monoNow()))
        log.warn(
          { event: "process.event_loop_blocked", delayMs: Math.round(maxMs), thresholdMs: o.eventLoopWarnMs },
          "event loop delayed: events are applied and requests routed late",
        );
    }
    const offset = now - monoNow() - base;
    offsetGauge.set(offset / 1000);
    const step = offset - lastOffset;
    lastOffset = offset;
    if (o.clockJumpWarnMs > 0 && Math.abs(step) > o.clockJumpWarnMs) {
      jumps.inc();
      if (jumpLogs.take(monoNow()))
        log.warn(
          { event: "process.clock_jump", jumpMs: Math.round(step), offsetMs: Math.round(offset) },
          "the wall clock stepped against the monotonic clock: event lag and log times shift by as much",
        );
    }
  };
  const timer = setInterval(check, o.intervalMs);
  timer.unref();
  return {
    check,
    loopDelay: () => last ?? current(),
    stop() {
      clearInterval(timer);
      h.disable();
    },
  };
}
