/**
 * Issue 13's subscriber faults on real ZeroMQ sockets: bogus seqs that no replay reaches,
 * undecodable batches the engine's buffer still holds, corruption windows.
 */
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { Registry } from "prom-client";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import { encodePubMessage } from "../../../src/protocol/frames.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { freePorts } from "./engines.ts";
import { FakePublisher } from "./fake-publisher.ts";
import { held, metric, podOf, type Rig, rig, storeBatch } from "./rig.ts";

const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs.reverse()) await r.close();
});

async function until(
  what: string,
  cond: () => Promise<boolean>,
  timeoutMs = 10_000,
  detail: () => unknown = () => "",
): Promise<void> {
  await waitFor(what, cond, { timeoutMs, intervalMs: 20, describe: detail });
}

async function liveRig(...args: Parameters<typeof rig>): Promise<Rig> {
  const r = await rig(...args);
  rigs.push(r);
  r.manager.setPods([podOf("p", { events: r.pub.pubEndpoint, replay: r.pub.replayEndpoint })]);
  await r.pub.waitSubscribed();
  await waitFor("live", () => r.manager.status("p")?.state === "live");
  return r;
}

describe("subscriber: a live seq beyond the engine's newest", () => {
  it("asks a bounded number of replays, discards the seq as bogus and goes on", async () => {
    const r = await liveRig({}, { suspectCleanMs: 300 });
    const { pub, manager, index, registry } = r;
    for (let s = 0; s < 3; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 2", () => manager.status("p")?.lastSeq === 2);
    const before = pub.requests.length;
    // a corrupted frame: a seq the engine never published, live only
    await pub.sendRaw(encodePubMessage(pub.topic, 1_000_000, storeBatch(99)));
    await until(
      "kvsync_subscriber_bogus_seqs_total 1",
      async () => (await metric(registry, "kvsync_subscriber_bogus_seqs_total", { stream: "p" })) === 1,
      10_000,
      () => ({ replays: pub.requests.length - before }),
    );
    // a seq the engine never sent is a sign of garbling: once clean the stream is audited, and
    // as nothing wrong was applied it is trusted again without a drop
    await until(
      "the audit",
      async () =>
        (await metric(registry, "kvsync_subscriber_verified_total", { stream: "p" })) === 1 &&
        manager.status("p")?.state === "live",
    );
    assert.equal(await metric(registry, "kvsync_subscriber_rebuilds_total", { stream: "p" }), 0);
    // a loop would keep asking: after the bound, nothing more for a while
    const settled = pub.requests.length;
    await new Promise((res) => setTimeout(res, 1000));
    assert.equal(pub.requests.length, settled, `replays kept coming: ${pub.requests.length - before}`);
    assert.ok(settled - before <= 5, `${settled - before} replays for one bogus seq and the audit`);
    assert.equal(await metric(registry, "kvsync_subscriber_bogus_seqs_total", { stream: "p" }), 1);
    await pub.publish(3, storeBatch(4));
    await waitFor("seq 3", () => manager.status("p")?.lastSeq === 3 && manager.status("p")?.state === "live");
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4"]);
    assert.equal(manager.status("p")?.resyncs, 0);
    assert.equal(manager.status("p")?.restarts, 0);
  });
});

describe("subscriber: undecodable batches", () => {
  it("a live batch garbled on the way is applied from the engine's replay buffer, in order", async () => {
    const { pub, manager, index, registry } = await liveRig();
    await pub.publish(0, storeBatch(1));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    // the engine's buffer holds the good batch; the wire delivered garbage for it
    await pub.publish(1, storeBatch(2), false);
    await pub.sendRaw(encodePubMessage(pub.topic, 1, Buffer.from([0xc1, 0xc1, 0xc1])));
    await pub.publish(2, storeBatch(3));
    await waitFor(
      "seq 2, live",
      () => manager.status("p")?.lastSeq === 2 && manager.status("p")?.state !== "replaying",
      { timeoutMs: 10_000, describe: () => manager.status("p") },
    );
    assert.deepEqual(held(index, "p"), ["1", "2", "3"]);
    const st = manager.status("p");
    assert.equal(st?.decodeErrors, 1);
    assert.equal(st?.resyncs, 0);
    assert.deepEqual(pub.requests.slice(1), [1]);
    assert.equal(await metric(registry, "kvsync_subscriber_decode_repairs_total", { stream: "p" }), 1);
  });
});

/** A ZMTP 3.0 greeting with a mechanism nobody speaks: libzmq ends the session for good. */
function badGreeting(): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 0;
  g.write("BOGUS", 12, "ascii");
  return g;
}

