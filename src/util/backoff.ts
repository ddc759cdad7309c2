/** `delay * [0.5, 1)`: spreads reconnects of many clients after a shared outage. */
export function jitter(delayMs: number, rand: () => number = Math.random): number {
  return Math.max(1, Math.round(delayMs * (0.5 + rand() * 0.5)));
}

/** Capped exponential backoff with jitter for the n-th (0-based) retry. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, rand?: () => number): number {
  return jitter(Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30)), rand);
}
