/**
 * The event lag histogram (kvsync_subscriber_event_lag_seconds) measures an engine batch's
 * timestamp to the batch applied in the index, on a sub-millisecond wall clock: an index that
 * takes 40 ms to apply a batch shows a lag of at least 40 ms.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Registry } from "prom-client";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import type { PrefixIndex } from "../../../src/index/types.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { wallClockMs } from "../../../src/util/wall-clock.ts";
import { FakePublisher } from "./fake-publisher.ts";
import { podOf, stored } from "./rig.ts";

const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const APPLY_MS = 40;

async function histogram(registry: Registry): Promise<{ count: number; sum: number }> {
  const m = await registry.getSingleMetric("kvsync_subscriber_event_lag_seconds")!.get();
  const pick = (suffix: string) =>
    m.values.find((v) => (v as { metricName?: string }).metricName?.endsWith(suffix))?.value ?? 0;
  return { count: pick("_count"), sum: pick("_sum") };
}

describe("event lag: engine stamp to applied", () => {
  it("includes the index's apply time", async () => {
    const pub = await new FakePublisher().start();
    cleanups.push(() => pub.close());
    const inner = createIndex();
    // an index that takes APPLY_MS to apply each batch (busy: the event loop is held, as a real apply holds it)
    const slow: PrefixIndex = {
      applyBatch: (s, b) => {
        const end = performance.now() + APPLY_MS;
        while (performance.now() < end);
        inner.applyBatch(s, b);
      },
      dropStream: (id) => inner.dropStream(id),
      match: (ns, t) => inner.match(ns, t),
      streamBlocks: (id) => inner.streamBlocks(id),
      stats: () => inner.stats(),
    };
    const registry = new Registry();
    const manager = new SubscriberManager({
      index: slow,
      registry,
      topic: pub.topic,
      subscriber: { tailCheckMs: 0 },
    });
    cleanups.push(() => manager.close());
    manager.setPods([podOf("p", { events: pub.pubEndpoint, replay: pub.replayEndpoint })]);
    await pub.waitSubscribed(1, 20_000);
    await waitFor("live", () => manager.status("p")?.state === "live", { timeoutMs: 20_000 });
    const before = await histogram(registry);
    await pub.publish(
      0,
      encodeBatch({ ts: wallClockMs() / 1000, events: [stored(1)], dpRank: 0 }, "2025-09"),
    );
    await waitFor("the batch's lag observed", async () => (await histogram(registry)).count > before.count, {
      timeoutMs: 20_000,
    });
    const now = await histogram(registry);
    const lag = now.sum - before.sum;
    assert.equal(now.count - before.count, 1);
    assert.ok(lag >= APPLY_MS / 1000, `lag ${lag} s is shorter than the apply (${APPLY_MS} ms)`);
    // generous: a loaded machine delays the batch, but not by minutes
    assert.ok(lag < 60, `lag ${lag} s`);
  });

  it("the wall clock has sub-millisecond steps and stays within ~1 ms of Date.now()", () => {
    const seen = new Set<number>();
    const t0 = wallClockMs();
    while (wallClockMs() - t0 < 2) seen.add(wallClockMs() % 1);
    assert.ok(seen.size > 2, "no sub-millisecond resolution");
    for (let i = 0; i < 100; i++) {
      const a = Date.now();
      const w = wallClockMs();
      const b = Date.now();
      assert.ok(w >= a - 2 && w <= b + 2, `wall ${w} outside [${a}, ${b}]`);
    }
  });
});
