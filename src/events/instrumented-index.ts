/**
 * A `PrefixIndex` that times and counts what is applied to another one: the backend stays free of
 * clocks and metrics, and a service without a registry applies to the bare index (no timing cost
 * at all). Only `applyBatch` is instrumented: it is the event path's write, while reads (match,
 * stats) are timed by their callers (the planner, the admin API) where the latency matters.
 */
import { performance } from "node:perf_hooks";
import type { Counter, Histogram } from "prom-client";
import type {
  BlockClaim,
  IndexStats,
  NamespaceRef,
  PrefixIndex,
  StreamMatch,
  StreamRef,
} from "../index/types.ts";
import type { EventBatch } from "../protocol/types.ts";

/** The series the wrapper feeds (a subset of SubscriberMetrics). */
export interface IndexApplyMetrics {
  applySeconds: Histogram<string>;
  batchesApplied: Counter<"stream">;
  eventsApplied: Counter<"stream">;
}

class InstrumentedIndex implements PrefixIndex {
  readonly streamEntryCount?: (streamId: string) => number;

  constructor(
    private readonly inner: PrefixIndex,
    private readonly m: IndexApplyMetrics,
  ) {
    const count = inner.streamEntryCount;
    if (count !== undefined) this.streamEntryCount = (id) => count.call(inner, id);
  }

  applyBatch(stream: StreamRef, batch: EventBatch): void {
    const t0 = performance.now();
    this.inner.applyBatch(stream, batch);
    this.m.applySeconds.observe((performance.now() - t0) / 1000);
    this.m.batchesApplied.inc({ stream: stream.streamId });
    this.m.eventsApplied.inc({ stream: stream.streamId }, batch.events.length);
  }

  dropStream(streamId: string): void {
    this.inner.dropStream(streamId);
  }

  match(ns: NamespaceRef, tokenIds: ArrayLike<number>): StreamMatch[] {
    return this.inner.match(ns, tokenIds);
  }

  streamBlocks(streamId: string): BlockClaim[] {
    return this.inner.streamBlocks(streamId);
  }

  stats(): IndexStats {
    return this.inner.stats();
  }
}

/** `index` with `applyBatch` timed (`kvsync_index_apply_duration_seconds`) and counted per stream. */
export function instrumentIndex(index: PrefixIndex, metrics: IndexApplyMetrics): PrefixIndex {
  return new InstrumentedIndex(index, metrics);
}
