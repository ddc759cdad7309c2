/**
 * Silent stalls (issue 13): a mock engine in a child process that is SIGSTOPped answers no ZMTP
 * heartbeat, so its stream must leave `live` within the heartbeat timeout, come back after
 * SIGCONT, and the index must equal the engine's cache afterwards.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import { hashToText } from "../../../src/protocol/hash.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { answers, startEngineProcess } from "../../helpers/engine-process.ts";
import { engineTruth, freePorts, type TestEngine } from "./engines.ts";
import { podOf } from "./rig.ts";

const MODEL = "Qwen/Qwen3-0.6B";

async function completion(url: string, prompt: number[]): Promise<void> {
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
  });
  assert.equal(r.status, 200);
  await r.arrayBuffer();
}

describe("subscriber: a stopped engine", () => {
  it("SIGSTOP takes the stream down within the heartbeat timeout; SIGCONT brings it back in sync", async () => {
    const http = await freePorts(1);
    const events = await freePorts(1);
    const replay = await freePorts(1);
    // a wildcard host binds (vLLM's rule; a concrete host would make the PUB connect)
    const child = await startEngineProcess(["--speed", "100"], {
      port: http,
      events: `tcp://*:${events}`,
      replay: `tcp://*:${replay}`,
    });
    after(() => child.close());
    const url = `http://127.0.0.1:${http}`;
    const engine = { url } as TestEngine;
    const index = createIndex();
    const manager = new SubscriberManager({
      index,
      subscriber: {
        replayTimeoutMs: 1000,
        heartbeatIntervalMs: 200,
        heartbeatTimeoutMs: 1000,
        reconnectMs: 50,
        reconnectMaxMs: 500,
      },
    });
    after(() => manager.close());
    const states: Array<{ state: string; at: number }> = [];
    manager.on("state", (s) => states.push({ state: s.state, at: Date.now() }));
    manager.setPods([
      podOf(
        "e",
        { events: `tcp://127.0.0.1:${events}`, replay: `tcp://127.0.0.1:${replay}` },
        { model: MODEL },
      ),
    ]);
    const synced = async (what: string) => {
      let truth: string[] = [];
      let mine: string[] = [];
      const until = Date.now() + 20_000;
      for (;;) {
        truth = (await engineTruth(engine)).map((b) => b.hash);
        mine = index
          .streamBlocks("e")
          .map((c) => hashToText(c.hash))
          .sort();
        if (manager.status("e")?.state === "live" && JSON.stringify(truth) === JSON.stringify(mine)) return;
        if (Date.now() > until)
          assert.fail(
            `${what}: index ${mine.length} blocks, engine ${truth.length}, ${JSON.stringify(manager.status("e"))}`,
          );
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await completion(
      url,
      Array.from({ length: 64 }, (_, i) => 100 + i),
    );
    await synced("before the stop");
    assert.ok(index.streamBlocks("e").length > 0);

    child.stop();
    const stoppedAt = Date.now();
    // the fault took effect: the engine answers nothing
    assert.equal(await answers(`${url}/health`, 300), false, "a stopped engine must not answer");
    await waitFor("the stream to leave live", () => manager.status("e")?.state !== "live", {
      timeoutMs: 10_000,
      describe: () => manager.status("e"),
    });
    const detectMs = Date.now() - stoppedAt;
    // heartbeat timeout 1 s, plus one PING period and the machine's noise
    assert.ok(detectMs < 4000, `stall noticed after ${detectMs} ms`);
    // it stays out of live while stopped (a TCP connect to a stopped process still succeeds)
    await new Promise((r) => setTimeout(r, 1500));
    assert.notEqual(manager.status("e")?.state, "live");

    child.resume();
    const resumedAt = Date.now();
    await waitFor("live again", () => manager.status("e")?.state === "live", {
      timeoutMs: 10_000,
      describe: () => manager.status("e"),
    });
    const recoverMs = Date.now() - resumedAt;
    assert.ok(recoverMs < 4000, `live again ${recoverMs} ms after SIGCONT`);
    await completion(
      url,
      Array.from({ length: 64 }, (_, i) => 900 + i),
    );
    await synced("after SIGCONT");
    assert.equal(manager.status("e")?.restarts, 0);
    process.stderr.write(`stall: detected in ${detectMs} ms, live ${recoverMs} ms after SIGCONT\n`);
  });
});
