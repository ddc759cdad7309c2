/** A real mock engine shut down while it streams: the client's stream ends with an error, not a hang. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import OpenAI from "openai";
import { type Fleet, MODEL, metricValue, startFleet } from "./fleet.ts";

let f: Fleet | null = null;
after(async () => {
  await f?.close();
});

test("an engine that goes away mid-stream ends the client's stream with an error event", async () => {
  f = await startFleet(1, {}, { speed: 1, stepMs: 10 });
  const fleet = f;
  const client = new OpenAI({ baseURL: `${fleet.gw.url}/v1`, apiKey: "t", maxRetries: 0, timeout: 15_000 });
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "tell me a long story" }],
    max_tokens: 2000,
    stream: true,
  });
  let chunks = 0;
  const t0 = Date.now();
  await assert.rejects(
    (async () => {
      for await (const _ of stream) {
        chunks++;
        if (chunks === 3) void fleet.engines[0]!.close();
      }
    })(),
    (e: unknown) => e instanceof OpenAI.APIError,
  );
  assert.ok(chunks >= 3 && chunks < 2000, `got ${chunks} chunks`);
  assert.ok(Date.now() - t0 < 10_000, "ended promptly");
  assert.equal(await metricValue(fleet.gw, "kvsync_gateway_stream_errors_total", { pod: "pod-0" }), 1);
});
