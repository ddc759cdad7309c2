/**
 * Every vLLM endpoint through the gateway, with the official `openai` client where it has the
 * endpoint (embeddings, responses, audio, models) and plain fetch for vLLM's own (score, rerank,
 * tokenize): two `kvsync mock-engine` child processes (real HTTP, real ZeroMQ), the gateway
 * in this process.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { type RunningGateway, startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { type EngineProcess, EPHEMERAL, startEngineProcess } from "../../helpers/engine-process.ts";
import { MODEL } from "./fleet.ts";

/** the fields of vLLM's score, rerank and tokenize answers the test reads */
interface VllmBody {
  object: string;
  data: Array<{ index: number; object: string }>;
  results: Array<{ index: number; relevance_score: number; document: { text: string } }>;
  count: number;
  tokens: number[];
  prompt: string;
  usage: { prompt_tokens_details: { cached_tokens: number } };
}

const SYS = "You answer questions about the kvsync gateway and nothing else, briefly. ".repeat(6);

describe("gateway: vLLM's endpoints through the openai client", { timeout: 240_000 }, () => {
  let engines: EngineProcess[] = [];
  let pods: PodInfo[] = [];
  let gw: RunningGateway;
  let client: OpenAI;

  before(async () => {
    engines = await Promise.all(
      [0, 1].map(() =>
        startEngineProcess(
          ["--speed", "20", "--min-output-tokens", "4", "--max-output-tokens", "8"],
          EPHEMERAL,
          90_000,
        ),
      ),
    );
    pods = engines.map((e, i) => ({
      name: `pod-${i}`,
      model: MODEL,
      loras: [],
      http: e.http,
      events: e.events,
      replay: e.replay,
      dataParallelSize: 1,
      ready: true,
    }));
    gw = await startGateway({ pods, tokenizerPool: false, log: silentLogger() });
    await waitFor("both streams live", () =>
      pods.every((p) => gw.subscribers?.status(p.name)?.state === "live"),
    );
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });

  after(async () => {
    await gw?.close();
    await Promise.all(engines.map((e) => e.close()));
  });

  /** The index's blocks of a pod equal the engine's own cache (its KV events all arrived). */
  async function indexMatchesEngine(pod: PodInfo): Promise<void> {
    await waitFor(`index of ${pod.name} == engine cache`, async () => {
      const truth = (await (await fetch(`${pod.http}/debug/kv-cache`)).json()) as {
        blocks: Array<{ hash: string }>;
      };
      const index = gw.index.streamBlocks(pod.name).length;
      return index === truth.blocks.length && index > 0
        ? true
        : `index ${index}, engine ${truth.blocks.length}`;
    });
  }

  it("lists the fleet's models", async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      [MODEL],
    );
  });

  it("embeds (base64 by default, float on request), fills the cache and routes a batch by its cached prompt", async () => {
    const first = await client.embeddings
      .create({ model: MODEL, input: `${SYS} first question` })
      .withResponse();
    const pod = first.response.headers.get("x-kvsync-pod")!;
    assert.ok(pod.startsWith("pod-"));
    assert.equal(first.data.data.length, 1);
    assert.equal(first.data.data[0].embedding.length, 256);
    const norm = Math.hypot(...first.data.data[0].embedding);
    assert.ok(Math.abs(norm - 1) < 1e-3, `unit length, got ${norm}`);
    assert.ok(first.data.usage.prompt_tokens > 64);
    const owner = pods.find((p) => p.name === pod)!;
    await indexMatchesEngine(owner);

    // a batch whose FIRST prompt is new and whose second shares the cached prefix: goes to `pod`
    const batch = await client.embeddings
      .create({
        model: MODEL,
        input: ["an unrelated sentence", `${SYS} second question`],
        encoding_format: "float",
      })
      .withResponse();
    assert.equal(batch.response.headers.get("x-kvsync-pod"), pod);
    const matched = Number(batch.response.headers.get("x-kvsync-matched-tokens"));
    assert.ok(matched >= 64, `matched ${matched}`);
    assert.equal(batch.data.data.length, 2);
    assert.deepEqual(
      batch.data.data.map((d) => d.index),
      [0, 1],
    );
    const usage = batch.data.usage as typeof batch.data.usage & {
      prompt_tokens_details?: { cached_tokens: number };
    };
    assert.equal(
      usage.prompt_tokens_details?.cached_tokens,
      matched,
      "the engine reused what the index predicted",
    );
    await indexMatchesEngine(owner);
  });

  it("answers responses, whole and streamed, routed by the instructions' cached prefix", async () => {
    const first = await client.responses
      .create({ model: MODEL, instructions: SYS, input: "What is a block?", max_output_tokens: 4 })
      .withResponse();
    assert.equal(first.data.object, "response");
    assert.equal(first.data.status, "incomplete");
    assert.equal(first.data.usage?.output_tokens, 4);
    assert.ok(first.data.output_text.length > 0);
    const pod = first.response.headers.get("x-kvsync-pod")!;
    await indexMatchesEngine(pods.find((p) => p.name === pod)!);

    const { data: stream, response } = await client.responses
      .create({
        model: MODEL,
        instructions: SYS,
        input: [{ role: "user", content: [{ type: "input_text", text: "And what is a stream?" }] }],
        stream: true,
      })
      .withResponse();
    assert.equal(response.headers.get("x-kvsync-pod"), pod, "routed to the pod holding the instructions");
    const matched = Number(response.headers.get("x-kvsync-matched-tokens"));
    const types: string[] = [];
    let text = "";
    let final: OpenAI.Responses.Response | null = null;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === "response.output_text.delta") text += ev.delta;
      if (ev.type === "response.completed") final = ev.response;
    }
    assert.deepEqual(types.slice(0, 4), [
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
    ]);
    assert.equal(types.at(-1), "response.completed");
    assert.ok(final !== null);
    assert.equal(final.output_text ?? text, text);
    assert.ok(matched >= 64, `matched ${matched}`);
    assert.equal(
      final.usage?.input_tokens_details.cached_tokens,
      matched,
      "the engine reused what the index predicted",
    );
  });

  it("transcribes audio (a form) routed by load", async () => {
    const t = await client.audio.transcriptions.create({
      model: MODEL,
      file: new File([new Uint8Array(48_000)], "clip.wav", { type: "audio/wav" }),
    });
    assert.ok(t.text.split(" ").length >= 3);
  });

  it("scores, reranks, tokenizes and detokenizes in vLLM's shapes", async () => {
    const post = async (path: string, body: unknown) => {
      const r = await fetch(`${gw.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return {
        status: r.status,
        pod: r.headers.get("x-kvsync-pod"),
        matched: Number(r.headers.get("x-kvsync-matched-tokens")),
        body: (await r.json()) as VllmBody,
      };
    };
    const docs = ["a block holds sixteen tokens", "paris is in france"];
    let cachedBy: string | null = null;
    for (const path of ["/score", "/v1/score"]) {
      const s = await post(path, { model: MODEL, queries: SYS, documents: docs });
      assert.equal(s.status, 200, JSON.stringify(s.body));
      if (cachedBy === null) {
        // the pairs share the query: the second time, its blocks are where the first went
        cachedBy = s.pod;
        await indexMatchesEngine(pods.find((p) => p.name === s.pod)!);
      } else {
        assert.equal(s.pod, cachedBy);
        assert.ok(s.matched >= 64, `matched ${s.matched}`);
        // usage sums the pairs: each one reused the query's blocks the index predicted
        assert.equal(s.body.usage.prompt_tokens_details.cached_tokens, s.matched * docs.length);
      }
      assert.equal(s.body.object, "list");
      assert.deepEqual(
        s.body.data.map((d) => [d.index, d.object]),
        [
          [0, "score"],
          [1, "score"],
        ],
      );
    }
    for (const path of ["/rerank", "/v1/rerank", "/v2/rerank"]) {
      const r = await post(path, { query: "what is a block", documents: docs, top_n: 1 });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.results.length, 1);
      assert.equal(typeof r.body.results[0].relevance_score, "number");
      assert.equal(r.body.results[0].document.text, docs[r.body.results[0].index]);
    }
    const tok = await post("/tokenize", { model: MODEL, prompt: "hello world" });
    assert.equal(tok.status, 200);
    assert.equal(tok.body.count, tok.body.tokens.length);
    const detok = await post("/detokenize", { tokens: tok.body.tokens });
    assert.equal(detok.body.prompt, "hello world");
  });

  it("explains each endpoint's body as that endpoint routes it (?endpoint=), the same decision the real request takes", async () => {
    const explain = async (endpoint: string, body: unknown) => {
      const r = await fetch(`${gw.adminUrl}/admin/route/explain?endpoint=${encodeURIComponent(endpoint)}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return {
        status: r.status,
        body: (await r.json()) as {
          kind: string;
          routeByPrefix: boolean;
          prompts: number;
          chosenPrompt: number;
          choice: { pod: string } | null;
          candidates: Array<{ pod: string; matchedTokens: number; chosen: boolean }>;
          error?: { param: string };
        },
      };
    };
    const real = async (path: string, body: unknown) => {
      const r = await fetch(`${gw.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      await r.arrayBuffer();
      assert.equal(r.status, 200, path);
      return {
        pod: r.headers.get("x-kvsync-pod"),
        matched: Number(r.headers.get("x-kvsync-matched-tokens")),
      };
    };
    // a prefix cached on one pod first (the embeddings test's SYS may sit on either pod)
    const seed = await real("/v1/embeddings", { model: MODEL, input: `${SYS} explain seed` });
    const holder = pods.find((p) => p.name === seed.pod)!;
    await indexMatchesEngine(holder);
    const cases: Array<[string, Record<string, unknown>, string, number, number]> = [
      // a batch whose second prompt holds the cached prefix: routed by that one
      [
        "/v1/embeddings",
        { model: MODEL, input: ["nothing cached here", `${SYS} explain batch`] },
        "embedding",
        2,
        1,
      ],
      [
        "/v1/completions",
        { model: MODEL, prompt: ["nothing cached", `${SYS} explain completion`], max_tokens: 2 },
        "completion",
        2,
        1,
      ],
      ["/score", { model: MODEL, queries: SYS, documents: ["one", "two"] }, "score", 2, 0],
      ["/v1/rerank", { model: MODEL, query: SYS, documents: ["one", "two"] }, "rerank", 2, 0],
    ];
    for (const [path, body, kind, prompts, chosenPrompt] of cases) {
      const e = await explain(path, body);
      assert.equal(e.status, 200, `${path}: ${JSON.stringify(e.body)}`);
      assert.equal(e.body.kind, kind, path);
      assert.equal(e.body.routeByPrefix, true, path);
      assert.equal(e.body.prompts, prompts, path);
      assert.equal(e.body.chosenPrompt, chosenPrompt, path);
      assert.equal(e.body.choice?.pod, holder.name, `${path}: explained choice`);
      const chosen = e.body.candidates.find((c) => c.chosen)!;
      assert.ok(chosen.matchedTokens >= 64, `${path}: matched ${chosen.matchedTokens}`);
      // the real request, right after: the same pod, the same match
      const r = await real(path, body);
      assert.equal(r.pod, e.body.choice?.pod, `${path}: the real route's pod`);
      assert.equal(r.matched, chosen.matchedTokens, `${path}: the real route's match`);
      await indexMatchesEngine(holder);
    }
    // routed by load: not tokenized, every candidate with nothing matched
    const tok = await explain("/tokenize", { model: MODEL, prompt: `${SYS} tokenize` });
    assert.equal(tok.status, 200, JSON.stringify(tok.body));
    assert.equal(tok.body.kind, "tokenize");
    assert.equal(tok.body.routeByPrefix, false);
    assert.equal(tok.body.prompts, 0);
    assert.ok(tok.body.candidates.every((c) => c.matchedTokens === 0));
    // a body the endpoint refuses is refused by explain the same way; an unknown endpoint is a 400
    const bad = await explain("/v1/embeddings", { model: MODEL, input: 42 });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error?.param, "input");
    const unknown = await explain("/v1/nope", { model: MODEL });
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body.error?.param, "endpoint");
  });

  it("answers an unknown path with an OpenAI-style 404 the client understands", async () => {
    await assert.rejects(client.post("/no/such/endpoint", { body: {} }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.NotFoundError);
      assert.equal(err.status, 404);
      assert.equal((err.error as { code?: string }).code, "not_found");
      return true;
    });
    const r = await fetch(`${gw.url}/v1/embeddings`);
    assert.equal(r.status, 405);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, "method_not_allowed");
  });
});
