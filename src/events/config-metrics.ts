/**
 * Metrics of the configuration checks (stream-layout.ts, stream-checks.ts): pods refused for a
 * colliding port layout, batches of another data-parallel rank, declared block sizes the events
 * contradict, and each stream's learned block size.
 */
import { Counter, Gauge, type Registry } from "prom-client";

export interface ConfigMetrics {
  layoutRefused: Gauge<"pod" | "reason">;
  wrongRankBatches: Counter<"stream">;
  blockSizeMismatches: Counter<"stream">;
  blockSizeTokens: Gauge<"stream">;
  removeStream(streamId: string): void;
  removePod(pod: string): void;
}

export function createConfigMetrics(registry: Registry): ConfigMetrics {
  const m: ConfigMetrics = {
    layoutRefused: new Gauge({
      name: "kvsync_subscriber_layout_refused",
      help: "1 for a pod whose data-parallel port layout cannot work (reason: collision = two sockets on one port, range = a port past 65535); none of its streams is subscribed",
      labelNames: ["pod", "reason"] as const,
      registers: [registry],
    }),
    wrongRankBatches: new Counter({
      name: "kvsync_subscriber_wrong_rank_batches_total",
      help: "batches refused because they carried another data-parallel rank than the stream's (the pod's port layout does not match the engine's)",
      labelNames: ["stream"] as const,
      registers: [registry],
    }),
    blockSizeMismatches: new Counter({
      name: "kvsync_subscriber_block_size_mismatches_total",
      help: "batches whose BlockStored block size disagrees with the size the pod declares (matching uses the events' size)",
      labelNames: ["stream"] as const,
      registers: [registry],
    }),
    blockSizeTokens: new Gauge({
      name: "kvsync_subscriber_block_size_tokens",
      help: "the stream's block size in tokens, learned from its BlockStored events",
      labelNames: ["stream"] as const,
      registers: [registry],
    }),
    removeStream(streamId: string): void {
      m.wrongRankBatches.remove({ stream: streamId });
      m.blockSizeMismatches.remove({ stream: streamId });
      m.blockSizeTokens.remove({ stream: streamId });
    },
    removePod(pod: string): void {
      for (const reason of ["collision", "range"]) m.layoutRefused.remove({ pod, reason });
    },
  };
  return m;
}
