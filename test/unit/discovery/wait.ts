import { pollUntil } from "../../helpers/wait.ts";

/**
 * Wait until `cond()` is truthy (polling every `intervalMs`), or fail after `timeoutMs` with a
 * message naming what did not happen (and the last value seen, when `describe` is given).
 */
export async function waitFor<T>(
  what: string,
  cond: () => T | Promise<T>,
  opts: { timeoutMs?: number; intervalMs?: number; describe?: () => unknown } = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  let lastErr: unknown;
  const attempt = async (): Promise<T | undefined> => {
    try {
      return await cond();
    } catch (err) {
      lastErr = err;
      return undefined;
    }
  };
  return pollUntil(attempt, timeoutMs, opts.intervalMs ?? 10, () => {
    const state = opts.describe ? ` (last state: ${JSON.stringify(opts.describe())})` : "";
    const err = lastErr ? ` (last error: ${(lastErr as Error).message})` : "";
    return new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state}${err}`);
  }) as Promise<T>;
}
