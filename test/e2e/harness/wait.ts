/**
 * The E2E and chaos suites' waits: the one condition wait (src/util/wait.ts) and the time scale
 * their deadlines are given in.
 */
export {
  type Check,
  ConvergenceError,
  WaitAborted,
  type WaitOptions,
  waitFor,
} from "../../../src/util/wait.ts";

/** Timeouts scale with KVSYNC_E2E_TIME_SCALE (default 1) for slow machines. */
export function scaled(ms: number): number {
  const f = Number(process.env.KVSYNC_E2E_TIME_SCALE ?? "1");
  return Number.isFinite(f) && f > 0 ? Math.round(ms * f) : ms;
}
