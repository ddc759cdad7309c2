import pino, { type Logger } from "pino";

/**
 * Structured logs: JSON lines on stderr (stdout stays free for command output such as
 * `events tail`). Every log line carries a stable `event` name, e.g.
 * `log.warn({ event: "subscriber.decode_error", pod, seq, err }, "...")`.
 */
export type { Logger };

export function createLogger(name: string, level = process.env.KVSYNC_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, base: { component: name } }, pino.destination(2));
}

/** A logger that drops everything, for tests and embedded components. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
