/**
 * Issue 17's flood isolation on real sockets: one engine process floods its PUB as fast as it can
 * (flood-engine.ts) while another stream publishes now and then. The flooding stream's buffer
 * stays within its byte budget (its reading pauses, the engine's PUB drops the rest), the quiet
 * stream's batches are applied while the flood is still overrunning its subscriber, and once the
 * flood ends the replays have brought the flooding stream's entries to exactly the engine's cache.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";
import { Registry } from "prom-client";
import { FLOOD_ENGINE, type FloodEngineConfig, truthOf } from "../../../harness/flood-engine.ts";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import { hashFromInt, hashToText } from "../../../src/protocol/hash.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { FakePublisher } from "./fake-publisher.ts";
import { held, metric, podOf, storeBatch } from "./rig.ts";

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

interface FloodEngine {
  pub: string;
  replay: string;
  stop(): Promise<number>;
}

/** Start flood-engine.ts; resolves once it is bound. `stop()` resolves with the batches it sent. */
async function floodEngine(cfg: FloodEngineConfig): Promise<FloodEngine> {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", FLOOD_ENGINE, JSON.stringify(cfg)],
    {
      stdio: ["pipe", "pipe", "inherit"],
    },
  );
  cleanups.push(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.stdin?.end();
    const t = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(t);
  });
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const next = (event: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const onLine = (line: string) => {
        const m = JSON.parse(line) as Record<string, unknown>;
        if (m.event !== event) return;
        lines.off("line", onLine);
        resolve(m);
      };
      lines.on("line", onLine);
      child.once("exit", (code) => reject(new Error(`flood engine exited (${code}) before ${event}`)));
    });
  const ready = await next("ready");
  return {
    pub: ready.pub as string,
    replay: ready.replay as string,
    async stop() {
      const done = next("done");
      child.stdin?.write("stop\n");
      return (await done).batches as number;
    },
  };
}

const BUDGET = 64 * 1024;

describe("flood isolation (real ZeroMQ sockets, the flood from another process)", () => {
  it("a flooding stream stays within its byte budget, does not starve another stream, and ends == truth", async () => {
    const cfg: FloodEngineConfig = {
      mode: "flood",
      eventsPerBatch: 8,
      cacheBlocks: 512,
      bufferBatches: 5_000,
      maxBatches: 1_000_000_000,
      hashBase: 1_000_000,
      sndHwm: 1000,
    };
    const flood = await floodEngine(cfg);
    const quiet = await new FakePublisher({ topic: "kv" }).start();
    cleanups.push(() => quiet.close());
    const index = createIndex();
    const registry = new Registry();
    const manager = new SubscriberManager({
      index,
      registry,
      topic: "kv",
      subscriber: {
        streamBufferBytes: BUDGET,
        // a low high-water mark: while the flooding stream's reading waits, the engine drops soon
        receiveHighWaterMark: 1000,
        replayTimeoutMs: 20_000,
        tailCheckMs: 500,
        // generous on a loaded machine: a stalled process must not look like a dead engine here
        heartbeatTimeoutMs: 10_000,
      },
    });
    cleanups.push(() => manager.close());
    manager.setPods([
      podOf("flood", { events: flood.pub, replay: flood.replay }),
      podOf("quiet", { events: quiet.pubEndpoint, replay: quiet.replayEndpoint }),
    ]);
    await quiet.waitSubscribed(1, 30_000);
    await waitFor("quiet live", () => manager.status("quiet")?.state === "live", 30_000);
    const flow = () => manager.flow("flood") ?? assert.fail("no flood stream");
    // the flood overruns its subscriber: reading paused on a full buffer, the engine dropped some
    await waitFor(
      "the flooding stream paused and saw a gap",
      () => flow().pauses >= 3 && (manager.status("flood")?.gaps ?? 0) > 0,
      { timeoutMs: 60_000, describe: () => ({ flow: flow(), status: manager.status("flood") }) },
    );
    const pausesBefore = flow().pauses;
    for (let i = 1; i <= 10; i++) {
      await quiet.publish(i - 1, storeBatch(i));
      const want = hashToText(hashFromInt(i));
      await waitFor(`quiet batch ${i} applied`, () => held(index, "quiet").includes(want), {
        timeoutMs: 30_000,
        describe: () => ({ quiet: manager.status("quiet"), flood: flow() }),
      });
    }
    // the flood was still overrunning its subscriber while the quiet stream's batches went in
    await waitFor("the flooding stream paused again", () => flow().pauses > pausesBefore, 60_000);
    const peak = flow().peakLiveBytes;
    const batches = await flood.stop();
    const truth = truthOf(cfg, batches)
      .map((h) => hashToText(hashFromInt(h)))
      .sort();
    await waitFor(
      "the flooding stream's entries == the engine's cache",
      () => {
        const got = held(index, "flood");
        return (
          (got.length === truth.length && got.every((h, i) => h === truth[i])) ||
          `${got.length} held vs ${truth.length}, last seq ${manager.status("flood")?.lastSeq} of ${batches - 1}`
        );
      },
      { timeoutMs: 90_000, intervalMs: 50 },
    );
    assert.equal(held(index, "quiet").length, 10);
    const st = manager.status("flood");
    assert.ok(st && st.gaps > 0 && st.replays > 0, `gaps filled by replays: ${JSON.stringify(st)}`);
    // live frames never took the buffer past its budget by more than the one message that crossed it
    assert.ok(peak <= BUDGET + 4096, `peak live bytes ${peak} within ${BUDGET} + one message`);
    assert.ok(
      (await metric(registry, "kvsync_stream_throttled_total", { stream: "flood", reason: "buffer_full" })) >=
        3,
    );
    assert.equal(
      await metric(registry, "kvsync_stream_throttled_total", { stream: "quiet", reason: "buffer_full" }),
      0,
    );
    await waitFor("the buffer drained", () => flow().bufferedBytes === 0 && flow().queued === 0, 30_000);
  });
});
