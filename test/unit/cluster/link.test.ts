import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Registry } from "prom-client";
import { NatsServer } from "../../../harness/nats-server.ts";
import { ClusterLink } from "../../../src/cluster/link.ts";
import { LoadTracker } from "../../../src/routing/load.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { parseMetrics } from "../../helpers/metrics.ts";

interface Replica {
  loads: LoadTracker;
  link: ClusterLink;
  registry: Registry;
}

function replica(nats: NatsServer, id: string): Replica {
  const loads = new LoadTracker();
  const registry = new Registry();
  const link = new ClusterLink(
    { url: nats.url, name: "t", id, heartbeatMs: 100, peerTimeoutMs: 1000 },
    loads,
    registry,
    silentLogger(),
  );
  loads.share(link.remote, link);
  link.start();
  return { loads, link, registry };
}

const inflight = (r: Replica, s = "p0") => r.loads.load(s, s).inflightRequests;

async function metric(r: Replica, key: string): Promise<number> {
  return parseMetrics(await r.registry.metrics()).get(key) ?? 0;
}

describe("cluster link against a real nats-server", { timeout: 120_000 }, () => {
  let nats: NatsServer;
  let a: Replica;
  let b: Replica;
  before(async () => {
    nats = await NatsServer.start();
    a = replica(nats, "a");
    b = replica(nats, "b");
    await Promise.all([a.link.connection(10_000), b.link.connection(10_000)]);
    await waitFor(
      "a and b hear each other",
      () => a.link.remote.peerCount() === 1 && b.link.remote.peerCount() === 1,
    );
  });
  after(async () => {
    await a?.link.close();
    await b?.link.close();
    await nats?.stop();
  });

  it("a request routed by one replica shows in the other's load view until it ends", async () => {
    const t = a.loads.begin("p0", 300);
    assert.equal(inflight(a), 1);
    await waitFor("b sees a's request", () => inflight(b) === 1 || `b sees ${inflight(b)}`);
    assert.equal(b.loads.load("p0", "p0").inflightPrefillTokens, 300);
    // the delta carried its send time: b measured how late it came
    assert.ok((await metric(b, "kvsync_cluster_delta_delay_seconds_count")) >= 1);
    const t2 = b.loads.begin("p0", 100);
    await waitFor("a sees both", () => inflight(a) === 2 || `a sees ${inflight(a)}`);
    t.prefillDone();
    await waitFor("b sees a's prefill done", () => b.loads.load("p0", "p0").inflightPrefillTokens === 100);
    assert.equal(inflight(b), 2);
    t.done();
    t2.done();
    await waitFor("both views empty", () => inflight(a) === 0 && inflight(b) === 0);
    // own snapshots stay own-only (what heartbeats carry)
    assert.deepEqual(a.loads.snapshot(), []);
  });

  it("garbage, foreign and other-version messages are counted and dropped", async () => {
    const raw: NatsConnection = await connect({ servers: nats.url });
    try {
      const t = b.loads.begin("p1", 10);
      await waitFor("a sees b's request on p1", () => inflight(a, "p1") === 1);
      raw.publish("kvsync.t.load", Buffer.from([0xff, 0x00, 0x13]));
      raw.publish(
        "kvsync.t.load",
        JSON.stringify({ v: 1, c: "other", t: "hb", id: "x", seq: 0, streams: [] }),
      );
      raw.publish("kvsync.t.load", JSON.stringify({ v: 9, c: "t", t: "hb", id: "x", seq: 0, streams: [] }));
      raw.publish(
        "kvsync.t.load",
        JSON.stringify({ v: 1, c: "t", t: "d", id: "x", seq: 0, s: "p1", r: "9" }),
      );
      // a well-formed message from an impostor under b's id with an old seq changes nothing
      raw.publish("kvsync.t.load", JSON.stringify({ v: 1, c: "t", t: "hb", id: "b", seq: 0, streams: [] }));
      await raw.flush();
      await waitFor("a counted the bad messages", async () => {
        const m = parseMetrics(await a.registry.metrics());
        const got = ["malformed", "foreign", "version", "invalid", "stale"].map(
          (r) => m.get(`kvsync_cluster_messages_dropped_total{reason="${r}"}`) ?? 0,
        );
        return got.every((x) => x >= 1) || `dropped ${got.join(",")}`;
      });
      assert.equal(inflight(a, "p1"), 1);
      t.done();
      await waitFor("a sees p1 idle", () => inflight(a, "p1") === 0);
    } finally {
      await raw.close();
    }
  });

  it("a killed replica's load is gone from the others' view within the peer timeout", async () => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", fileURLToPath(new URL("./replica-proc.ts", import.meta.url))],
      {
        env: { ...process.env, KVSYNC_TEST_NATS: nats.url, KVSYNC_TEST_TICKETS: "4" },
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout?.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
        child.once("exit", (c) => reject(new Error(`replica exited ${c}`)));
      });
      await waitFor("a sees the child's 4 requests", () => inflight(a) === 4 || `${inflight(a)}`, 20_000);
      child.kill("SIGKILL");
      const t0 = Date.now();
      await waitFor("the child's load expired", () => inflight(a) === 0 && inflight(b) === 0, 5_000);
      const ms = Date.now() - t0;
      // peer timeout 1 s + a heartbeat period + a sweep: well within 2 s
      assert.ok(ms < 2_000, `expired after ${ms} ms`);
      assert.ok((await metric(a, "kvsync_cluster_peer_expiries_total")) >= 1);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("nats-server down: own view only, then sharing resumes when it is back", async () => {
    const held = a.loads.begin("p2", 10);
    await waitFor("b sees p2", () => inflight(b, "p2") === 1);
    await nats.stop();
    await waitFor("both links down", () => !a.link.connected && !b.link.connected, 10_000);
    // routing goes on: own load still counts, the peer's expires
    const own = b.loads.begin("p2", 10);
    assert.ok(inflight(b, "p2") >= 1);
    await waitFor("a's load expired at b", () => inflight(b, "p2") === 1, 5_000);
    assert.ok((await metric(a, 'kvsync_cluster_outages_total{cause="disconnect"}')) >= 1);
    await nats.resume();
    await waitFor("both links up again", () => a.link.connected && b.link.connected, 30_000);
    // the first heartbeat after the reconnect carries the load held through the outage
    await waitFor("b sees a's held request again", () => inflight(b, "p2") === 2 || `${inflight(b, "p2")}`);
    await waitFor("a sees b's", () => inflight(a, "p2") === 2 || `${inflight(a, "p2")}`);
    held.done();
    own.done();
    await waitFor("p2 idle on both", () => inflight(a, "p2") === 0 && inflight(b, "p2") === 0);
    assert.equal(await metric(a, "kvsync_cluster_connected"), 1);
  });
});
