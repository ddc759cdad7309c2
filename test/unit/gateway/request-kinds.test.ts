/**
 * What the gateway reads from each endpoint's body: the prompts that go through the engine's
 * cache (single ones in their own field, batches and pairs in `prompts`), the model (optional
 * where vLLM lets it be), and a 400 with the offending field for what it cannot read.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GatewayError } from "../../../src/gateway/errors.ts";
import type { RequestKind } from "../../../src/gateway/request.ts";
import { parseRequest } from "../../../src/gateway/request-kinds.ts";

const json = (kind: RequestKind, body: unknown) =>
  parseRequest(kind, Buffer.from(JSON.stringify(body)), "application/json");

async function rejects400(p: Promise<unknown>, param: string | null): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof GatewayError, String(err));
    assert.equal(err.status, 400);
    assert.equal(err.param, param);
    return true;
  });
}

describe("gateway request kinds", () => {
  it("embeddings: a string, token ids, a batch, chat messages; model optional", async () => {
    const one = (await json("embedding", { input: "hi" })).parsed;
    assert.equal(one.model, "");
    assert.equal(one.prompt, "hi");
    assert.equal(one.prompts, undefined);
    const ids = (await json("embedding", { model: "m", input: [1, 2, 3] })).parsed;
    assert.deepEqual(ids.tokenIds, [1, 2, 3]);
    const batch = (await json("embedding", { model: "m", input: ["a", [4, 5]], add_special_tokens: false }))
      .parsed;
    assert.deepEqual(batch.prompts, [
      { type: "text", text: "a", addSpecialTokens: false },
      { type: "tokens", ids: [4, 5] },
    ]);
    const chat = (await json("embedding", { model: "m", messages: [{ role: "user", content: "x" }] })).parsed;
    assert.equal(chat.chat?.add_generation_prompt, false, "pooling's default");
    await rejects400(json("embedding", { model: "m", input: [{}] }), "input");
    await rejects400(json("embedding", { model: 3, input: "x" }), "model");
  });

  it("completions: a batch keeps its first prompt and lists them all", async () => {
    const p = (await json("completion", { model: "m", prompt: ["a", "b", [7]] })).parsed;
    assert.equal(p.prompt, "a");
    assert.equal(p.prompts?.length, 3);
    assert.equal((await json("completion", { model: "m", prompt: ["a"] })).parsed.prompts, undefined);
  });

  it("responses: model required, the body is the prompt, previous_response_id routes by load", async () => {
    const r = (await json("responses", { model: "m", input: "hi", stream: true })).parsed;
    assert.equal(r.stream, true);
    assert.equal(r.prompts?.[0].type, "responses");
    assert.equal(r.routeByPrefix, undefined);
    const cont = (await json("responses", { model: "m", input: "more", previous_response_id: "resp_1" }))
      .parsed;
    assert.equal(cont.routeByPrefix, false);
    await rejects400(json("responses", { input: "hi" }), "model");
    await rejects400(json("responses", { model: "m", input: [] }), "input");
    await rejects400(json("responses", { model: "m", input: "x", stream: "yes" }), "stream");
  });

  it("score and rerank: one prompt per pair, in every spelling vLLM takes", async () => {
    for (const body of [
      { queries: "q", documents: ["a", "b"] },
      { data_1: "q", data_2: ["a", "b"] },
      { text_1: ["q", "q"], text_2: ["a", "b"] },
      { queries: { type: "text", text: "q" }, items: ["a", "b"] },
    ]) {
      const s = (await json("score", body)).parsed;
      assert.deepEqual(s.prompts, [
        { type: "pair", query: "q", doc: "a" },
        { type: "pair", query: "q", doc: "b" },
      ]);
    }
    await rejects400(json("score", { text_1: ["a", "b"], text_2: ["c"] }), "queries");
    await rejects400(json("score", { queries: "q" }), "queries");
    const r = (await json("rerank", { query: "q", documents: ["a"] })).parsed;
    assert.deepEqual(r.prompts, [{ type: "pair", query: "q", doc: "a" }]);
    await rejects400(json("rerank", { query: "q", documents: "a" }), "documents");
    await rejects400(json("rerank", { query: 5, documents: ["a"] }), "documents");
  });

  it("tokenize, detokenize and audio are routed by load; audio's model comes from its form", async () => {
    assert.equal((await json("tokenize", { prompt: "x" })).parsed.routeByPrefix, false);
    assert.equal((await json("detokenize", { tokens: [1] })).parsed.routeByPrefix, false);
    const form = new FormData();
    form.set("model", "whisper");
    form.set("file", new Blob([new Uint8Array(10)]), "a.wav");
    const req = new Request("http://x", { method: "POST", body: form });
    const buf = Buffer.from(await req.arrayBuffer());
    const a = await parseRequest("audio", buf, req.headers.get("content-type")!);
    assert.equal(a.parsed.model, "whisper");
    assert.equal(a.parsed.routeByPrefix, false);
    await rejects400(parseRequest("audio", Buffer.from("{}"), "application/json"), null);
    await rejects400(parseRequest("audio", Buffer.from("garbage"), "multipart/form-data; boundary=zz"), null);
  });
});
