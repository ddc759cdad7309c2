/**
 * The one condition wait with a deadline, for the demo, the tests and the benches.
 *
 * A check answers `true` (or any other truthy value but a string) when the condition holds; a
 * string describing the current state, or a falsy value, while it does not. A check that throws
 * is tried again (the error is the state reported), except with `WaitAborted`, which ends the
 * wait at once. The failure message names what did not converge and its last state, so a
 * timeout says how far off it was.
 */
export type Check = () => unknown;

export interface WaitOptions {
  /** default 10 s */
  timeoutMs?: number;
  /** first poll interval (default 10 ms); it doubles on each miss up to 4x */
  intervalMs?: number;
  /** the state shown on timeout when the check gives no description of its own */
  describe?: () => unknown;
}

export class ConvergenceError extends Error {}

/** Thrown by a check when waiting longer cannot help (e.g. the process died): ends the wait at once. */
export class WaitAborted extends Error {}

/** Polls `check` until it holds; resolves with the time waited (ms), else throws ConvergenceError. */
export async function waitFor(what: string, check: Check, opts: WaitOptions | number = {}): Promise<number> {
  const o = typeof opts === "number" ? { timeoutMs: opts } : opts;
  const timeoutMs = o.timeoutMs ?? 10_000;
  const start = Date.now();
  const deadline = start + timeoutMs;
  const base = o.intervalMs ?? 10;
  let interval = base;
  let last: string | null = "never checked";
  for (;;) {
    try {
      const r = await check();
      if (r && typeof r !== "string") return Date.now() - start;
      last = typeof r === "string" ? r : null;
    } catch (err) {
      if (err instanceof WaitAborted) throw new WaitAborted(`${what}: ${err.message}`);
      last = `check threw: ${(err as Error).message}`;
    }
    if (Date.now() >= deadline) {
      const state = last ?? (o.describe ? JSON.stringify(o.describe()) : "condition not met");
      throw new ConvergenceError(`${what}: not converged after ${(timeoutMs / 1000).toFixed(1)}s: ${state}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(interval, Math.max(1, deadline - Date.now()))));
    interval = Math.min(interval * 2, base * 4);
  }
}
