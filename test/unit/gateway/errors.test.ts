/**
 * Failure paths of the real gateway: documented OpenAI-shaped errors, retry before the first
 * byte, a pod dying mid-stream, timeouts and client disconnects. Scripted HTTP pods stand in for
 * engines where a failure must happen at an exact moment; real mock engines elsewhere.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import {
  deadPort,
  type Fleet,
  fakePodInfo,
  type Json,
  MODEL,
  metricValue,
  post,
  startFakePod,
  startFleet,
} from "./fleet.ts";

function assertOpenAiError(r: { status: number; json: Json }, status: number, code: string): void {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.equal(typeof r.json?.error?.message, "string");
  assert.equal(typeof r.json.error.type, "string");
  assert.ok("param" in r.json.error);
  assert.equal(r.json.error.code, code);
}

const completionBody = (text = "hello") => ({
  id: "cmpl-1",
  object: "text_completion",
  created: 1,
  model: MODEL,
  choices: [{ index: 0, text, finish_reason: "length", logprobs: null }],
  usage: {
    prompt_tokens: 3,
    completion_tokens: 1,
    total_tokens: 4,
    prompt_tokens_details: { cached_tokens: 0 },
  },
});

describe("gateway errors with a real engine", () => {
  let f: Fleet;
  before(async () => {
    f = await startFleet(1, { maxBodyBytes: 4096 });
  });
  after(async () => {
    await f?.close();
  });

  test("unknown model → 404 model_not_found", async () => {
    const r = await post(`${f.gw.url}/v1/chat/completions`, {
      model: "no-such-model",
      messages: [{ role: "user", content: "x" }],
    });
    assertOpenAiError(r, 404, "model_not_found");
    assert.equal(r.json.error.param, "model");
  });

  test("malformed JSON and bad fields → 400", async () => {
    assertOpenAiError(await post(`${f.gw.url}/v1/completions`, "{not json"), 400, "invalid_json");
    assertOpenAiError(await post(`${f.gw.url}/v1/completions`, "[1,2]"), 400, "invalid_json");
    const noMsgs = await post(`${f.gw.url}/v1/chat/completions`, { model: MODEL, messages: [] });
    assertOpenAiError(noMsgs, 400, "invalid_value");
    assert.equal(noMsgs.json.error.param, "messages");
    assertOpenAiError(
      await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: 42 }),
      400,
      "invalid_value",
    );
    assertOpenAiError(await post(`${f.gw.url}/v1/completions`, { prompt: "x" }), 400, "invalid_value");
    assertOpenAiError(
      await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: "x", stream: "yes" }),
      400,
      "invalid_type",
    );
  });

  test("oversized body → 413 (declared or streamed)", async () => {
    const big = { model: MODEL, prompt: "x".repeat(10_000) };
    assertOpenAiError(await post(`${f.gw.url}/v1/completions`, big), 413, "request_too_large");
    // chunked upload without content-length
    const body = new ReadableStream({
      start(c) {
        for (let i = 0; i < 10; i++) c.enqueue(new TextEncoder().encode("x".repeat(1000)));
        c.close();
      },
    });
    const r = await fetch(`${f.gw.url}/v1/completions`, {
      method: "POST",
      body,
      headers: { "content-type": "application/json" },
      duplex: "half",
    } as RequestInit);
    assert.equal(r.status, 413);
    assert.equal(((await r.json()) as Json).error.code, "request_too_large");
  });

  test("errors through the openai client surface as typed API errors", async () => {
    const client = new OpenAI({ baseURL: `${f.gw.url}/v1`, apiKey: "t", maxRetries: 0 });
    await assert.rejects(
      client.chat.completions.create({ model: "missing", messages: [{ role: "user", content: "x" }] }),
      (e: unknown) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
    );
  });

  test("no ready pod → 503; every answer is counted", async () => {
    const before = await metricValue(f.gw, "kvsync_gateway_requests_total", { status: "503" });
    f.gw.pods.apply({ type: "upsert", pod: { ...f.pods[0]!, ready: false } });
    try {
      const r = await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: "x" });
      assertOpenAiError(r, 503, "no_ready_pod");
    } finally {
      f.gw.pods.apply({ type: "upsert", pod: f.pods[0]! });
    }
    assert.equal((await metricValue(f.gw, "kvsync_gateway_requests_total", { status: "503" })) - before, 1);
    const ok = await post(`${f.gw.url}/v1/completions`, { model: MODEL, prompt: "x", max_tokens: 1 });
    assert.equal(ok.status, 200);
  });
});

describe("gateway failure handling with scripted pods", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  async function gateway(
    pods: ReturnType<typeof fakePodInfo>[],
    extra: Parameters<typeof startGateway>[0] = {},
  ) {
    const gw = await startGateway({
      pods,
      subscribe: false,
      tokenizers: false,
      adminPort: null,
      log: silentLogger(),
      ...extra,
    });
    cleanups.push(() => gw.close());
    return gw;
  }

  test("connection refused before any byte is retried once on the next-best pod", async () => {
    const good = await startFakePod((req, res) => {
      req.resume();
      req.on("end", () =>
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(completionBody())),
      );
    });
    cleanups.push(() => good.close());
    const dead = `http://127.0.0.1:${await deadPort()}`;
    // round-robin's first choice is the first pod by name: the dead one
    // no health signal: its probes would take the dead pod out before the request; this is the
    // path of a pod that dies between two probes
    const gw = await gateway([fakePodInfo("a-dead", dead), fakePodInfo("b-good", good.url)], {
      policy: "round-robin",
      health: false,
    });
    const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "hi" });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get("x-kvsync-pod"), "b-good");
    assert.equal(good.requests, 1);
    assert.equal(await metricValue(gw, "kvsync_gateway_upstream_retries_total"), 1);
    assert.equal(await metricValue(gw, "kvsync_gateway_requests_total", { pod: "b-good", status: "200" }), 1);
    // the decisions list (the dashboard's) shows where it went, and the retry
    const [d] = gw.core.activity.recent();
    assert.deepEqual(d?.choice, { pod: "b-good", rank: null });
    assert.deepEqual(d?.retry, { from: { pod: "a-dead", rank: null }, reason: "connect" });
    assert.equal(d?.ranked[0]?.pod, "a-dead", "the policy's ranking is kept");
  });

  test("every pod refusing connections → 502 after one retry", async () => {
    const gw = await gateway(
      [
        fakePodInfo("a", `http://127.0.0.1:${await deadPort()}`),
        fakePodInfo("b", `http://127.0.0.1:${await deadPort()}`),
        fakePodInfo("c", `http://127.0.0.1:${await deadPort()}`),
      ],
      { health: false },
    ); // as above: pods that die between probes (health.test.ts: the probed case)
    const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "hi" });
    assertOpenAiError(r, 502, "upstream_error");
    assert.equal(await metricValue(gw, "kvsync_gateway_upstream_retries_total"), 1);
    assert.equal(await metricValue(gw, "kvsync_gateway_upstream_errors_total", { kind: "connect" }), 2);
  });

  test("a pod that dies mid-stream ends the client's stream with an error event, not a hang", async () => {
    const dying = await startFakePod((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "text/event-stream" });
      const chunk = {
        id: "c1",
        object: "chat.completion.chunk",
        created: 1,
        model: MODEL,
        choices: [{ index: 0, delta: { role: "assistant", content: "Hel" }, finish_reason: null }],
      };
      res.write(`data: ${JSON.stringify(chunk)}\n\n`, () => {
        setImmediate(() => res.socket?.destroy());
      });
    });
    cleanups.push(() => dying.close());
    const gw = await gateway([fakePodInfo("dying", dying.url)]);
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "t", maxRetries: 0, timeout: 10_000 });
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    });
    const got: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const ch of stream) got.push(ch.choices[0]?.delta?.content ?? "");
      })(),
      (e: unknown) => e instanceof OpenAI.APIError && /mid-stream/.test(e.message),
    );
    assert.deepEqual(got, ["Hel"]);
    await waitFor(
      "stream error counted",
      async () => (await metricValue(gw, "kvsync_gateway_stream_errors_total")) === 1,
    );
    assert.equal(gw.core.loads.totalInflight(), 0);
  });

  test("a pod that never answers → 504 after the headers timeout", async () => {
    const silent = await startFakePod((req) => {
      req.resume();
    });
    cleanups.push(() => silent.close());
    const gw = await gateway([fakePodInfo("silent", silent.url)], { headersTimeoutMs: 200 });
    const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "hi" });
    assertOpenAiError(r, 504, "upstream_timeout");
  });

  test("a client disconnect aborts the upstream request", async () => {
    let upstreamClosed = false;
    const slow = await startFakePod((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write('data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n');
      res.on("close", () => {
        upstreamClosed = true;
      });
    });
    cleanups.push(() => slow.close());
    const gw = await gateway([fakePodInfo("slow", slow.url)]);
    const ac = new AbortController();
    const r = await fetch(`${gw.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ model: MODEL, prompt: "hi", stream: true }),
      signal: ac.signal,
    });
    const reader = r.body!.getReader();
    const first = await reader.read();
    assert.ok(new TextDecoder().decode(first.value).includes('"a"'));
    ac.abort();
    await waitFor("upstream request closed", () => upstreamClosed);
    await waitFor("in-flight back to 0", () => gw.core.loads.totalInflight() === 0);
    await waitFor(
      "client abort counted",
      async () => (await metricValue(gw, "kvsync_gateway_requests_total", { status: "client_closed" })) === 1,
    );
  });

  test("upstream error statuses pass through with routing headers", async () => {
    const failing = await startFakePod((req, res) => {
      req.resume();
      res.writeHead(400, { "content-type": "application/json" }).end(
        JSON.stringify({
          error: { message: "max_tokens too large", type: "BadRequestError", param: null, code: 400 },
        }),
      );
    });
    cleanups.push(() => failing.close());
    const gw = await gateway([fakePodInfo("f", failing.url)]);
    const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "hi", max_tokens: 1e9 });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.message, "max_tokens too large");
    assert.equal(r.headers.get("x-kvsync-pod"), "f");
  });
});
