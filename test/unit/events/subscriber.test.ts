import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { Registry } from "prom-client";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import type { PrefixIndex } from "../../../src/index/types.ts";
import { blockStored } from "../../../src/protocol/build.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { hashFromInt, hashToText } from "../../../src/protocol/hash.ts";
import type { BlockStored, EventBatch } from "../../../src/protocol/types.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { FakePublisher } from "./fake-publisher.ts";
import { type Rig, rig as sharedRig } from "./rig.ts";

const FIXTURES = join(import.meta.dirname, "../../fixtures/vllm-kv-events");
const BS = 16;

function pod(name: string, pub: FakePublisher, extra: Partial<PodInfo> = {}): PodInfo {
  return {
    name,
    model: "m",
    loras: [],
    http: "http://127.0.0.1:1",
    events: pub.pubEndpoint,
    replay: pub.replayEndpoint,
    dataParallelSize: 1,
    ready: true,
    ...extra,
  };
}

/** Tokens of block `h` (a root block per hash keeps tests independent of chaining). */
function tokensOf(h: number): number[] {
  return Array.from({ length: BS }, (_, i) => h * 1000 + i);
}

function stored(h: number): BlockStored {
  return blockStored([hashFromInt(h)], null, tokensOf(h), BS, { medium: "GPU" });
}

/** One batch storing root block `h`, as a vLLM of 2025-09 encodes it. */
function storeBatch(h: number, ts = h): Uint8Array {
  const b: EventBatch = { ts, events: [stored(h)], dpRank: 0 };
  return encodeBatch(b, "2025-09");
}

function held(index: PrefixIndex, stream: string): string[] {
  return index
    .streamBlocks(stream)
    .map((c) => hashToText(c.hash))
    .sort();
}

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** The shared rig (rig.ts), closed after the file's tests. */
async function rig(...args: Parameters<typeof sharedRig>): Promise<Rig> {
  const r = await sharedRig(...args);
  cleanups.push(() => r.close());
  return r;
}

async function metric(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  const v = m?.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
  return v?.value ?? 0;
}

describe("subscriber: conformance frames through real sockets", () => {
  const files = readdirSync(FIXTURES).filter((f) => f.endsWith(".json"));
  assert.ok(files.length >= 6, "conformance files present");
  for (const file of files) {
    it(`${file}: forced gap filled by the ROUTER's captured replay; ends with only the last two blocks`, async () => {
      const d = JSON.parse(readFileSync(join(FIXTURES, file), "utf8"));
      const hex = (msg: string[]) => msg.map((f) => Buffer.from(f, "hex"));
      const topicLayout = d.replay_response[0].length === 4;
      const { pub, index, registry, manager } = await rig({ topic: d.topic, topicLayout });
      pub.canned.set(d.replay_request_from_seq, d.replay_response.map(hex));
      manager.setPods([pod("pod-a", pub)]);
      await pub.waitSubscribed();
      // the first connect asks for the engine's buffer (empty here) and goes live
      await waitFor("live after the initial replay", () => manager.status("pod-a")?.state === "live", {
        timeoutMs: 5000,
        describe: () => manager.status("pod-a"),
      });
      assert.deepEqual(pub.requests, [0]);
      const gapFrom = d.replay_request_from_seq as number;
      const last = d.live.length - 1;
      for (let s = 0; s <= last; s++) {
        if (s >= gapFrom && s < gapFrom + 2) continue; // lost at the PUB high-water mark
        await pub.sendRaw(hex(d.live[s]));
      }
      await waitFor(
        "the stream to reach the last seq",
        () => manager.status("pod-a")?.lastSeq === last && manager.status("pod-a")?.state === "live",
        { timeoutMs: 5000, describe: () => manager.status("pod-a") },
      );
      assert.deepEqual(pub.requests, [0, gapFrom], "one replay for the gap, from last + 1");
      const st = manager.status("pod-a");
      assert.equal(st?.gaps, 1);
      assert.equal(st?.resyncs, 0);
      assert.equal(st?.decodeErrors, 0);
      const events = d.expected.reduce((n: number, b: { events: unknown[] }) => n + b.events.length, 0);
      assert.equal(st?.eventsApplied, events, "every event applied exactly once");
      // documented final state: only the two blocks of the last batch
      const lastEv = d.expected[last].events[0];
      const want = (lastEv.block_hashes as string[]).map((h) => (/^-?\d+$/.test(h) ? h : `0x${h}`)).sort();
      assert.deepEqual(held(index, "pod-a"), want);
      for (const c of index.streamBlocks("pod-a")) assert.deepEqual(c.tiers, ["GPU"]);
      const m = index.match({ model: "m", lora: null, blockSize: 16 }, lastEv.token_ids);
      assert.equal(m.length, 1);
      assert.equal(m[0].matchedBlocks, 2);
      assert.equal(await metric(registry, "kvsync_subscriber_gaps_total", { stream: "pod-a" }), 1);
      assert.equal(
        await metric(registry, "kvsync_subscriber_events_applied_total", { stream: "pod-a" }),
        events,
      );
    });
  }
});

