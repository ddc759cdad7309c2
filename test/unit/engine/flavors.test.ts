/**
 * `--flavor`: the mock engine publishes each engine's wire format (vLLM map / array, SGLang 2026,
 * SGLang 2025, TensorRT-LLM through Dynamo's publisher), and honours vLLM's `cache_salt` as vLLM
 * does (the salt enters the first block's hash and extra keys; SGLang 2025 had no salts).
 * Checked over real sockets: each payload is exactly its era's encoding, a subscriber rebuilding
 * the cache from the events equals /debug/kv-cache, the index matches what the engine reports as
 * cached, salted requests only reuse blocks of their salt.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import * as zmq from "zeromq";
import { eraOf } from "../../../src/engine/publisher.ts";
import { type RunningEngine, startEngine } from "../../../src/engine/start.ts";
import { createIndex } from "../../../src/index/index.ts";
import { decodeBatch, decodePubMessage, encodeBatch } from "../../../src/protocol/index.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { getJson, MirrorSubscriber, normalize, postJson } from "./mirror.ts";

const LOCAL = "tcp://127.0.0.1:*";
const open: Array<{ close(): Promise<void> | void }> = [];
after(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});

const PROMPT = Array.from({ length: 17 }, (_, i) => 7000 + i);

async function cached(e: RunningEngine, salt: string | null): Promise<number> {
  const body: Record<string, unknown> = { prompt: PROMPT, max_tokens: 1 };
  if (salt !== null) body.cache_salt = salt;
  const r = await postJson(`${e.httpUrl}/v1/completions`, body);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const usage = r.body.usage as { prompt_tokens_details?: { cached_tokens?: number } };
  return usage.prompt_tokens_details?.cached_tokens ?? 0;
}

for (const flavor of ["vllm", "sglang", "sglang-2025", "trtllm"] as const) {
  for (const eventFormat of flavor === "vllm" ? (["map", "array"] as const) : (["map"] as const)) {
    describe(`flavor ${flavor}${flavor === "vllm" ? ` (${eventFormat})` : ""}`, () => {
      test("payloads in the flavor's era, index == truth, salts isolate caches", async () => {
        const e = await startEngine({
          host: "127.0.0.1",
          port: 0,
          eventsEndpoint: LOCAL,
          replayEndpoint: LOCAL,
          speed: 1000,
          blockSize: 4,
          numGpuBlocks: 64,
          flavor,
          eventFormat,
          hashSeed: "flavors",
          log: silentLogger(),
        });
        open.push(e);
        const raw = new zmq.Subscriber({ linger: 0 });
        raw.connect(e.eventsEndpoint!);
        raw.subscribe("");
        open.push({ close: () => raw.close() });
        const payloads: Buffer[] = [];
        let lastSeq = -1;
        void (async () => {
          try {
            for await (const frames of raw) {
              const msg = decodePubMessage(frames);
              payloads.push(msg.payload as Buffer);
              lastSeq = msg.seq;
            }
          } catch {
            // closed
          }
        })();
        const m = new MirrorSubscriber(e.eventsEndpoint!, e.replayEndpoint).start();
        open.push(m);
        // a first event proves both subscriptions are up before the measured requests; each try
        // sends a new prompt (a repeated one would be a cache hit and publish nothing)
        let probe = 0;
        await waitFor(
          "subscriptions up",
          async () => {
            probe++;
            const prompt = [probe, probe, probe, probe, probe];
            await postJson(`${e.httpUrl}/v1/completions`, { prompt, max_tokens: 1 });
            return payloads.length > 0 && m.appliedSeqs.length > 0;
          },
          30_000,
        );

        const honours = flavor !== "sglang-2025";
        assert.equal(await cached(e, null), 0);
        assert.ok((await cached(e, null)) >= 16, "unsalted reuse");
        assert.equal(await cached(e, "t1"), honours ? 0 : 16, "salted: not the unsalted blocks");
        assert.ok((await cached(e, "t1")) >= 16, "same salt: reuse");
        assert.equal(await cached(e, "t2"), honours ? 0 : 16, "another salt: nothing");
        await e.engine.quiesce();
        const next = e.engine.ranks[0]!.publisher!.snapshot().nextSeq;
        await waitFor("every batch received", () => lastSeq === next - 1 && m.next >= next, 30_000);
        await m.catchUp();

        // every payload is exactly the era's encoding of what it decodes to
        const era = eraOf(eventFormat, flavor);
        const idx = createIndex();
        const stream = { streamId: "e", pod: "e", rank: 0, model: "m" };
        for (const p of payloads) {
          const b = decodeBatch(p);
          assert.equal(b.unknownKeys, 0);
          assert.equal(encodeBatch(b.batch, era).toString("hex"), p.toString("hex"));
          assert.equal(b.batch.dpRank, 0);
          idx.applyBatch(stream, b.batch);
        }
        const truth = normalize(
          (await getJson<{ blocks: Array<{ hash: string; tiers: string[] }> }>(`${e.httpUrl}/debug/kv-cache`))
            .blocks,
        );
        assert.deepEqual(normalize(m.snapshot()), truth, "events rebuild /debug/kv-cache");
        const ns = { model: "m", lora: null, blockSize: 4 };
        const at = (salt: string | null) => idx.match({ ...ns, salt }, PROMPT)[0]?.matchedBlocks ?? 0;
        assert.equal(at(null), 4);
        assert.equal(at("t1"), honours ? 4 : 0, "the index sees the salted blocks as the engine does");
        assert.equal(at("t2"), honours ? 4 : 0);
        assert.equal(at("t3"), 0, "a salt nobody used");
      });
    });
  }
}
