/**
 * Timing of the Kubernetes API requests discovery makes: a list (all its pages), and a watch's
 * wait for response headers. Every request lands in a histogram; one slower than the threshold
 * (a slow or overloaded API server: pod changes reach the router late) is counted and logged as
 * `discovery.slow` (rate-limited).
 */
import { Counter, Histogram, type Registry } from "prom-client";
import type { Logger } from "../util/log.ts";
import { LogBucket } from "../util/log-bucket.ts";

export const DISCOVERY_SLOW_DEFAULT_MS = 1000;

export type ApiVerb = "list" | "watch";

export interface ApiTiming {
  /** a request of `verb` on `path` took `ms` (`ok` false: it failed after that long) */
  record(verb: ApiVerb, path: string, ms: number, ok: boolean): void;
}

function getOrCreate<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export function apiTiming(
  registry: Registry | null,
  log: Logger,
  slowMs = DISCOVERY_SLOW_DEFAULT_MS,
): ApiTiming {
  const registers = registry ? [registry] : [];
  const hist = registry
    ? getOrCreate(
        registry,
        "kvsync_discovery_api_request_duration_seconds",
        () =>
          new Histogram({
            name: "kvsync_discovery_api_request_duration_seconds",
            help: "Kubernetes API requests of discovery: a whole list, or a watch until its response headers",
            labelNames: ["verb", "result"] as const,
            buckets: [0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
            registers,
          }),
      )
    : null;
  const slow = registry
    ? getOrCreate(
        registry,
        "kvsync_discovery_slow_requests_total",
        () =>
          new Counter({
            name: "kvsync_discovery_slow_requests_total",
            help: "Kubernetes API requests of discovery slower than the threshold",
            labelNames: ["verb"] as const,
            registers,
          }),
      )
    : null;
  const logs = new LogBucket(10_000);
  return {
    record(verb, path, ms, ok) {
      hist?.observe({ verb, result: ok ? "ok" : "error" }, ms / 1000);
      if (slowMs <= 0 || ms <= slowMs) return;
      slow?.inc({ verb });
      if (logs.take(performance.now()))
        log.warn(
          { event: "discovery.slow", verb, path, durationMs: Math.round(ms), thresholdMs: slowMs, ok },
          "Kubernetes API request slow: pod changes reach the router late",
        );
    },
  };
}