describe("subscriber: faults", () => {
  it("an engine restart (seq goes backwards) drops the stream's entries and starts over", async () => {
    const { pub, index, manager, registry } = await rig();
    manager.setPods([pod("p", pub)]);
    await pub.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    for (let s = 0; s < 3; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 2", () => manager.status("p")?.lastSeq === 2, {
      timeoutMs: 5000,
      describe: () => manager.status("p"),
    });
    assert.deepEqual(held(index, "p"), ["1", "2", "3"]);
    // new process: new buffer, seq from 0 again, different content
    pub.buffer.clear();
    await pub.publish(0, storeBatch(50, 1000));
    await waitFor(
      "restart handled",
      () => manager.status("p")?.restarts === 1 && manager.status("p")?.state === "live",
    );
    await pub.publish(1, storeBatch(51, 1001));
    await waitFor("seq 1 of the new process", () => manager.status("p")?.lastSeq === 1, {
      timeoutMs: 5000,
      describe: () => manager.status("p"),
    });
    assert.deepEqual(held(index, "p"), ["50", "51"]);
    assert.equal(await metric(registry, "kvsync_subscriber_restarts_total", { stream: "p" }), 1);
    assert.equal(await metric(registry, "kvsync_subscriber_resyncs_total", { stream: "p" }), 0);
  });

  it("a gap the replay buffer no longer covers drops the entries and rebuilds (resync)", async () => {
    const { pub, index, manager, registry } = await rig();
    manager.setPods([pod("p", pub)]);
    await pub.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await pub.publish(0, storeBatch(1));
    await pub.publish(1, storeBatch(2));
    await waitFor("seq 1", () => manager.status("p")?.lastSeq === 1);
    // seqs 2..3 were lost and have left the engine's buffer
    await pub.publish(2, storeBatch(3), false);
    await pub.publish(3, storeBatch(4), false);
    pub.buffer.delete(2);
    pub.buffer.delete(3);
    pub.buffer.set(4, storeBatch(5));
    await pub.publish(5, storeBatch(6));
    await waitFor(
      "resynced at seq 5",
      () => manager.status("p")?.lastSeq === 5 && manager.status("p")?.state === "live",
      { timeoutMs: 5000, describe: () => manager.status("p") },
    );
    assert.deepEqual(pub.requests, [0, 2]);
    // what a lost BlockRemoved may have made false is gone; what the buffer still had is back
    assert.deepEqual(held(index, "p"), ["5", "6"]);
    assert.equal(manager.status("p")?.resyncs, 1);
    assert.equal(await metric(registry, "kvsync_subscriber_resyncs_total", { stream: "p" }), 1);
  });

  it("without a replay endpoint a gap resyncs from the live stream", async () => {
    const { pub, index, manager } = await rig({ noReplay: true });
    manager.setPods([pod("p", pub)]);
    await pub.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await pub.publish(0, storeBatch(1));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    await pub.publish(2, storeBatch(3));
    await pub.publish(3, storeBatch(4));
    await waitFor(
      "seq 3",
      () => manager.status("p")?.lastSeq === 3 && manager.status("p")?.state === "live",
      { timeoutMs: 5000, describe: () => manager.status("p") },
    );
    assert.deepEqual(held(index, "p"), ["3", "4"]);
    assert.equal(manager.status("p")?.resyncs, 1);
    assert.equal(manager.status("p")?.replays, 0);
  });

  it("a replay that times out resyncs and the stream goes on", async () => {
    const { pub, index, manager, registry } = await rig({}, { replayTimeoutMs: 200 });
    manager.setPods([pod("p", pub)]);
    await pub.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await pub.publish(0, storeBatch(1));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    pub.silent = true;
    await pub.publish(1, storeBatch(2), false);
    await pub.publish(2, storeBatch(3));
    await waitFor("resync after the timeout", () => manager.status("p")?.resyncs === 1, {
      timeoutMs: 5000,
      describe: () => manager.status("p"),
    });
    await pub.publish(3, storeBatch(4));
    await waitFor(
      "seq 3, live",
      () => manager.status("p")?.lastSeq === 3 && manager.status("p")?.state === "live",
      { timeoutMs: 5000, describe: () => manager.status("p") },
    );
    assert.deepEqual(held(index, "p"), ["3", "4"]);
    assert.equal(await metric(registry, "kvsync_subscriber_replay_failures_total", { stream: "p" }), 1);
  });

  it("decode errors are counted and never stop the stream; a batch bad in the engine too rebuilds", async () => {
    const { pub, index, manager, registry } = await rig();
    manager.setPods([pod("p", pub)]);
    await pub.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await pub.publish(0, storeBatch(1));
    await pub.publish(1, Buffer.from([0xc1, 0x00, 0x01])); // not msgpack
    await pub.sendRaw([Buffer.from(""), Buffer.from([0, 1])]); // 2 frames: bad framing
    await pub.sendRaw([Buffer.from(""), Buffer.from([0, 0, 0]), Buffer.from([0x90])]); // 3-byte seq
    await pub.publish(
      2,
      encodeBatch({ ts: 1, events: [{ type: "AllBlocksCleared" }, stored(7)], dpRank: 0 }, "2025-09"),
    );
    await pub.publish(3, storeBatch(8));
    await waitFor("seq 3", () => manager.status("p")?.lastSeq === 3, {
      timeoutMs: 5000,
      describe: () => manager.status("p"),
    });
    const st = manager.status("p");
    // seq 1 is bad in the engine's buffer too: asked again (3 times), then the stream is rebuilt
    assert.ok((st?.decodeErrors ?? 0) >= 3 + 2, `decode errors ${st?.decodeErrors}`);
    // no good copy of seq 1: dropped and rebuilt (again if the framing errors' rebuild already ran)
    assert.ok((st?.resyncs ?? 0) >= 1, `resyncs ${st?.resyncs}`);
    assert.equal(st?.gaps, 0);
    assert.deepEqual(held(index, "p"), ["7", "8"]);
    assert.equal(
      await metric(registry, "kvsync_subscriber_decode_errors_total", { stream: "p" }),
      st?.decodeErrors,
    );
  });

  it("reconnects after the publisher goes away and comes back, without losing the entries", async () => {
    const first = await new FakePublisher().start();
    const index = createIndex();
    const manager = new SubscriberManager({
      index,
      subscriber: { replayTimeoutMs: 2000, reconnectMs: 20, reconnectMaxMs: 100 },
    });
    let second: FakePublisher | null = null;
    cleanups.push(async () => {
      await manager.close();
      await first.close();
      await second?.close();
    });
    const states: string[] = [];
    manager.on("state", (s) => states.push(s.state));
    manager.setPods([pod("p", first)]);
    await first.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await first.publish(0, storeBatch(1));
    await first.publish(1, storeBatch(2));
    await waitFor("seq 1", () => manager.status("p")?.lastSeq === 1);
    await first.close();
    await waitFor("down", () => manager.status("p")?.state === "down", {
      timeoutMs: 5000,
      describe: () => manager.status("p"),
    });
    // the same engine comes back on the same addresses with its buffer, one batch further
    second = await new FakePublisher({
      pubEndpoint: first.pubEndpoint,
      replayEndpoint: first.replayEndpoint as string,
    }).start();
    for (const [s, p] of first.buffer) second.buffer.set(s, p);
    second.buffer.set(2, storeBatch(3));
    await second.waitSubscribed(1, 10_000);
    await waitFor(
      "live again",
      () => manager.status("p")?.state === "live" && manager.status("p")?.lastSeq === 2,
      { timeoutMs: 10_000, describe: () => manager.status("p") },
    );
    // it checked the engine from its last seq (same batch there: same process) and caught up
    assert.deepEqual(second.requests, [1]);
    await second.publish(3, storeBatch(4));
    await waitFor("seq 3", () => manager.status("p")?.lastSeq === 3);
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4"]);
    assert.equal(manager.status("p")?.resyncs, 0);
    assert.ok(
      states.includes("down") && states.lastIndexOf("live") > states.indexOf("down"),
      states.join(","),
    );
  });

  it("manager: endpoint change restarts the stream and drops old entries; delete drops; DP ranks are streams", async () => {
    const a = await new FakePublisher().start();
    const b = await new FakePublisher().start();
    const index = createIndex();
    const manager = new SubscriberManager({ index, subscriber: { replayTimeoutMs: 2000 } });
    cleanups.push(async () => {
      await manager.close();
      await a.close();
      await b.close();
    });
    manager.setPods([pod("p", a)]);
    await a.waitSubscribed();
    await waitFor("live", () => manager.status("p")?.state === "live");
    await a.publish(0, storeBatch(1));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    assert.deepEqual(held(index, "p"), ["1"]);
    // not ready: the stream stays
    manager.setPods([pod("p", a, { ready: false })]);
    assert.equal(manager.status("p")?.lastSeq, 0);
    assert.deepEqual(held(index, "p"), ["1"]);
    // moved to another address: old entries gone, new stream follows b
    manager.setPods([pod("p", b)]);
    assert.deepEqual(held(index, "p"), []);
    await b.waitSubscribed();
    await waitFor("live on b", () => manager.status("p")?.state === "live");
    await b.publish(0, storeBatch(9));
    await waitFor("seq 0 on b", () => manager.status("p")?.lastSeq === 0 && held(index, "p").length === 1);
    assert.deepEqual(held(index, "p"), ["9"]);
    manager.setPods([]);
    assert.equal(manager.status("p"), undefined);
    assert.deepEqual(held(index, "p"), []);
    // data parallel: rank r on port + r
    manager.setPods([
      {
        ...pod("dp", a),
        dataParallelSize: 2,
        events: "tcp://127.0.0.1:5999",
        replay: "tcp://127.0.0.1:6999",
      },
    ]);
    const specs = manager.specs().map((s) => [s.ref.streamId, s.ref.rank, s.events, s.replay]);
    assert.deepEqual(specs, [
      ["dp#0", 0, "tcp://127.0.0.1:5999", "tcp://127.0.0.1:6999"],
      ["dp#1", 1, "tcp://127.0.0.1:6000", "tcp://127.0.0.1:7000"],
    ]);
  });
});
