/**
 * Real corruption on a real link (issue 13's zmq-corruption experiment, on loopback): a publisher
 * with a replay buffer, the chaos suite's TCP relay process (test/chaos/faults/relay-main.ts) in
 * front of its PUB port flipping 1-3 bytes in half the chunks it forwards, and a subscriber
 * through it. Garbled ZMTP ends sessions (protocol errors, bad greetings, garbled frame lengths)
 * again and again while frames that still parse deliver garbage; after each window the stream
 * must be live on a SUB that delivers again (tail checks are off: nothing else brings live
 * batches), and the index must equal what the publisher holds.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Registry } from "prom-client";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import { blockRemoved } from "../../../src/protocol/build.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { hashFromInt } from "../../../src/protocol/hash.ts";
import type { KvEvent } from "../../../src/protocol/types.ts";
import { waitFor } from "../../../src/util/wait.ts";
import type { RelayMode, RelayStats } from "../../chaos/faults/relay-main.ts";
import { freePorts } from "./engines.ts";
import { FakePublisher } from "./fake-publisher.ts";
import { held, metric, podOf, stored } from "./rig.ts";

const RELAY = fileURLToPath(new URL("../../chaos/faults/relay-main.ts", import.meta.url));
/** blocks each batch's engine keeps: batch s stores block s + 1 and evicts block s + 1 - KEEP */
const KEEP = 40;

const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

class Relay {
  private constructor(
    readonly child: ChildProcess,
    readonly control: string,
  ) {}

  static async start(listenPort: number, target: string): Promise<Relay> {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-relay-test-"));
    const control = join(dir, "ctl.sock");
    const [, host, port] = /^tcp:\/\/([\d.]+):(\d+)$/.exec(target) ?? [];
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        RELAY,
        "--control",
        control,
        "--route",
        `events=127.0.0.1:${listenPort}=${host}:${port}`,
      ],
      { stdio: ["ignore", "ignore", "inherit"] },
    );
    const relay = new Relay(child, control);
    cleanups.push(() => {
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    });
    await waitFor(
      "relay control answers",
      async () => (await relay.send({ cmd: "stats" }).catch(() => null)) !== null,
      {
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    return relay;
  }

  send(
    cmd: { cmd: "set"; mode: RelayMode } | { cmd: "stats" },
  ): Promise<{ ok: boolean; stats?: RelayStats }> {
    return new Promise((resolve, reject) => {
      const s = connect(this.control);
      let buf = "";
      s.on("error", reject);
      s.on("data", (d) => {
        buf += d.toString();
        const nl = buf.indexOf("\n");
        if (nl === -1) return;
        s.destroy();
        resolve(JSON.parse(buf.slice(0, nl)));
      });
      s.write(`${JSON.stringify(cmd)}\n`);
    });
  }

  async stats(): Promise<RelayStats> {
    const r = await this.send({ cmd: "stats" });
    assert.ok(r.stats);
    return r.stats;
  }
}

function batch(seq: number): Uint8Array {
  const events: KvEvent[] = [stored(seq + 1)];
  if (seq + 1 - KEEP > 0) events.push(blockRemoved([hashFromInt(seq + 1 - KEEP)]));
  return encodeBatch({ ts: Date.now() / 1000, events, dpRank: 0 }, "2025-09");
}

/** what the engine holds after batch `last` */
function truth(last: number): string[] {
  const out: string[] = [];
  for (let h = Math.max(1, last + 2 - KEEP); h <= last + 1; h++) out.push(String(h));
  return out.sort();
}

