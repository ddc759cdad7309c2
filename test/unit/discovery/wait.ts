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
  const intervalMs = opts.intervalMs ?? 10;
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const state = opts.describe ? ` (last state: ${JSON.stringify(opts.describe())})` : "";
      const err = lastErr ? ` (last error: ${(lastErr as Error).message})` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state}${err}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
