/**
 * A stalled stream loses its routing claim: a mock engine in a child process is SIGSTOPped, its
 * ZMTP heartbeats go unanswered, its stream leaves `live` and the gateway's candidates mark it
 * not live (no cache advantage) until SIGCONT brings it back.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { answers, startEngineProcess } from "../../helpers/engine-process.ts";
import { freePorts } from "../events/engines.ts";
import { type Json, MODEL, post } from "./fleet.ts";

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe("gateway: a stopped engine", () => {
  test("its stream stops counting for routing within the heartbeat timeout, and counts again after", async () => {
    const [http, events, replay] = [await freePorts(1), await freePorts(1), await freePorts(1)];
    const child = await startEngineProcess(["--speed", "100"], {
      port: http,
      events: `tcp://*:${events}`,
      replay: `tcp://*:${replay}`,
    });
    cleanups.push(() => child.close());
    const url = `http://127.0.0.1:${http}`;
    const gw = await startGateway({
      pods: [
        {
          name: "pod-s",
          model: MODEL,
          loras: [],
          http: url,
          events: `tcp://127.0.0.1:${events}`,
          replay: `tcp://127.0.0.1:${replay}`,
          dataParallelSize: 1,
          ready: true,
        },
      ],
      tokenizerPool: false,
      log: silentLogger(),
      subscriber: { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000, reconnectMaxMs: 500 },
    });
    cleanups.push(() => gw.close());
    const tokens = Array.from({ length: 64 }, (_, i) => 300 + i);
    const r = await post(`${url}/v1/completions`, { model: MODEL, prompt: tokens, max_tokens: 1 });
    assert.equal(r.status, 200);
    const cand = async () =>
      (await post(`${gw.adminUrl}/admin/route/explain`, { model: MODEL, token_ids: tokens })).json
        .candidates[0] as Json;
    await waitFor("the prefix indexed and live", async () => {
      const c = await cand();
      return c.live === true && c.matchedTokens > 0;
    });
    child.stop();
    const t0 = Date.now();
    assert.equal(await answers(`${url}/health`, 500), false, "the stop took effect");
    await waitFor("not live", async () => (await cand()).live === false, 10_000);
    const detectMs = Date.now() - t0;
    assert.ok(detectMs < 4000, `claim kept ${detectMs} ms into the stop`);
    const c = await cand();
    assert.equal(c.matchedTokens, 0, "no cache advantage while stalled");
    child.resume();
    await waitFor("live again with its prefix", async () => {
      const c2 = await cand();
      return c2.live === true && c2.matchedTokens > 0;
    });
  });
});
