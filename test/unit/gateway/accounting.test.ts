/**
 * No request is lost silently: random mixes of good and bad requests against pods that answer,
 * fail, stall, die mid-stream or refuse connections; every request gets an answer (a status, or
 * a stream that ends) and is counted exactly once, and the gateway's load returns to zero.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import fc from "fast-check";
import { type RunningGateway, startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { deadPort, fakePodInfo, MODEL, metricValue, startFakePod } from "./fleet.ts";

type PodMode = "ok" | "sse" | "die" | "error500" | "stall";
const MODES: PodMode[] = ["ok", "sse", "die", "error500", "stall"];

const okJson = JSON.stringify({
  id: "x",
  object: "text_completion",
  created: 1,
  model: MODEL,
  choices: [{ index: 0, text: "ok", finish_reason: "length", logprobs: null }],
  usage: {
    prompt_tokens: 2,
    completion_tokens: 1,
    total_tokens: 3,
    prompt_tokens_details: { cached_tokens: 0 },
  },
});

let gw: RunningGateway;
const stops: Array<() => Promise<void>> = [];
before(async () => {
  // one scripted pod per behaviour, chosen by the request's prompt ("mode:<m>")
  const pod = await startFakePod((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString()) as { prompt?: string };
      const mode = String(body.prompt ?? "").replace("mode:", "") as PodMode;
      switch (mode) {
        case "ok":
          res.writeHead(200, { "content-type": "application/json" }).end(okJson);
          break;
        case "sse":
          res.writeHead(200, { "content-type": "text/event-stream" });
          res.write('data: {"choices":[{"index":0,"text":"a"}]}\n\n');
          res.end("data: [DONE]\n\n");
          break;
        case "die":
          res.writeHead(200, { "content-type": "text/event-stream" });
          res.write('data: {"choices":[{"index":0,"text":"a"}]}\n\n', () =>
            setImmediate(() => res.socket?.destroy()),
          );
          break;
        case "error500":
          res.writeHead(500, { "content-type": "application/json" }).end('{"error":{"message":"boom"}}');
          break;
        case "stall":
          break; // never answers: the headers timeout fires
      }
    });
  });
  stops.push(() => pod.close());
  gw = await startGateway({
    pods: [fakePodInfo("a-dead", `http://127.0.0.1:${await deadPort()}`), fakePodInfo("b-pod", pod.url)],
    policy: "round-robin",
    subscribe: false,
    tokenizers: false,
    adminPort: null,
    maxBodyBytes: 2048,
    headersTimeoutMs: 300,
    // the accounting of the proxy path alone: stalled streams (first-byte timeouts) would take the
    // one live pod out of rotation for a probe period (health.test.ts covers that path)
    health: false,
    log: silentLogger(),
  });
});
after(async () => {
  await gw?.close();
  for (const s of stops) await s();
});

type Kind =
  | { t: "mode"; mode: PodMode; stream: boolean }
  | { t: "badjson" }
  | { t: "unknown" }
  | { t: "huge" };

const kindArb: fc.Arbitrary<Kind> = fc.oneof(
  fc.record({ t: fc.constant("mode" as const), mode: fc.constantFrom(...MODES), stream: fc.boolean() }),
  fc.constant({ t: "badjson" as const }),
  fc.constant({ t: "unknown" as const }),
  fc.constant({ t: "huge" as const }),
);

async function send(k: Kind): Promise<number> {
  let body: string;
  if (k.t === "badjson") body = "{oops";
  else if (k.t === "unknown") body = JSON.stringify({ model: "nope", prompt: "x" });
  else if (k.t === "huge") body = JSON.stringify({ model: MODEL, prompt: "x".repeat(5000) });
  else body = JSON.stringify({ model: MODEL, prompt: `mode:${k.mode}`, stream: k.stream });
  const r = await fetch(`${gw.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  // drain whatever comes (a stream that ends with an error event still ends)
  await r.text();
  return r.status;
}

test("property: every request is answered and counted exactly once", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(kindArb, { minLength: 1, maxLength: 16 }), async (kinds) => {
      const before = await metricValue(gw, "kvsync_gateway_requests_total");
      const statuses = await Promise.all(kinds.map(send));
      for (const [i, k] of kinds.entries()) {
        const s = statuses[i]!;
        if (k.t === "badjson") assert.equal(s, 400);
        else if (k.t === "unknown") assert.equal(s, 404);
        else if (k.t === "huge") assert.equal(s, 413);
        else if (k.mode === "ok" || k.mode === "sse" || k.mode === "die") assert.equal(s, 200);
        else if (k.mode === "error500") assert.equal(s, 500);
        else assert.equal(s, 504);
      }
      await waitFor(
        "every request counted",
        async () => (await metricValue(gw, "kvsync_gateway_requests_total")) - before === kinds.length,
      );
      await waitFor("no load left", () => gw.core.loads.totalInflight() === 0);
      assert.equal(await metricValue(gw, "kvsync_gateway_inflight_requests"), 0);
    }),
    { numRuns: 12 },
  );
});
