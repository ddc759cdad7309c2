/**
 * Metrics of the streams' buffers between socket and index (inbox.ts): how often a stream was
 * held back and how many bytes each holds received but not applied yet. Per-stream series carry
 * the `stream` label like the subscriber metrics (metrics.ts) and go away with the stream.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { StreamFlow, ThrottleReason } from "./types.ts";

export interface FlowMetrics {
  throttled(stream: string, reason: ThrottleReason): void;
  removeStream(stream: string): void;
}

export function createFlowMetrics(
  registry: Registry,
  flows: () => Iterable<[stream: string, flow: StreamFlow]>,
): FlowMetrics {
  const throttled = new Counter({
    name: "kvsync_stream_throttled_total",
    help: "times a stream was held back so others get their turn: buffer_full = its reading paused on a full buffer (what the engine drops meanwhile is replayed), shed = a live message dropped because the buffer stayed full past the longest pause (replayed too), slice = its apply slice ended with work left",
    labelNames: ["stream", "reason"] as const,
    registers: [registry],
  });
  const buffered = new Gauge({
    name: "kvsync_stream_buffered_bytes",
    help: "bytes a stream has received and not applied to the index yet (bounded by --stream-buffer-bytes, plus a replay answer)",
    labelNames: ["stream"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [stream, f] of flows()) this.set({ stream }, f.bufferedBytes);
    },
  });
  const paused = new Gauge({
    name: "kvsync_stream_paused_seconds",
    help: "total time a stream's reading has waited for its buffer to drain",
    labelNames: ["stream"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [stream, f] of flows()) this.set({ stream }, f.pausedMs / 1000);
    },
  });
  return {
    throttled: (stream, reason) => throttled.inc({ stream, reason }),
    removeStream(stream) {
      throttled.remove({ stream, reason: "buffer_full" });
      throttled.remove({ stream, reason: "slice" });
      throttled.remove({ stream, reason: "shed" });
      buffered.remove({ stream });
      paused.remove({ stream });
    },
  };
}
