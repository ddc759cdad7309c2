/**
 * Data-parallel port layouts: vLLM offsets BOTH the PUB and the replay port by the rank, so the
 * defaults 5557/5558 with two ranks put rank 1's PUB on rank 0's replay port. A colliding layout
 * is refused (logged, counted, shown in /admin/pods) instead of subscribed; a separate replay
 * base and a start rank work; a stream that receives another rank's batches refuses them.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import pino from "pino";
import { Registry } from "prom-client";
import { createAdminHandler } from "../../../src/admin/admin.ts";
import { DEFAULT_ENGINE_OPTIONS, validateOptions } from "../../../src/engine/options.ts";
import { SubscriberManager, streamsOf } from "../../../src/events/manager.ts";
import { podStreamIds } from "../../../src/events/types.ts";
import { createIndex } from "../../../src/index/index.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { dataParallelLayout, LayoutError } from "../../../src/protocol/endpoints.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { engineTruth, freePorts, startTestEngine } from "./engines.ts";
import { held, metric, podOf, rig, stored } from "./rig.ts";

function logSink(): { lines: Array<Record<string, unknown>>; log: pino.Logger } {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, log: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }) };
}

async function adminPods(h: ReturnType<typeof createAdminHandler>): Promise<Array<Record<string, unknown>>> {
  const { createServer } = await import("node:http");
  const srv = createServer((req, res) => void h(req, res));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  try {
    const port = (srv.address() as { port: number }).port;
    return (await (await fetch(`http://127.0.0.1:${port}/admin/pods`)).json()) as Array<
      Record<string, unknown>
    >;
  } finally {
    srv.close();
  }
}

describe("dataParallelLayout (vLLM's offset_endpoint_port on both sockets)", () => {
  it("the defaults with two ranks collide: rank 1's PUB is rank 0's replay port", () => {
    assert.throws(
      () => dataParallelLayout({ events: "tcp://10.0.0.5:5557", replay: "tcp://10.0.0.5:5558", size: 2 }),
      (e: unknown) =>
        e instanceof LayoutError &&
        e.code === "collision" &&
        /events PUB of rank 1 and the replay ROUTER of rank 0 are both on tcp:\/\/10\.0\.0\.5:5558/.test(
          e.message,
        ),
    );
    // one rank: no overlap
    assert.equal(dataParallelLayout({ events: "tcp://h:5557", replay: "tcp://h:5558", size: 1 }).length, 1);
  });

  it("a separate replay base far enough away works; every rank offsets both ports", () => {
    const l = dataParallelLayout({ events: "tcp://h:5557", replay: "tcp://h:5657", size: 4 });
    assert.deepEqual(
      l.map((r) => [r.local, r.global, r.events, r.replay]),
      [
        [0, 0, "tcp://h:5557", "tcp://h:5657"],
        [1, 1, "tcp://h:5558", "tcp://h:5658"],
        [2, 2, "tcp://h:5559", "tcp://h:5659"],
        [3, 3, "tcp://h:5560", "tcp://h:5660"],
      ],
    );
    // a replay base inside the events range collides at the first shared port
    assert.throws(
      () => dataParallelLayout({ events: "tcp://h:5557", replay: "tcp://h:5559", size: 4 }),
      /rank 2 and the replay ROUTER of rank 0 are both on tcp:\/\/h:5559/,
    );
  });

  it("a start rank offsets by the global rank (vLLM --data-parallel-start-rank)", () => {
    const l = dataParallelLayout({ events: "tcp://h:5557", replay: "tcp://h:5657", size: 2, startRank: 4 });
    assert.deepEqual(
      l.map((r) => [r.local, r.global, r.events, r.replay]),
      [
        [0, 4, "tcp://h:5561", "tcp://h:5661"],
        [1, 5, "tcp://h:5562", "tcp://h:5662"],
      ],
    );
  });

  it("the HTTP port, ports past 65535, wildcard hosts and ephemeral ports", () => {
    assert.throws(
      () => dataParallelLayout({ events: "tcp://h:7999", replay: null, size: 2, http: "tcp://h:8000" }),
      /events PUB of rank 1 and the HTTP server are both on tcp:\/\/h:8000/,
    );
    assert.throws(
      () => dataParallelLayout({ events: "tcp://h:65535", replay: null, size: 2 }),
      (e: unknown) => e instanceof LayoutError && e.code === "range",
    );
    // "*" and an address are the same port of the host
    assert.throws(
      () => dataParallelLayout({ events: "tcp://*:5557", replay: "tcp://0.0.0.0:5558", size: 2 }),
      LayoutError,
    );
    assert.equal(
      dataParallelLayout({ events: "tcp://127.0.0.1:*", replay: "tcp://127.0.0.1:*", size: 3 }).length,
      3,
    );
    // vLLM's connect mode: the PUB occupies no local port
    assert.equal(
      dataParallelLayout({
        events: "tcp://router:5558",
        replay: "tcp://*:5558",
        size: 1,
        eventsConnect: true,
      }).length,
      1,
    );
  });

  it("the mock engine refuses a colliding layout with the same message", () => {
    const o = { ...DEFAULT_ENGINE_OPTIONS, dataParallelSize: 2 };
    assert.throws(
      () => validateOptions(o),
      /events PUB of rank 1 and the replay ROUTER of rank 0 are both on tcp:\/\/\*:5558/,
    );
    validateOptions({ ...o, replayEndpoint: "tcp://*:5657" });
    validateOptions({ ...o, dataParallelSize: 1 });
  });

  it("streamsOf: a pod's streams expect their global rank in batches", () => {
    const base = podOf("p", { events: "tcp://h:5557", replay: "tcp://h:5657" }, { http: "http://h:8000" });
    assert.deepEqual(
      streamsOf({ ...base, dataParallelSize: 2, dataParallelStartRank: 2 }).map((s) => [
        s.ref.streamId,
        s.ref.rank,
        s.events,
        s.replay,
        s.dpRank,
      ]),
      [
        ["p#0", 0, "tcp://h:5559", "tcp://h:5659", 2],
        ["p#1", 1, "tcp://h:5560", "tcp://h:5660", 3],
      ],
    );
    assert.equal(streamsOf(base)[0]?.dpRank, null);
    assert.throws(() => streamsOf({ ...base, replay: "tcp://h:5558", dataParallelSize: 2 }), LayoutError);
  });

  it("streamsOf names its streams as podStreamIds does (the planner's candidates, the gateway's forget loop)", () => {
    const base = podOf("ns/q", { events: "tcp://h:5557", replay: "tcp://h:5657" }, { http: "http://h:8000" });
    for (const dataParallelSize of [1, 2, 4, 0, 2.5]) {
      const pod = { ...base, dataParallelSize };
      assert.deepEqual(
        streamsOf(pod).map((s) => ({ streamId: s.ref.streamId, rank: s.ref.rank })),
        podStreamIds(pod),
        `dataParallelSize ${dataParallelSize}`,
      );
    }
  });
});

describe("the subscriber manager and a colliding layout", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it("refuses the pod: no stream, an error log, a metric, a warning in /admin/pods; a fixed layout subscribes", async () => {
    const { lines, log } = logSink();
    const index = createIndex();
    const registry = new Registry();
    const manager = new SubscriberManager({ index, registry, log });
    cleanups.push(() => manager.close());
    const bad = podOf(
      "dp",
      { events: "tcp://127.0.0.1:5557", replay: "tcp://127.0.0.1:5558" },
      { dataParallelSize: 2 },
    );
    manager.setPods([bad]);
    manager.setPods([bad]); // logged once, not per reconcile
    assert.deepEqual(manager.specs(), []);
    const refused = lines.filter((l) => l.event === "subscriber.layout_refused");
    assert.equal(refused.length, 1);
    assert.equal(refused[0]?.pod, "dp");
    assert.match(String(refused[0]?.err), /rank 1 and the replay ROUTER of rank 0/);
    assert.equal(
      await metric(registry, "kvsync_subscriber_layout_refused", { pod: "dp", reason: "collision" }),
      1,
    );
    const admin = createAdminHandler({ index, manager, registry, pods: () => manager.pods() });
    const rows = await adminPods(admin);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.stream, null);
    const w = rows[0]?.warnings as Array<{ code: string; message: string }>;
    assert.equal(w[0]?.code, "layout_refused");
    assert.match(w[0]!.message, /both on tcp:\/\/127\.0\.0\.1:5558/);

    manager.setPods([{ ...bad, replay: "tcp://127.0.0.1:5657" }]);
    assert.deepEqual(
      manager.specs().map((s) => [s.ref.streamId, s.events, s.replay]),
      [
        ["dp#0", "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5657"],
        ["dp#1", "tcp://127.0.0.1:5558", "tcp://127.0.0.1:5658"],
      ],
    );
    assert.equal(manager.layoutError("dp"), null);
    assert.equal(await metric(registry, "kvsync_subscriber_layout_refused", { pod: "dp" }), 0);
    assert.ok(lines.some((l) => l.event === "subscriber.layout_ok"));
  });

  it("a stream that receives another rank's batches refuses them, logs once and counts them", async () => {
    const r = await rig();
    cleanups.push(() => r.close());
    const { lines, log } = logSink();
    const registry = new Registry();
    const manager = new SubscriberManager({ index: r.index, registry, log });
    cleanups.push(() => manager.close());
    // the pod says rank 0 publishes on the fake's port; the fake publishes rank 1's batches there
    manager.setPods([
      podOf(
        "dp",
        { events: r.pub.pubEndpoint, replay: null },
        { dataParallelSize: 2, http: "http://10.9.9.9:1" },
      ),
    ]);
    await r.pub.waitSubscribed();
    await waitFor("live", () => manager.status("dp#0")?.state === "live", { timeoutMs: 10_000 });
    for (let seq = 0; seq < 3; seq++) {
      await r.pub.publish(seq, encodeBatch({ ts: seq, events: [stored(seq + 1)], dpRank: 1 }, "2026-07"));
    }
    await waitFor("refused", () => manager.status("dp#0")?.wrongRankBatches === 3, { timeoutMs: 10_000 });
    assert.deepEqual(held(r.index, "dp#0"), []);
    assert.equal(lines.filter((l) => l.event === "subscriber.wrong_rank").length, 1);
    const l = lines.find((x) => x.event === "subscriber.wrong_rank")!;
    assert.equal(l.expected, 0);
    assert.equal(l.got, 1);
    assert.equal(await metric(registry, "kvsync_subscriber_wrong_rank_batches_total", { stream: "dp#0" }), 3);
    // the right rank's batches are applied
    await r.pub.publish(3, encodeBatch({ ts: 3, events: [stored(9)], dpRank: 0 }, "2026-07"));
    await waitFor("applied", () => held(r.index, "dp#0").length === 1, { timeoutMs: 10_000 });
  });

  it("a mock engine with a separate replay base and a start rank: index == truth per rank", async () => {
    const events = await freePorts(6);
    const replay = events + 3;
    const e = await startTestEngine(
      "dp",
      {
        dataParallelSize: 2,
        dataParallelStartRank: 1,
        blockSize: 4,
        numGpuBlocks: 64,
        speed: 50,
        hashSeed: "dp",
      },
      { http: await freePorts(1), events, replay },
    );
    cleanups.push(async () => e.running?.close());
    const index = createIndex();
    const manager = new SubscriberManager({ index, subscriber: { reconnectMaxMs: 200 } });
    cleanups.push(() => manager.close());
    manager.setPods([
      podOf(
        "dp",
        { events: `tcp://127.0.0.1:${events}`, replay: `tcp://127.0.0.1:${replay}` },
        { dataParallelSize: 2, dataParallelStartRank: 1, http: e.url },
      ),
    ]);
    // rank 0 of the pod is global rank 1: port + 1
    assert.deepEqual(
      manager.specs().map((s) => [s.events, s.replay, s.dpRank]),
      [
        [`tcp://127.0.0.1:${events + 1}`, `tcp://127.0.0.1:${replay + 1}`, 1],
        [`tcp://127.0.0.1:${events + 2}`, `tcp://127.0.0.1:${replay + 2}`, 2],
      ],
    );
    await waitFor("live", () => manager.statuses().every((s) => s.state === "live"), { timeoutMs: 10_000 });
    for (const rank of [0, 1]) {
      const res = await fetch(`${e.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-data-parallel-rank": String(rank) },
        body: JSON.stringify({
          model: "Qwen/Qwen3-0.6B",
          prompt: Array.from({ length: 20 }, (_, i) => 100 + i + rank),
          max_tokens: 2,
        }),
      });
      assert.equal(res.status, 200);
    }
    await e.running?.engine.quiesce();
    for (const rank of [0, 1]) {
      const truth = (await engineTruth(e, rank)).map((b) => b.hash);
      assert.ok(truth.length > 0);
      await waitFor(
        `rank ${rank} == truth`,
        () => JSON.stringify(held(index, `dp#${rank}`)) === JSON.stringify([...truth].sort()),
        {
          timeoutMs: 10_000,
        },
      );
    }
    assert.equal(manager.status("dp#0")?.wrongRankBatches, 0);
  });
});
