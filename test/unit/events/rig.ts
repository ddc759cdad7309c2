/**
 * A subscriber manager on one fake publisher, with the helpers the fault tests share: pods,
 * one-block batches, the blocks a stream holds and metric values.
 */
import { Registry } from "prom-client";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { SubscriberManager } from "../../../src/events/manager.ts";
import type { SubscriberOptions } from "../../../src/events/subscriber.ts";
import { createIndex } from "../../../src/index/index.ts";
import type { PrefixIndex } from "../../../src/index/types.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { hashFromInt, hashToText } from "../../../src/protocol/hash.ts";
import type { BlockStored, EventBatch } from "../../../src/protocol/types.ts";
import { FakePublisher } from "./fake-publisher.ts";

export const BS = 16;

export function podOf(
  name: string,
  ends: { events: string; replay: string | null },
  extra: Partial<PodInfo> = {},
): PodInfo {
  return {
    name,
    model: "m",
    loras: [],
    http: "http://127.0.0.1:1",
    events: ends.events,
    replay: ends.replay,
    dataParallelSize: 1,
    ready: true,
    ...extra,
  };
}

export function stored(h: number): BlockStored {
  return {
    type: "BlockStored",
    blockHashes: [hashFromInt(h)],
    parentBlockHash: null,
    tokenIds: Array.from({ length: BS }, (_, i) => h * 1000 + i),
    blockSize: BS,
    loraId: null,
    medium: "GPU",
    loraName: null,
    extraKeys: null,
    groupIdx: null,
    kvCacheSpecKind: null,
    kvCacheSpecSlidingWindow: null,
    locality: null,
  };
}

/** One batch storing root block `h`. */
export function storeBatch(h: number, ts = h): Uint8Array {
  const b: EventBatch = { ts, events: [stored(h)], dpRank: 0 };
  return encodeBatch(b, "2025-09");
}

export function held(index: PrefixIndex, stream: string): string[] {
  return index
    .streamBlocks(stream)
    .map((c) => hashToText(c.hash))
    .sort();
}

export async function metric(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  const v = m?.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
  return v?.value ?? 0;
}

export interface Rig {
  pub: FakePublisher;
  index: PrefixIndex;
  registry: Registry;
  manager: SubscriberManager;
  close(): Promise<void>;
}

export async function rig(
  pubOpts: ConstructorParameters<typeof FakePublisher>[0] = {},
  subOpts: Omit<SubscriberOptions, "log" | "logContext" | "fromSeq"> = {},
): Promise<Rig> {
  const pub = await new FakePublisher(pubOpts).start();
  const index = createIndex();
  const registry = new Registry();
  const manager = new SubscriberManager({
    index,
    registry,
    topic: pub.topic,
    subscriber: { replayTimeoutMs: 2000, reconnectMs: 20, reconnectMaxMs: 200, ...subOpts },
  });
  return {
    pub,
    index,
    registry,
    manager,
    async close() {
      await manager.close();
      await pub.close();
    },
  };
}
