import { performance } from "node:perf_hooks";

/**
 * Wall-clock time in ms with sub-millisecond resolution, for timestamps compared across
 * processes on one machine (an engine's batch stamp against the router's apply time).
 * `Date.now()` ticks in whole ms, too coarse for lags of a few ms; the monotonic clock is fine
 * grained but drifts from the wall clock as NTP slews it. This is the monotonic clock anchored
 * to the wall clock, re-anchored when they disagree by more than a millisecond (checked at most
 * once a second), so it is precise between checks and never further than ~1 ms off.
 */
let offset = Date.now() - performance.now();
let checkedAt = performance.now();

export function wallClockMs(): number {
  const mono = performance.now();
  if (mono - checkedAt >= 1000) {
    checkedAt = mono;
    const wall = Date.now();
    const t = offset + mono;
    // Date.now() truncates: the true wall time is in [wall, wall + 1)
    if (t < wall - 1 || t > wall + 2) offset = wall - mono;
  }
  return offset + mono;
}