describe("subscriber: bytes flipped on the event stream's link", () => {
  it("after each corruption window the stream is live on a delivering SUB and the index equals the engine", async (t) => {
    const pub = await new FakePublisher().start();
    cleanups.push(() => pub.close());
    const relayPort = await freePorts(1);
    const relay = await Relay.start(relayPort, pub.pubEndpoint);
    const index = createIndex();
    const registry = new Registry();
    const manager = new SubscriberManager({
      index,
      registry,
      // the defaults a gateway runs with, less the idle tail check: only the SUB may bring live batches
      subscriber: { tailCheckMs: 0 },
    });
    cleanups.push(() => manager.close());
    manager.setPods([podOf("p", { events: `tcp://127.0.0.1:${relayPort}`, replay: pub.replayEndpoint })]);
    await pub.waitSubscribed(1, 20_000);
    await waitFor("live", () => manager.status("p")?.state === "live", { timeoutMs: 20_000 });

    // the engine publishes a batch every 4 ms for the whole test
    let seq = 0;
    let publishing = true;
    const publisher = (async () => {
      while (publishing) {
        await pub.publish(seq, batch(seq));
        seq++;
        await new Promise((r) => setTimeout(r, 4));
      }
    })();
    cleanups.push(async () => {
      publishing = false;
      await publisher;
    });
    const rounds: string[] = [];
    for (let round = 0; round < 3; round++) {
      const before = await relay.stats();
      await relay.send({
        cmd: "set",
        mode: { kind: "corrupt", probability: 0.5, routes: null, directions: ["down"] },
      });
      await new Promise((r) => setTimeout(r, 3000));
      await relay.send({ cmd: "set", mode: { kind: "passthrough" } });
      const during = await relay.stats();
      const corrupted = during.corruptedChunks - before.corruptedChunks;
      assert.ok(corrupted > 0, "the relay corrupted the stream");
      const endedAt = Date.now();
      // live again, and batches published from now on arrive over the SUB
      await waitFor(
        `round ${round}: live and current`,
        () => {
          const st = manager.status("p");
          return st?.state === "live" && st.lastSeq !== null && st.lastSeq >= seq - 50;
        },
        { timeoutMs: 15_000, intervalMs: 20, describe: () => ({ status: manager.status("p"), seq }) },
      );
      rounds.push(`${Date.now() - endedAt} ms`);
      const mark = seq;
      await waitFor(
        `round ${round}: a later batch over the SUB`,
        () => (manager.status("p")?.lastSeq ?? -1) > mark + 20,
        {
          timeoutMs: 5000,
          intervalMs: 20,
          describe: () => ({ status: manager.status("p"), seq, mark }),
        },
      );
    }
    publishing = false;
    await publisher;
    const last = seq - 1;
    await waitFor(
      "index == engine",
      () => manager.status("p")?.lastSeq === last && manager.status("p")?.state === "live",
      {
        timeoutMs: 10_000,
        describe: () => ({ status: manager.status("p"), last }),
      },
    );
    assert.deepEqual(held(index, "p"), truth(last));
    assert.ok((await metric(registry, "kvsync_subscriber_decode_errors_total", { stream: "p" })) > 0);
    t.diagnostic(`live and current after each window's end: ${rounds.join(", ")}`);
  });
});

describe("subscriber: a garbled frame length", () => {
  it("ends the session at once (frames are bounded) instead of swallowing the stream into one frame", async () => {
    const pub = await new FakePublisher().start();
    cleanups.push(() => pub.close());
    // a relay in this process that can slip bytes into the stream towards the subscriber
    const [, host, port] = /^tcp:\/\/([\d.]+):(\d+)$/.exec(pub.pubEndpoint) ?? [];
    const clients: Socket[] = [];
    const relay = createServer((client) => {
      clients.push(client);
      const upstream = createConnection({ host, port: Number(port) });
      for (const [a, b] of [
        [client, upstream],
        [upstream, client],
      ]) {
        a.on("data", (d) => b.write(d));
        a.on("error", () => undefined);
        a.on("close", () => b.destroy());
      }
    });
    await new Promise<void>((res) => relay.listen(0, "127.0.0.1", res));
    cleanups.push(() => {
      for (const c of clients) c.destroy();
      relay.close();
    });
    const relayPort = (relay.address() as { port: number }).port;
    const index = createIndex();
    const registry = new Registry();
    // no heartbeats: nothing but the frame bound can end a session that waits for a huge frame
    const manager = new SubscriberManager({
      index,
      registry,
      subscriber: { heartbeatIntervalMs: 0, reconnectMs: 50, reconnectMaxMs: 300, tailCheckMs: 0 },
    });
    cleanups.push(() => manager.close());
    manager.setPods([podOf("p", { events: `tcp://127.0.0.1:${relayPort}`, replay: pub.replayEndpoint })]);
    await pub.waitSubscribed(1, 20_000);
    await waitFor("live", () => manager.status("p")?.state === "live", { timeoutMs: 20_000 });
    await pub.publish(0, batch(0));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    // a long frame (flags 0x02) announcing 1 GiB, where the next frame's header belongs
    const header = Buffer.alloc(9);
    header[0] = 0x02;
    header.writeBigUInt64BE(BigInt(2 ** 30), 1);
    assert.equal(clients.length, 1);
    clients[0].write(header);
    await waitFor(
      "the SUB replaced",
      async () =>
        (await metric(registry, "kvsync_subscriber_socket_replacements_total", { stream: "p" })) >= 1,
      { timeoutMs: 10_000 },
    );
    for (let s = 1; s < 5; s++) await pub.publish(s, batch(s));
    await waitFor(
      "live and current",
      () => manager.status("p")?.state === "live" && manager.status("p")?.lastSeq === 4,
      {
        timeoutMs: 10_000,
        describe: () => manager.status("p"),
      },
    );
    assert.deepEqual(held(index, "p"), truth(4));
  });
});
