/**
 * libzmq returns EINTR from a call that waits on its mailbox (zmq_connect, zmq_bind and
 * zmq_socket_monitor process pending commands first, with poll(), which a signal interrupts
 * whatever SA_RESTART says). Node's CPU profiler sends SIGPROF every sampling interval, so at
 * start-up, when a gateway opens a socket and a monitor per stream (thousands of calls), one of
 * them can fail with "Interrupted system call". Nothing happened in the interrupted call, so
 * doing it again is safe.
 */

/** The error zeromq.js throws for an interrupted call (ErrnoException: code "EINTR", errno 4). */
export function isEintr(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; errno?: unknown };
  return e.code === "EINTR" || e.errno === 4;
}

/** EINTRs in a row before giving up: each needs a signal to land within one call. */
export const EINTR_ATTEMPTS = 10;

/**
 * `fn()`, called again (at once) while it throws EINTR, at most `attempts` times in all; any
 * other error, or the last EINTR, is thrown. `onRetry` hears each retried interruption.
 */
export function retryOnEintr<T>(
  fn: () => T,
  onRetry?: (attempt: number) => void,
  attempts = EINTR_ATTEMPTS,
): T {
  for (let attempt = 1; ; attempt++) {
    try {
      return fn();
    } catch (err) {
      if (!isEintr(err) || attempt >= attempts) throw err;
      onRetry?.(attempt);
    }
  }
}
