/**
 * A mock engine restarted in the gateway's own process on the same loopback addresses
 * (`tcp://127.0.0.1:<port>`). Reported: the stream stayed `down` for over 10 s, while an engine
 * binding `tcp://*:<port>` came back in about a second. The subscriber is not at fault: by
 * vLLM's rule (engine/publisher.ts `pubShouldBind`) a publisher given `tcp://127.0.0.1:<port>`
 * CONNECTS instead of binding, so nothing listens on the port the gateway dials. An engine that
 * binds the loopback address explicitly comes back as fast as a wildcard bind.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { pubShouldBind } from "../../../src/engine/publisher.ts";
import { type RunningEngine, startEngine } from "../../../src/engine/start.ts";
import { SubscriberManager } from "../../../src/events/manager.ts";
import { createIndex } from "../../../src/index/index.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { freePorts } from "./engines.ts";

const MODEL = "Qwen/Qwen3-0.6B";

describe("an engine restarted in the same process on 127.0.0.1", () => {
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
  });

  it("the endpoint as written connects (vLLM's rule): the reported outage is not the subscriber's", () => {
    assert.equal(pubShouldBind("tcp://127.0.0.1:5557"), false);
    assert.equal(pubShouldBind("tcp://*:5557"), true);
  });

  it("an engine that binds 127.0.0.1 explicitly is live again within seconds of each restart", async () => {
    const http = await freePorts(1);
    const zmqBase = await freePorts(2);
    const events = `tcp://127.0.0.1:${zmqBase}`;
    const replay = `tcp://127.0.0.1:${zmqBase + 1}`;
    const start = async (): Promise<RunningEngine> => {
      // ZeroMQ releases a closed socket's port in its I/O thread, a little after close() returns
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          return await startEngine({
            host: "127.0.0.1",
            port: http,
            eventsEndpoint: events,
            replayEndpoint: replay,
            eventsBind: true,
            model: MODEL,
            numGpuBlocks: 64,
            log: silentLogger(),
          });
        } catch (err) {
          if (!/in use/i.test(String(err)) || Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    };
    let engine = await start();
    closers.push(async () => engine.close());
    const manager = new SubscriberManager({ index: createIndex() });
    closers.push(() => manager.close());
    manager.setPods([
      {
        name: "p",
        model: MODEL,
        loras: [],
        http: `http://127.0.0.1:${http}`,
        events,
        replay,
        dataParallelSize: 1,
        ready: true,
      },
    ]);
    const live = (what: string) =>
      waitFor(what, () => manager.status("p")?.state === "live", {
        timeoutMs: 10_000,
        describe: () => manager.status("p"),
      });
    await live("live");
    for (let k = 0; k < 3; k++) {
      await engine.close();
      await waitFor(`down after close ${k}`, () => manager.status("p")?.state !== "live", {
        timeoutMs: 10_000,
      });
      engine = await start();
      // the reported outage lasted over 10 s; the subscriber's reconnect backoff is capped at 1 s
      const ms = await live(`live again after restart ${k}`);
      assert.ok(ms < 10_000, `restart ${k}: live after ${ms} ms`);
    }
  });
});
