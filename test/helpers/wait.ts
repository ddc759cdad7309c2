/**
 * The one polling loop behind the tests' and benches' condition waits (each folder keeps its own
 * small `waitFor` signature and failure message on top of this).
 */

/**
 * Call `cond()` until it returns a truthy value (which is returned), sleeping `intervalMs` between
 * calls; once `timeoutMs` has passed, throw `onTimeout()`. An error thrown by `cond` propagates.
 */
export async function pollUntil<T>(
  cond: () => T | Promise<T>,
  timeoutMs: number,
  intervalMs: number,
  onTimeout: () => Error,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw onTimeout();
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
