/**
 * The engine's HTTP surface as clients see it: the official openai client (streaming and not),
 * cache hits in usage and TTFT, /tokenize equal to the tokenizer module, errors, metrics,
 * LoRA, replicas and the CLI's graceful shutdown.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";
import { offsetEndpoint, pubShouldBind, withHost } from "../../../src/engine/publisher.ts";
import { type RunningEngine, replicaOptions, startEngines } from "../../../src/engine/start.ts";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { loadTokenizer } from "../../../src/tokenize/hf-tokenizer.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { startEngineProcess } from "../../helpers/engine-process.ts";
import { LOCAL, open, start } from "./local-engine.ts";
import { getJson, MirrorSubscriber, postJson } from "./mirror.ts";

const MODEL = "Qwen/Qwen3-0.6B";

const client = (e: RunningEngine) =>
  new OpenAI({ baseURL: `${e.httpUrl}/v1`, apiKey: "none", maxRetries: 0 });

test("openai client: completions and chat, non-streaming and streaming, with usage and cached tokens", async () => {
  const e = await start({ blockSize: 16, numGpuBlocks: 256 });
  const c = client(e);
  const prompt = "The quick brown fox jumps over the lazy dog. ".repeat(8);
  const r1 = await c.completions.create({ model: MODEL, prompt, max_tokens: 7 });
  assert.equal(r1.object, "text_completion");
  assert.equal(r1.choices[0].finish_reason, "length");
  assert.ok(r1.choices[0].text.length > 0);
  assert.equal(r1.usage?.completion_tokens, 7);
  const tok = await loadTokenizer(MODEL);
  const ids = await tok.encodePrompt(prompt);
  assert.equal(r1.usage?.prompt_tokens, ids.length);
  assert.equal(r1.usage?.prompt_tokens_details?.cached_tokens, 0);
  const r2 = await c.completions.create({ model: MODEL, prompt, max_tokens: 3 });
  assert.equal(r2.usage?.prompt_tokens_details?.cached_tokens, Math.floor((ids.length - 1) / 16) * 16);

  const chat = await c.chat.completions.create({
    model: MODEL,
    messages: [
      { role: "system", content: "You are terse." },
      { role: "user", content: "Say hi" },
    ],
    max_completion_tokens: 5,
  });
  assert.equal(chat.object, "chat.completion");
  assert.equal(chat.choices[0].message.role, "assistant");
  assert.equal(chat.usage?.completion_tokens, 5);
  assert.equal(chat.choices[0].finish_reason, "length");

  const stream = await c.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Count to three" }],
    max_tokens: 4,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let contentChunks = 0;
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | null | undefined = null;
  for await (const ch of stream) {
    if (ch.usage) usage = ch.usage;
    const choice = ch.choices[0];
    if (choice === undefined) continue;
    if (choice.delta.content) {
      text += choice.delta.content;
      contentChunks++;
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  assert.equal(contentChunks, 4);
  assert.ok(text.length > 0);
  assert.equal(finish, "length");
  assert.equal(usage?.completion_tokens, 4);
  const chatIds = await tok.encodeChat({ messages: [{ role: "user", content: "Count to three" }] });
  assert.equal(usage?.prompt_tokens, chatIds.length);

  const cstream = await c.completions.create({ model: MODEL, prompt: "Hello", max_tokens: 3, stream: true });
  const pieces: string[] = [];
  for await (const ch of cstream) if (ch.choices[0]?.text) pieces.push(ch.choices[0].text);
  assert.equal(pieces.length, 3);
});

test("without max_tokens the output ends with EOS (finish stop) within the configured length", async () => {
  const e = await start({ minOutputTokens: 3, maxOutputTokens: 6 });
  for (let i = 0; i < 5; i++) {
    const r = await client(e).completions.create({ model: MODEL, prompt: `Tell me ${i}` });
    assert.equal(r.choices[0].finish_reason, "stop");
    const n = r.usage!.completion_tokens;
    assert.ok(n >= 3 && n <= 6, `completion tokens ${n}`);
  }
});

test("a shared prefix is a cache hit: cached_tokens > 0 and a lower TTFT", async () => {
  const e = await start({ speed: 1, stepMs: 1, prefillMsPerToken: 0.5, decodeMsPerSeq: 0.1, blockSize: 16 });
  const c = client(e);
  const prompt = Array.from({ length: 600 }, (_, i) => 1000 + i);
  const ttft = async (p: number[]) => {
    const t0 = performance.now();
    const s = await c.completions.create({
      model: MODEL,
      prompt: p,
      max_tokens: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    let first = 0;
    let cached = -1;
    for await (const ch of s) {
      if (first === 0 && ch.choices[0]?.text) first = performance.now() - t0;
      if (ch.usage) cached = ch.usage.prompt_tokens_details?.cached_tokens ?? -1;
    }
    return { first, cached };
  };
  const cold = await ttft(prompt);
  const warm = await ttft([...prompt.slice(0, 592), 7, 8, 9]);
  assert.equal(cold.cached, 0);
  assert.equal(warm.cached, 592);
  assert.ok(cold.first > 250, `cold TTFT ${cold.first} ms`);
  // modelled: 300 ms of prefill cold, 1.5 ms warm; only the order is asserted (a loaded machine can
  // delay the warm request's first token by a scheduling slice, never by the 200x the model gives)
  assert.ok(warm.first < cold.first, `warm TTFT ${warm.first} ms vs cold ${cold.first} ms`);
  const metrics = await (await fetch(`${e.httpUrl}/metrics`)).text();
  assert.match(
    metrics,
    /vllm:time_to_first_token_seconds_count\{model_name="Qwen\/Qwen3-0.6B",engine="0"\} 2/,
  );
  assert.match(metrics, /vllm:prefix_cache_hits_total\{model_name="Qwen\/Qwen3-0.6B",engine="0"\} 592/);
  assert.match(metrics, /vllm:prefix_cache_queries_total\{model_name="Qwen\/Qwen3-0.6B",engine="0"\} 1195/);
});

test("/tokenize and /detokenize agree with the tokenizer module (completion and chat)", async () => {
  const e = await start();
  const tok = await loadTokenizer(MODEL);
  const prompt = "KV caches, prefix hashing, and routing: 東京 🚀";
  const r = await postJson(`${e.httpUrl}/tokenize`, { model: MODEL, prompt });
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.tokens, await tok.encodePrompt(prompt));
  assert.equal(r.body.count, (r.body.tokens as number[]).length);
  assert.equal(r.body.max_model_len, 8192);
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "What is a KV cache?" },
  ];
  const rc = await postJson(`${e.httpUrl}/tokenize`, { messages });
  assert.deepEqual(rc.body.tokens, await tok.encodeChat({ messages }));
  const rn = await postJson(`${e.httpUrl}/tokenize`, { messages, add_generation_prompt: false });
  assert.deepEqual(rn.body.tokens, await tok.encodeChat({ messages, add_generation_prompt: false }));
  const d = await postJson(`${e.httpUrl}/detokenize`, { tokens: r.body.tokens });
  assert.equal(d.body.prompt, prompt);
});

test("errors are OpenAI-style JSON with the right status, counted, never a crash", async () => {
  const e = await start({ maxModelLen: 64, numGpuBlocks: 8, blockSize: 4, maxBodyBytes: 2048 });
  const raw = async (path: string, body: string, method = "POST") => {
    const r = await fetch(`${e.httpUrl}${path}`, { method, body: method === "GET" ? undefined : body });
    return { status: r.status, body: (await r.json()) as { error: Record<string, unknown> } };
  };
  const bad = await raw("/v1/completions", "{not json");
  assert.equal(bad.status, 400);
  assert.deepEqual(Object.keys(bad.body.error).sort(), ["code", "message", "param", "type"]);
  assert.equal(bad.body.error.type, "BadRequestError");
  const nf = await raw("/v1/completions", JSON.stringify({ model: "nope", prompt: "x" }));
  assert.equal(nf.status, 404);
  assert.equal(nf.body.error.type, "NotFoundError");
  assert.equal(nf.body.error.param, "model");
  const long = await raw("/v1/completions", JSON.stringify({ prompt: Array(70).fill(5), max_tokens: 1 }));
  assert.equal(long.status, 400);
  assert.match(String(long.body.error.message), /maximum context length is 64/);
  const over = await raw("/v1/completions", JSON.stringify({ prompt: Array(40).fill(5), max_tokens: 30 }));
  assert.equal(over.status, 400);
  const blocks = await raw("/v1/completions", JSON.stringify({ prompt: Array(40).fill(5), max_tokens: 2 }));
  assert.equal(blocks.status, 400, "needs more KV blocks than the cache has");
  assert.equal((await raw("/v1/completions", JSON.stringify({ prompt: "x", max_tokens: 0 }))).status, 400);
  assert.equal((await raw("/v1/completions", JSON.stringify({ prompt: 5 }))).status, 400);
  assert.equal((await raw("/v1/chat/completions", JSON.stringify({ messages: [] }))).status, 400);
  assert.equal((await raw("/v1/completions", JSON.stringify({ prompt: "x".repeat(4000) }))).status, 413);
  assert.equal((await raw("/v1/models", "", "DELETE")).status, 405);
  assert.equal((await raw("/nope", "", "GET")).status, 404);
  await assert.rejects(
    client(e).completions.create({ model: "missing", prompt: "x" }),
    (err: unknown) => err instanceof OpenAI.NotFoundError,
  );
  const m = await (await fetch(`${e.httpUrl}/metrics`)).text();
  assert.match(m, /kvsync_mock_engine_http_errors_total\{code="400"\} [1-9]/);
  assert.equal((await fetch(`${e.httpUrl}/health`)).status, 200);
});

test("/metrics exposes vLLM's metric names with model_name", async () => {
  const e = await start();
  await client(e).completions.create({ model: MODEL, prompt: "hello world", max_tokens: 2 });
  const m = await (await fetch(`${e.httpUrl}/metrics`)).text();
  for (const name of [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
  ]) {
    assert.match(m, new RegExp(`^${name}\\{[^}]*model_name="Qwen/Qwen3-0.6B"`, "m"), name);
  }
  assert.match(m, /^vllm:generation_tokens_total\{[^}]*\} 2$/m);
  assert.match(m, /^vllm:cache_config_info\{block_size="16",num_gpu_blocks="2048"[^}]*\} 1$/m);
  assert.match(m, /^vllm:prompt_tokens_total\{[^}]*\} 2$/m);
});

test("LoRA adapters: listed in /v1/models, hashed apart, named in events", async () => {
  const e = await start({ loraModules: ["sql"], blockSize: 4, hashSeed: "5" });
  const [mirror] = [new MirrorSubscriber(e.eventsEndpoint!, e.replayEndpoint).start()];
  open.push(mirror);
  const models = await getJson<{ data: Array<{ id: string; parent: string | null }> }>(
    `${e.httpUrl}/v1/models`,
  );
  assert.deepEqual(
    models.data.map((m) => [m.id, m.parent]),
    [
      [MODEL, null],
      ["sql", MODEL],
    ],
  );
  const prompt = Array.from({ length: 9 }, (_, i) => 40 + i);
  await client(e).completions.create({ model: MODEL, prompt, max_tokens: 1 });
  const lr = await client(e).completions.create({ model: "sql", prompt, max_tokens: 1 });
  assert.equal(
    lr.usage?.prompt_tokens_details?.cached_tokens,
    0,
    "the adapter does not share the base cache",
  );
  await e.engine.quiesce();
  const msgs = await mirror.replay(0);
  const events = msgs.filter((x) => x.seq !== null).flatMap((x) => decodeBatch(x.payload).batch.events);
  const stored = events.filter((ev) => ev.type === "BlockStored");
  assert.equal(stored.length, 2);
  assert.ok(stored[0].type === "BlockStored" && stored[0].loraName === null && stored[0].loraId === null);
  assert.ok(stored[1].type === "BlockStored" && stored[1].loraName === "sql" && stored[1].loraId === 1);
  assert.notDeepEqual(stored[0].blockHashes, stored[1].blockHashes);
});

test("a client disconnect aborts the request and frees its blocks", async () => {
  const e = await start({ speed: 1, stepMs: 2, numGpuBlocks: 64, blockSize: 4 });
  const ac = new AbortController();
  const r = await fetch(`${e.httpUrl}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ prompt: [1, 2, 3, 4, 5, 6], max_tokens: 200, stream: true }),
    signal: ac.signal,
  });
  const reader = r.body!.getReader();
  await reader.read();
  await waitFor("the request to run", () => e.engine.ranks[0].scheduler.numRunning === 1);
  ac.abort();
  await waitFor("the request to be aborted", () => e.engine.ranks[0].scheduler.numRunning === 0);
  await e.engine.quiesce();
  assert.equal(e.engine.ranks[0].cache.stats().gpuUsed, 0);
});

test("replicas: independent engines in one process, port stride and hosts", async () => {
  const o = replicaOptions(
    { port: 8000, portStride: 10, eventsEndpoint: "tcp://*:5557", replayEndpoint: "tcp://*:5558" },
    2,
  );
  assert.equal(o.port, 8020);
  assert.equal(o.eventsEndpoint, "tcp://*:5577");
  assert.equal(o.replayEndpoint, "tcp://*:5578");
  const h = replicaOptions({ port: 8000, hosts: ["10.0.0.1", "10.0.0.2"] }, 1);
  assert.equal(h.host, "10.0.0.2");
  assert.equal(h.port, 8000);
  assert.equal(h.eventsEndpoint, "tcp://10.0.0.2:5557");
  assert.equal(h.eventsBind, true, "tcp://*:5557 binds, also once the host is filled in");
  assert.equal(
    replicaOptions({ eventsEndpoint: "tcp://10.9.9.9:5557", hosts: ["10.0.0.1"] }, 0).eventsBind,
    false,
  );
  assert.equal(offsetEndpoint("tcp://*:5557", 3), "tcp://*:5560");
  assert.equal(offsetEndpoint("ipc:///tmp/kv", 1), "ipc:///tmp/kv_dp1");
  assert.equal(withHost("tcp://*:5557", "::1"), "tcp://[::1]:5557");
  assert.equal(pubShouldBind("tcp://*:5557"), true);
  assert.equal(pubShouldBind("tcp://[::]:5557"), true);
  assert.equal(pubShouldBind("tcp://10.0.0.1:5557"), false);
  assert.equal(pubShouldBind("ipc:///tmp/x"), true);

  const engines = await startEngines({
    replicas: 2,
    hosts: ["127.0.0.1", "127.0.0.2"],
    port: 0,
    eventsEndpoint: LOCAL,
    replayEndpoint: LOCAL,
    speed: 1000,
    log: silentLogger(),
    hashSeed: "9",
  });
  open.push(...engines);
  assert.match(engines[1].httpUrl, /^http:\/\/127\.0\.0\.2:/);
  assert.match(engines[1].eventsEndpoint!, /^tcp:\/\/127\.0\.0\.2:[1-9]/);
  assert.match(engines[1].replayEndpoint!, /^tcp:\/\/127\.0\.0\.2:[1-9]/);
  // the replica's PUB is bound on its host: a subscriber there receives its events
  const sub = new MirrorSubscriber(engines[1].eventsEndpoint!, engines[1].replayEndpoint).start();
  open.push(sub);
  const prompt = Array.from({ length: 40 }, (_, i) => i + 1);
  await client(engines[0]).completions.create({ model: MODEL, prompt, max_tokens: 1 });
  const r = await client(engines[1]).completions.create({ model: MODEL, prompt, max_tokens: 1 });
  assert.equal(r.usage?.prompt_tokens_details?.cached_tokens, 0, "replicas do not share a cache");
  assert.equal(engines[0].engine.tokenizer, engines[1].engine.tokenizer, "one shared tokenizer");
  await engines[1].engine.quiesce();
  await sub.catchUp();
  await waitFor("replica 1's events (2 blocks of 16)", () => sub.blocks.size === 2);
});

test("CLI: kvsync mock-engine serves and shuts down cleanly on SIGTERM", async () => {
  const engine = await startEngineProcess([
    "--num-gpu-blocks",
    "32",
    "--speed",
    "100",
    "--lora-modules",
    "sql=/adapters/sql",
    "chat",
  ]);
  open.push(engine);
  const { child, http: url } = engine;
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  const r = await postJson(`${url}/v1/completions`, { prompt: "hi", max_tokens: 2 });
  assert.equal(r.status, 200);
  const models = await getJson<{ data: Array<{ id: string }> }>(`${url}/v1/models`);
  assert.deepEqual(
    models.data.map((x) => x.id),
    [MODEL, "sql", "chat"],
  );
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
  assert.match(engine.stderr(), /"event":"engine.stopped"/);
});

test("a list of prompts gives one choice per prompt and summed usage; 503 beyond the waiting bound", async () => {
  const e = await start({ blockSize: 4 });
  const r = await postJson(`${e.httpUrl}/v1/completions`, { prompt: ["one two", [5, 6, 7]], max_tokens: 2 });
  assert.equal(r.status, 200);
  const choices = r.body.choices as Array<{ index: number; finish_reason: string }>;
  assert.deepEqual(
    choices.map((c) => [c.index, c.finish_reason]),
    [
      [0, "length"],
      [1, "length"],
    ],
  );
  const usage = r.body.usage as { prompt_tokens: number; completion_tokens: number };
  assert.equal(usage.prompt_tokens, 2 + 3);
  assert.equal(usage.completion_tokens, 4);

  const q = await start({ maxWaiting: 1, maxNumSeqs: 1, speed: 1, stepMs: 20 });
  const ac = new AbortController();
  const first = fetch(`${q.httpUrl}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: 1000 }),
    signal: ac.signal,
  }).catch((err: Error) => err.name);
  await waitFor("the first request to run", () => q.engine.ranks[0].scheduler.numRunning === 1);
  const second = postJson(`${q.httpUrl}/v1/completions`, { prompt: [4, 5, 6], max_tokens: 1 });
  await waitFor("the second request to wait", () => q.engine.ranks[0].scheduler.numWaiting === 1);
  const third = await postJson(`${q.httpUrl}/v1/completions`, { prompt: [7, 8, 9], max_tokens: 1 });
  assert.equal(third.status, 503);
  assert.equal((third.body.error as { type: string }).type, "ServiceUnavailableError");
  ac.abort();
  assert.equal(await first, "AbortError");
  assert.equal((await second).status, 200, "the waiting request runs once the first is aborted");
});

test("multi-turn chat: the next turn hits the cached prompt and generated tokens of the previous one", async () => {
  const e = await start({ blockSize: 4 });
  const c = client(e);
  const m1: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "Tell me about KV caches please." },
  ];
  const r1 = await c.chat.completions.create({ model: MODEL, messages: m1, max_tokens: 20 });
  const p1 = r1.usage!.prompt_tokens;
  const m2: OpenAI.ChatCompletionMessageParam[] = [
    ...m1,
    { role: "assistant", content: r1.choices[0].message.content ?? "" },
    { role: "user", content: "More." },
  ];
  const r2 = await c.chat.completions.create({ model: MODEL, messages: m2, max_tokens: 2 });
  // the engine computed the prompt and all generated tokens but the last: its full blocks are cached
  assert.equal(r2.usage?.prompt_tokens_details?.cached_tokens, Math.floor((p1 + 20 - 1) / 4) * 4);
});
