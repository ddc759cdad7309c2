/**
 * The real gateway in front of real (in-process) mock engines: the official openai client,
 * prefix affinity confirmed by the engine's cached_tokens, hot-prefix spreading, explain,
 * /v1/models and metrics.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { waitFor } from "../../../src/util/wait.ts";
import { type Fleet, MODEL, metricValue, post, startFleet } from "./fleet.ts";

const long = (tag: string, words = 120) =>
  Array.from({ length: words }, (_, i) => `${tag}${i % 17} word${(i * 7) % 23}`).join(" ");

interface Explain {
  choice: { pod: string } | null;
  promptTokens: number;
  candidates: Array<{ pod: string; matchedTokens: number; live: boolean; score: number; chosen: boolean }>;
}

async function explain(f: Fleet, body: unknown): Promise<Explain> {
  const r = await post(`${f.gw.adminUrl}/admin/route/explain`, body);
  assert.equal(r.status, 200, r.text);
  return r.json as Explain;
}

describe("gateway with mock engines", () => {
  let f: Fleet;
  let client: OpenAI;
  before(async () => {
    f = await startFleet(3);
    client = new OpenAI({ baseURL: `${f.gw.url}/v1`, apiKey: "test", maxRetries: 0, timeout: 20_000 });
  });
  after(async () => {
    await f?.close();
  });

  test("openai client: chat and completion, non-streaming, with routing headers", async () => {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: "Say hi" }], max_tokens: 4 })
      .withResponse();
    assert.equal(data.object, "chat.completion");
    assert.equal(data.choices.length, 1);
    assert.ok(typeof data.choices[0]!.message.content === "string");
    assert.ok(data.usage && data.usage.prompt_tokens > 0);
    assert.match(response.headers.get("x-kvsync-pod") ?? "", /^pod-[0-2]$/);
    assert.equal(response.headers.get("x-kvsync-matched-tokens"), "0");

    const c = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 3 });
    assert.equal(c.object, "text_completion");
    assert.equal(c.usage?.completion_tokens, 3);
  });

  test("openai client: streaming passes chunks through and hides the usage chunk it added", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Stream please" }],
      max_tokens: 6,
      stream: true,
    });
    let text = "";
    let chunks = 0;
    let usageChunks = 0;
    for await (const ch of stream) {
      chunks++;
      if (ch.usage) usageChunks++;
      text += ch.choices[0]?.delta?.content ?? "";
    }
    assert.ok(chunks >= 6, `got ${chunks} chunks`);
    assert.ok(text.length > 0);
    assert.equal(
      usageChunks,
      0,
      "the client did not ask for usage: the gateway's usage chunk must be stripped",
    );

    // when the client asks, it gets the usage chunk (and the gateway reads it too)
    const before = await metricValue(f.gw, "kvsync_gateway_prediction_error_tokens_count");
    const s2 = await client.completions.create({
      model: MODEL,
      prompt: "count with me",
      max_tokens: 5,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.Completions.CompletionUsage | null | undefined = null;
    for await (const ch of s2) if (ch.usage) usage = ch.usage;
    assert.equal(usage?.completion_tokens, 5);
    assert.equal((await metricValue(f.gw, "kvsync_gateway_prediction_error_tokens_count")) - before, 1);
  });

  test("a request whose prefix one pod holds goes to that pod, and the engine reports it cached", async () => {
    const prefix = long("affinity", 150);
    // put the prefix into pod-1's cache directly, bypassing the gateway
    const direct = await post(`${f.engines[1]!.httpUrl}/v1/completions`, {
      model: MODEL,
      prompt: prefix,
      max_tokens: 1,
    });
    assert.equal(direct.status, 200, direct.text);
    // the gateway learns it from pod-1's KV events
    const body = { model: MODEL, prompt: `${prefix} and then some more words at the end`, max_tokens: 2 };
    let ex: Explain | null = null;
    await waitFor("pod-1's blocks in the gateway's index", async () => {
      ex = await explain(f, body);
      return (ex.candidates.find((c) => c.pod === "pod-1")?.matchedTokens ?? 0) > 0;
    });
    assert.equal(ex!.choice?.pod, "pod-1");
    assert.equal(ex!.candidates.length, 3);
    assert.ok(ex!.candidates.every((c) => c.live));

    const r = await post(`${f.gw.url}/v1/completions`, body);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get("x-kvsync-pod"), "pod-1");
    const matched = Number(r.headers.get("x-kvsync-matched-tokens"));
    assert.ok(matched >= 16 * 10, `matched ${matched}`);
    const cached = r.json.usage.prompt_tokens_details.cached_tokens as number;
    assert.ok(cached >= matched, `engine cached ${cached} < predicted ${matched}`);
  });

  test("a hot prefix shared by every prompt still spreads concurrent load", async () => {
    const system = long("hotsystem", 200);
    const warm = await post(`${f.engines[0]!.httpUrl}/v1/chat/completions`, {
      model: MODEL,
      messages: [
        { role: "system", content: system },
        { role: "user", content: "warm" },
      ],
      max_tokens: 1,
    });
    assert.equal(warm.status, 200, warm.text);
    const probe = {
      model: MODEL,
      messages: [
        { role: "system", content: system },
        { role: "user", content: "probe" },
      ],
    };
    await waitFor("hot prefix indexed on pod-0", async () => {
      const ex = await explain(f, probe);
      return (ex.candidates.find((c) => c.pod === "pod-0")?.matchedTokens ?? 0) > 0;
    });
    const N = 12;
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        post(`${f.gw.url}/v1/chat/completions`, {
          model: MODEL,
          messages: [
            { role: "system", content: system },
            { role: "user", content: `${long(`user${i}x`, 60)} question ${i}` },
          ],
          // long enough that the requests overlap even on a loaded machine
          max_tokens: 200,
        }),
      ),
    );
    const perPod = new Map<string, number>();
    for (const r of results) {
      assert.equal(r.status, 200, r.text);
      const pod = r.headers.get("x-kvsync-pod")!;
      perPod.set(pod, (perPod.get(pod) ?? 0) + 1);
    }
    assert.equal(perPod.size, 3, `every pod got traffic: ${JSON.stringify([...perPod])}`);
    // spread, not piled: kv-aware's work slack (routing/work-slack.ts) lets the holder of the hot
    // prefix take more than an even share while its TTFT estimate stays within the slack, never all
    for (const [pod, n] of perPod) assert.ok(n <= (2 * N) / 3, `${pod} got ${n} of ${N}`);
    // every pod that got the hot prefix now caches it: later turns hit on all of them
    await waitFor("gateway idle", () => f.gw.core.loads.totalInflight() === 0);
  });

  test("GET /v1/models lists the pods' models and adapters", async () => {
    f.gw.pods.apply({ type: "upsert", pod: { ...f.pods[2]!, loras: ["sql-lora"] } });
    try {
      const list = await client.models.list();
      const ids = list.data.map((m) => m.id).sort();
      assert.deepEqual(ids, [MODEL, "sql-lora"]);
    } finally {
      f.gw.pods.apply({ type: "upsert", pod: f.pods[2]! });
    }
  });

  test("explain accepts token_ids and reports every candidate's score and the choice", async () => {
    const ex = await explain(f, { model: MODEL, token_ids: Array.from({ length: 40 }, (_, i) => i + 1) });
    assert.equal(ex.promptTokens, 40);
    assert.equal(ex.candidates.length, 3);
    assert.equal(ex.candidates.filter((c) => c.chosen).length, 1);
    assert.equal(ex.candidates[0]!.pod, ex.choice?.pod);
    const bad = await post(`${f.gw.adminUrl}/admin/route/explain`, { model: "nope", prompt: "x" });
    assert.equal(bad.status, 404);
    assert.equal(bad.json.error.code, "model_not_found");
  });

  test("metrics: the documented series are exposed on the admin port", async () => {
    const r = await fetch(`${f.gw.adminUrl}/metrics`);
    const text = await r.text();
    for (const name of [
      "kvsync_gateway_requests_total",
      "kvsync_gateway_routing_decision_seconds",
      "kvsync_gateway_tokenization_seconds",
      "kvsync_gateway_matched_token_ratio",
      "kvsync_gateway_prediction_error_tokens",
      "kvsync_gateway_prediction_error_ratio",
      "kvsync_gateway_inflight_requests",
    ]) {
      assert.ok(text.includes(name), `missing ${name}`);
    }
    assert.ok(
      (await metricValue(f.gw, "kvsync_gateway_requests_total", { status: "200", policy: "kv-aware" })) >= 10,
    );
  });
});