/**
 * A ZMTP 3.1 greeting whose first byte the wire garbled (0xff -> 0xcd, as the corruption relay
 * did): libzmq takes the peer for an unversioned ZMTP 1.0 one announcing a 205-byte identity and
 * waits for it; that path has no handshake timeout, no handshake event and no heartbeats.
 */
function garbledGreeting(): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xcd;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 1;
  g.write("NULL", 12, "ascii");
  return g;
}

/**
 * The events port first answers every connection with `greeting` (the fault), until the
 * subscriber replaced its socket `replacements` times; then it turns into a real publisher and
 * the stream must come back live and apply a batch.
 */
async function throughBadServer(
  greeting: Buffer,
  subscriber: ConstructorParameters<typeof SubscriberManager>[0]["subscriber"],
  replacements: number,
  timeoutMs: number,
): Promise<void> {
  const [events, replay] = [await freePorts(1), await freePorts(1)];
  const seen: Socket[] = [];
  const server: Server = createServer((sock) => {
    seen.push(sock);
    sock.on("error", () => undefined);
    sock.write(greeting);
  });
  await new Promise<void>((res) => server.listen(events, "127.0.0.1", res));
  const index = createIndex();
  const registry = new Registry();
  const manager = new SubscriberManager({ index, registry, subscriber });
  let pub: FakePublisher | null = null;
  rigs.push({
    close: async () => {
      await manager.close();
      await pub?.close();
      server.close();
    },
  } as Rig);
  manager.setPods([podOf("p", { events: `tcp://127.0.0.1:${events}`, replay: `tcp://127.0.0.1:${replay}` })]);
  // the fault took effect: the subscriber reached the bad server and got no stream
  await waitFor("a connection to the bad server", () => seen.length >= 1);
  await until(
    `${replacements} replaced sockets`,
    async () =>
      (await metric(registry, "kvsync_subscriber_socket_replacements_total", { stream: "p" })) >=
      replacements,
    timeoutMs,
  );
  assert.notEqual(manager.status("p")?.state, "live");
  // the port turns into a real engine
  for (const sock of seen) sock.destroy();
  await new Promise<void>((res) => server.close(() => res()));
  const bound = Date.now() + 10_000;
  for (;;) {
    try {
      pub = await new FakePublisher({
        pubEndpoint: `tcp://127.0.0.1:${events}`,
        replayEndpoint: `tcp://127.0.0.1:${replay}`,
      }).start();
      break;
    } catch (err) {
      if (Date.now() > bound) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await waitFor("live on the real publisher", () => manager.status("p")?.state === "live", {
    timeoutMs: 10_000,
    describe: () => manager.status("p"),
  });
  await pub.publish(0, storeBatch(5));
  await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
  assert.deepEqual(held(index, "p"), ["5"]);
}

describe("subscriber: a ZMTP protocol error", () => {
  it("replaces the SUB whose session libzmq ended, and the stream comes back live", async () => {
    await throughBadServer(
      badGreeting(),
      { replayTimeoutMs: 2000, reconnectMs: 50, reconnectMaxMs: 300 },
      1,
      10_000,
    );
  });

  it("replaces a SUB whose handshake never ends (a garbled greeting) long before the watchdog", async () => {
    // handshake limit: 500 ms + 1 s; the watchdog (60 s) cannot be what replaces it
    await throughBadServer(
      garbledGreeting(),
      {
        replayTimeoutMs: 2000,
        reconnectMs: 50,
        reconnectMaxMs: 300,
        heartbeatIntervalMs: 200,
        heartbeatTimeoutMs: 500,
        watchdogMs: 60_000,
      },
      2,
      10_000,
    );
  });
});

describe("subscriber: a corruption window", () => {
  it("a garbling stream is suspect (no routing claim) and rebuilt once clean, wiping wrong batches", async () => {
    const r = await liveRig({}, { suspectCleanMs: 400 });
    const { pub, manager, index, registry } = r;
    for (let s = 0; s < 3; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 2", () => manager.status("p")?.lastSeq === 2);
    const states: string[] = [];
    manager.on("state", (st) => states.push(st.state));
    // the window: a frame without valid framing, and a batch whose flipped bytes still decode
    // (the engine published block 4 at seq 3; the wire delivered block 666)
    await pub.sendRaw([Buffer.from(pub.topic), Buffer.from([0, 0, 0])]);
    await pub.publish(3, storeBatch(4), false);
    await pub.sendRaw(encodePubMessage(pub.topic, 3, storeBatch(666)));
    await waitFor("seq 3 applied", () => manager.status("p")?.lastSeq === 3);
    assert.ok(held(index, "p").includes("666"), "the wrong batch went in undetected");
    assert.equal(manager.status("p")?.state, "suspect", "a suspect stream makes no routing claim");
    // clean for the window: rebuilt from the engine's buffer, garbage gone, live again
    await waitFor(
      "rebuilt and live",
      () => manager.status("p")?.state === "live" && !held(index, "p").includes("666"),
      { timeoutMs: 10_000, describe: () => ({ status: manager.status("p"), held: held(index, "p") }) },
    );
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4"]);
    assert.equal(await metric(registry, "kvsync_subscriber_rebuilds_total", { stream: "p" }), 1);
    assert.equal(await metric(registry, "kvsync_subscriber_suspects_total", { stream: "p" }), 1);
    assert.ok(states.includes("suspect"), states.join(","));
    await pub.publish(4, storeBatch(5));
    await waitFor("seq 4", () => manager.status("p")?.lastSeq === 4);
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4", "5"]);
  });
});

describe("subscriber: a suspect stream's audit", () => {
  it("nothing wrong applied: trusted again with no drop, keeping what the buffer no longer holds", async () => {
    const r = await liveRig({}, { suspectCleanMs: 300 });
    const { pub, manager, index, registry } = r;
    for (let s = 0; s < 12; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 11", () => manager.status("p")?.lastSeq === 11);
    // the engine's buffer moved on: seqs 0-5 (blocks 1-6) are only in the index now
    for (let s = 0; s < 6; s++) pub.buffer.delete(s);
    await pub.sendRaw([Buffer.from(pub.topic), Buffer.from([0, 0, 0])]); // bad framing: a sign
    await waitFor("suspect", () => manager.status("p")?.state === "suspect");
    await pub.publish(12, storeBatch(13));
    await pub.publish(13, storeBatch(14));
    await until(
      "verified",
      async () =>
        (await metric(registry, "kvsync_subscriber_verified_total", { stream: "p" })) === 1 &&
        manager.status("p")?.state === "live",
      10_000,
      () => manager.status("p"),
    );
    assert.equal(await metric(registry, "kvsync_subscriber_rebuilds_total", { stream: "p" }), 0);
    assert.deepEqual(
      held(index, "p"),
      Array.from({ length: 14 }, (_, i) => String(i + 1)).sort(),
      "no block was dropped",
    );
    const st = manager.status("p");
    assert.equal(st?.resyncs, 0);
    assert.equal(st?.restarts, 0);
    assert.ok(
      pub.requests.some((from) => from <= 12),
      `the audit asked the engine from the suspect window: ${pub.requests}`,
    );
  });

  it("a byte flipped in the middle of a batch that still decodes is caught and rebuilt", async () => {
    const r = await liveRig({}, { suspectCleanMs: 300 });
    const { pub, manager, index, registry } = r;
    for (let s = 0; s < 3; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 2", () => manager.status("p")?.lastSeq === 2);
    await pub.sendRaw([Buffer.from(pub.topic), Buffer.from([0, 0, 0])]);
    // the engine published block 4 at seq 3; the wire flipped one token byte mid-payload
    const good = storeBatch(4);
    const bad = Uint8Array.from(good);
    const at = Buffer.from(bad).indexOf(Buffer.from([0xcd, 0x0f, 0xa5])) + 2;
    assert.ok(at >= 32 && at < bad.length - 32, "the flip is outside the head/tail fingerprint");
    bad[at] ^= 1;
    await pub.publish(3, good, false);
    await pub.sendRaw(encodePubMessage(pub.topic, 3, bad));
    await waitFor("seq 3 applied", () => manager.status("p")?.lastSeq === 3);
    await until(
      "the rebuild",
      async () =>
        (await metric(registry, "kvsync_subscriber_rebuilds_total", { stream: "p" })) === 1 &&
        manager.status("p")?.state === "live",
      10_000,
      () => manager.status("p"),
    );
    assert.equal(await metric(registry, "kvsync_subscriber_verified_total", { stream: "p" }), 0);
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4"]);
  });
});
