/**
 * The instrumented index (src/events/instrumented-index.ts): the decorator times and counts what
 * it applies and otherwise answers exactly as the index it wraps.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Registry } from "prom-client";
import { instrumentIndex } from "../../../src/events/instrumented-index.ts";
import { createSubscriberMetrics } from "../../../src/events/metrics.ts";
import { createIndex } from "../../../src/index/index.ts";
import type { PrefixIndex, StreamRef } from "../../../src/index/types.ts";
import type { EventBatch } from "../../../src/protocol/types.ts";
import { BS, metric, stored } from "./rig.ts";

const ref: StreamRef = { streamId: "p#1", pod: "p", rank: 1, model: "m" };
const batch = (...hs: number[]): EventBatch => ({ ts: 1, events: hs.map(stored), dpRank: 1 });

describe("instrumented index", () => {
  it("applies to the wrapped index, counts batches and events per stream, times each apply", async () => {
    const inner = createIndex();
    const registry = new Registry();
    const ix = instrumentIndex(
      inner,
      createSubscriberMetrics(registry, () => [], inner),
    );
    ix.applyBatch(ref, batch(1, 2));
    ix.applyBatch(ref, batch(3));
    assert.equal(await metric(registry, "kvsync_subscriber_batches_applied_total", { stream: "p#1" }), 2);
    assert.equal(await metric(registry, "kvsync_subscriber_events_applied_total", { stream: "p#1" }), 3);
    const timed = await registry.getSingleMetric("kvsync_index_apply_duration_seconds")!.get();
    const count = timed.values.find((v) => (v as { metricName?: string }).metricName?.endsWith("_count"));
    assert.equal(count?.value, 2);
    // reads go straight through
    assert.equal(ix.streamBlocks("p#1").length, 3);
    assert.deepEqual(ix.stats(), inner.stats());
    assert.equal(ix.streamEntryCount?.("p#1"), inner.streamEntryCount?.("p#1"));
    const ns = { model: "m", lora: null, blockSize: BS };
    const tokens = stored(1).tokenIds;
    assert.deepEqual(ix.match(ns, tokens), inner.match(ns, tokens));
    assert.equal(ix.match(ns, tokens)[0]?.matchedBlocks, 1);
    ix.dropStream("p#1");
    assert.equal(inner.streamBlocks("p#1").length, 0);
  });

  it("has no streamEntryCount when the wrapped index has none", () => {
    const inner = createIndex();
    const bare: PrefixIndex = {
      applyBatch: (s, b) => inner.applyBatch(s, b),
      dropStream: (id) => inner.dropStream(id),
      match: (ns, t) => inner.match(ns, t),
      streamBlocks: (id) => inner.streamBlocks(id),
      stats: () => inner.stats(),
    };
    const ix = instrumentIndex(
      bare,
      createSubscriberMetrics(new Registry(), () => [], bare),
    );
    assert.equal(ix.streamEntryCount, undefined);
  });
});
