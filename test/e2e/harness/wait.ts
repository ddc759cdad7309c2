/**
 * Condition waits with deadlines. `check` returns true/ok when the condition holds, or a string
 * describing the current (unconverged) state; the failure message carries the last description,
 * so a timeout says what did not converge and how far off it was.
 */
export type Check = () => Promise<true | string> | true | string;

export interface WaitOptions {
  timeoutMs: number;
  /** poll interval, doubles up to 4x on each miss */
  intervalMs?: number;
}

export class ConvergenceError extends Error {}

/** Thrown by a check when waiting longer cannot help (e.g. the process died): ends the wait at once. */
export class WaitAborted extends Error {}

export async function waitFor(what: string, check: Check, opts: WaitOptions): Promise<number> {
  const start = Date.now();
  const deadline = start + opts.timeoutMs;
  const base = opts.intervalMs ?? 50;
  let interval = base;
  let last = "never checked";
  for (;;) {
    try {
      const r = await check();
      if (r === true) return Date.now() - start;
      last = r;
    } catch (err) {
      if (err instanceof WaitAborted) throw new WaitAborted(`${what}: ${err.message}`);
      last = `check threw: ${(err as Error).message}`;
    }
    if (Date.now() >= deadline) {
      throw new ConvergenceError(
        `${what}: not converged after ${(opts.timeoutMs / 1000).toFixed(1)}s: ${last}`,
      );
    }
    await new Promise((r) => setTimeout(r, Math.min(interval, Math.max(1, deadline - Date.now()))));
    interval = Math.min(interval * 2, base * 4);
  }
}

/** Timeouts scale with KVSYNC_E2E_TIME_SCALE (default 1) for slow machines. */
export function scaled(ms: number): number {
  const f = Number(process.env.KVSYNC_E2E_TIME_SCALE ?? "1");
  return Number.isFinite(f) && f > 0 ? Math.round(ms * f) : ms;
}
