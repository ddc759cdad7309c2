/**
 * Prometheus metrics of tokenizer pools, on a caller-provided Registry (never the global one).
 * Several pools (models) may share one Registry: metrics are created once per Registry and
 * labelled by model.
 */
import { Counter, Gauge, type Registry } from "prom-client";

export interface TokenizerMetrics {
  /** encodes by path: inline | worker | fallback (queue full, encoded inline) | rejected */
  encodes: Counter<"model" | "path">;
  /** prompt segments served from / missing in the segment cache */
  segments: Counter<"model" | "result">;
  workerFailures: Counter<"model">;
  queueDepth: Gauge<"model">;
}

const byRegistry = new WeakMap<Registry, TokenizerMetrics>();

export function tokenizerMetrics(registry: Registry): TokenizerMetrics {
  let m = byRegistry.get(registry);
  if (m === undefined) {
    const registers = [registry];
    m = {
      encodes: new Counter({
        name: "kvsync_tokenizer_encodes_total",
        help: "Tokenizer encodes by path (inline, worker, fallback = queue full so inline, rejected)",
        labelNames: ["model", "path"] as const,
        registers,
      }),
      segments: new Counter({
        name: "kvsync_tokenizer_segments_total",
        help: "Prompt segments (cut at special-token boundaries) by cache result (hit, miss)",
        labelNames: ["model", "result"] as const,
        registers,
      }),
      workerFailures: new Counter({
        name: "kvsync_tokenizer_worker_failures_total",
        help: "Tokenizer worker threads that crashed or exited unexpectedly",
        labelNames: ["model"] as const,
        registers,
      }),
      queueDepth: new Gauge({
        name: "kvsync_tokenizer_pool_queue_depth",
        help: "Encode jobs waiting for a tokenizer worker",
        labelNames: ["model"] as const,
        registers,
      }),
    };
    byRegistry.set(registry, m);
  }
  return m;
}
