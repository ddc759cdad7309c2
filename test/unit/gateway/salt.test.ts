/**
 * Cache salts through the real gateway and real mock engines: a salted request is predicted to
 * reuse only blocks stored under its salt, an unsalted one none of them, and the engine's
 * reported cached_tokens agree with the gateway's prediction (x-kvsync-matched-tokens).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { waitFor } from "../../../src/util/wait.ts";
import { type Fleet, MODEL, post, startFleet } from "./fleet.ts";

const PROMPT = Array.from({ length: 200 }, (_, i) => `salted${i % 13} text${(i * 5) % 19}`).join(" ");

let f: Fleet;
before(async () => {
  f = await startFleet(2);
});
after(async () => {
  await f?.close();
});

async function complete(salt: string | null) {
  const body: Record<string, unknown> = { model: MODEL, prompt: PROMPT, max_tokens: 1 };
  if (salt !== null) body.cache_salt = salt;
  const r = await post(`${f.gw.url}/v1/completions`, body);
  assert.equal(r.status, 200, r.text);
  return {
    pod: r.headers.get("x-kvsync-pod"),
    predicted: Number(r.headers.get("x-kvsync-matched-tokens")),
    cached: (r.json.usage?.prompt_tokens_details?.cached_tokens as number | undefined) ?? 0,
  };
}

async function best(salt: string | null): Promise<number> {
  const body: Record<string, unknown> = { model: MODEL, prompt: PROMPT };
  if (salt !== null) body.cache_salt = salt;
  const r = await post(`${f.gw.adminUrl}/admin/route/explain`, body);
  assert.equal(r.status, 200, r.text);
  return Math.max(0, ...(r.json.candidates as Array<{ matchedTokens: number }>).map((c) => c.matchedTokens));
}

test("a salted request matches only its salt's blocks; cached_tokens == the prediction", async () => {
  const first = await complete("tenant-a");
  assert.equal(first.predicted, 0);
  assert.equal(first.cached, 0);
  await waitFor("the salted blocks indexed", async () => (await best("tenant-a")) > 0, 30_000);
  assert.equal(await best(null), 0, "unsalted: none of the salted blocks");
  assert.equal(await best("tenant-b"), 0, "another salt: none");

  const again = await complete("tenant-a");
  assert.equal(again.pod, first.pod, "routed to the pod holding its salt's prefix");
  assert.ok(again.predicted > 0);
  assert.equal(again.cached, again.predicted, "engine-reported cached_tokens == prediction");

  const plain = await complete(null);
  assert.equal(plain.predicted, 0);
  assert.equal(plain.cached, 0, "the engine does not reuse salted blocks for an unsalted request");
});

test("a bad cache_salt is a 400 with an OpenAI-style error", async () => {
  const r = await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: "x", cache_salt: 42 });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.param, "cache_salt");
});
