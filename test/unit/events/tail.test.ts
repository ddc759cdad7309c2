import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { blockRemoved } from "../../../src/protocol/build.ts";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { encodeBatch } from "../../../src/protocol/encode.ts";
import { hashFromInt } from "../../../src/protocol/hash.ts";
import { batchToJson } from "../../../src/protocol/index.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { FakePublisher } from "./fake-publisher.ts";

const ROOT = join(import.meta.dirname, "../../..");
const FIXTURE = join(ROOT, "test/fixtures/vllm-kv-events/vllm-48fc2e279-ints.json");

interface Tail {
  child: ChildProcess;
  out: string[];
  err: string[];
  exited: Promise<number | null>;
}

const children: Tail[] = [];
const pubs: FakePublisher[] = [];
after(async () => {
  for (const t of children) {
    if (t.child.exitCode === null) t.child.kill("SIGKILL");
    await t.exited;
  }
  for (const p of pubs) await p.close();
});

function startTail(args: string[]): Tail {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", "events", "tail", ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, KVSYNC_LOG_LEVEL: "silent" },
  });
  const t: Tail = {
    child,
    out: [],
    err: [],
    exited: new Promise((resolve) => child.on("exit", (code) => resolve(code))),
  };
  const lines = (stream: NodeJS.ReadableStream, into: string[]) => {
    let buf = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      buf += chunk;
      let i = buf.indexOf("\n");
      while (i !== -1) {
        into.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
      }
    });
  };
  lines(child.stdout as NodeJS.ReadableStream, t.out);
  lines(child.stderr as NodeJS.ReadableStream, t.err);
  children.push(t);
  return t;
}

const hex = (msg: string[]) => msg.map((f) => Buffer.from(f, "hex"));

describe("kvsync events tail (child process, real publisher)", () => {
  it("prints every batch in order: --from-seq replay, a gap filled by replay, a malformed frame on stderr", async () => {
    const d = JSON.parse(readFileSync(FIXTURE, "utf8"));
    const pub = await new FakePublisher({ topic: d.topic, topicLayout: true }).start();
    pubs.push(pub);
    const payloads: Uint8Array[] = d.live.map((m: string[]) => hex(m)[2]);
    // the engine already published seqs 0 and 1 (buffered)
    await pub.publish(0, payloads[0], false);
    await pub.publish(1, payloads[1], false);
    pub.canned.set(3, d.replay_response.map(hex));
    const t = startTail([
      pub.pubEndpoint,
      "--replay",
      pub.replayEndpoint as string,
      "--from-seq",
      "0",
      "--topic",
      d.topic,
    ]);
    await pub.waitSubscribed(1, 20_000);
    await waitFor("the buffered batches", () => t.out.length >= 2, {
      timeoutMs: 20_000,
      describe: () => ({ out: t.out, err: t.err }),
    });
    // live: 2, then 3 and 4 are lost, 5 reveals the gap; 6 arrives live too
    await pub.sendRaw(hex(d.live[2]));
    await pub.publish(3, payloads[3], false);
    await pub.publish(4, payloads[4], false);
    await pub.sendRaw(hex(d.live[5]));
    await pub.sendRaw(hex(d.live[6]));
    await waitFor("seqs 0..6", () => t.out.length >= 7, {
      timeoutMs: 10_000,
      describe: () => ({ out: t.out, err: t.err }),
    });
    // a malformed payload at seq 7, then a good batch at 8
    await pub.publish(7, Buffer.from([0x93, 0xc1]));
    const b8 = encodeBatch({ ts: 8, events: [{ type: "AllBlocksCleared" }], dpRank: 0 }, "2026-07");
    await pub.publish(8, b8);
    await waitFor("seq 8", () => t.out.length >= 8, {
      timeoutMs: 10_000,
      describe: () => ({ out: t.out, err: t.err }),
    });
    const printed = t.out.map((l) => JSON.parse(l));
    const want = [
      ...payloads.map((p, seq) => batchToJson(seq, decodeBatch(p).batch)),
      batchToJson(8, decodeBatch(b8).batch),
    ];
    assert.deepEqual(printed, JSON.parse(JSON.stringify(want)));
    // spot-check the JSON view against the capture's documented meaning
    assert.deepEqual(printed[0].events[0].blockHashes, d.expected[0].events[0].block_hashes);
    assert.equal(printed[2].events[0].loraName, "sql-adapter");
    // seq 7 is malformed in the engine's buffer too: asked again 3 times, then given up (resync)
    assert.deepEqual(pub.requests, [0, 3, 7, 7, 7], "--from-seq from 0, the gap from 3, seq 7 again");
    const errs = t.err.map((l) => JSON.parse(l));
    assert.ok(
      errs.some((e) => e.seq === 7 && typeof e.error === "string" && e.error.length > 0),
      `malformed seq 7 reported: ${t.err.join("\n")}`,
    );
    assert.ok(
      errs.some((e) => e.resync === true),
      t.err.join("\n"),
    );
    assert.ok(
      errs.some((e) => e.gap?.from === 3 && e.gap?.to === 4 && e.recoverable === true),
      t.err.join("\n"),
    );
    t.child.kill("SIGTERM");
    assert.equal(await t.exited, 0);
  });

  it("without --from-seq starts with the live stream; without --replay a gap is reported and it goes on", async () => {
    const pub = await new FakePublisher({ noReplay: true }).start();
    pubs.push(pub);
    const batch = (h: number) =>
      encodeBatch(
        {
          ts: h,
          events: [blockRemoved([hashFromInt(h)])],
          dpRank: null,
        },
        "2025-04",
      );
    const t = startTail([pub.pubEndpoint]);
    await pub.waitSubscribed(1, 20_000);
    await pub.publish(10, batch(10));
    await pub.publish(11, batch(11));
    await pub.publish(13, batch(13));
    await waitFor("three batches", () => t.out.length >= 3, {
      timeoutMs: 10_000,
      describe: () => ({ out: t.out, err: t.err }),
    });
    assert.deepEqual(
      t.out.map((l) => JSON.parse(l).seq),
      [10, 11, 13],
    );
    assert.deepEqual(JSON.parse(t.out[0]).events, [
      { type: "BlockRemoved", blockHashes: ["10"], medium: null, groupIdx: null, locality: null },
    ]);
    const errs = t.err.map((l) => JSON.parse(l));
    assert.ok(
      errs.some((e) => e.gap?.from === 12 && e.gap?.to === 12 && e.recoverable === false),
      t.err.join("\n"),
    );
    t.child.kill("SIGTERM");
    assert.equal(await t.exited, 0);
  });
  it("rejects what is not a ZeroMQ endpoint, and --from-seq without --replay, with exit code 1", async () => {
    const bad = startTail(["not-an-endpoint"]);
    assert.equal(await bad.exited, 1);
    assert.match(bad.err.join("\n"), /not a ZeroMQ endpoint/);
    const noReplay = startTail(["tcp://127.0.0.1:1", "--from-seq", "3"]);
    assert.equal(await noReplay.exited, 1);
    assert.match(noReplay.err.join("\n"), /--from-seq needs --replay/);
  });
});
