import assert from "node:assert/strict";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Registry } from "prom-client";
import { HfTokenizer, loadTokenizer, TokenizerError, TokenizerPool } from "../../../src/tokenize/index.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { mixedText, refEncode } from "./reference.ts";

let base: HfTokenizer;
const pools: TokenizerPool[] = [];
before(async () => {
  base = await loadTokenizer();
});
after(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

function pool(opts: ConstructorParameters<typeof TokenizerPool>[1]): TokenizerPool {
  const p = new TokenizerPool(base, opts);
  pools.push(p);
  return p;
}

describe("TokenizerPool", () => {
  test("cold pool encodes inline while workers load; worker ids equal inline ids (completions, chats)", async () => {
    const p = pool({ size: 2, inlineMaxChars: 200 });
    const cold = mixedText(98, 800);
    assert.deepEqual(await p.encodePrompt(cold), base.encodeRaw(cold, true));
    assert.equal(p.stats().coldInline, 1);
    assert.equal(p.stats().workers, 2, "the first long encode starts the workers");
    await p.warm();
    const long = mixedText(99, 3000);
    const short = "Hello world";
    assert.deepEqual(await p.encodePrompt(long), base.encodeRaw(long, true));
    assert.deepEqual(await p.encodePrompt(long), refEncode(long, true));
    assert.deepEqual(await p.encodePrompt(short), [9707, 1879]);
    const chat = {
      messages: [
        { role: "system", content: mixedText(3, 400, false) },
        { role: "user", content: mixedText(4, 800, false) },
      ],
    };
    const text = await p.renderChat(chat);
    assert.deepEqual(await p.encodeChat(chat), base.encodeRaw(text, false));
    const s = p.stats();
    assert.ok(s.offloaded >= 2, JSON.stringify(s));
    assert.ok(s.inline >= 1, JSON.stringify(s));
    assert.equal(s.workers, 2);
    assert.equal(await p.decode([9707, 1879]), "Hello world");
    assert.equal(p.model, base.model);
    assert.deepEqual(p.eosTokenIds, base.eosTokenIds);
  });

  test("concurrent long prompts: all answered correctly, queue bounded with inline fallback", async () => {
    const p = pool({ size: 1, maxQueue: 1, inlineMaxChars: 100, onFull: "inline" });
    await p.warm();
    const texts = Array.from({ length: 5 }, (_, i) => mixedText(500 + i, 1500, false));
    const got = await Promise.all(texts.map((t) => p.encodePrompt(t)));
    for (const [i, ids] of got.entries()) assert.deepEqual(ids, base.encodeRaw(texts[i], true));
    const s = p.stats();
    // one in flight, one queued, the other three encoded inline
    assert.equal(s.offloaded, 2, JSON.stringify(s));
    assert.equal(s.inlineFallbacks, 3, JSON.stringify(s));
    assert.equal(s.queued, 0);
  });

  test("onFull reject gives a typed overloaded error", async () => {
    const p = pool({ size: 1, maxQueue: 0, inlineMaxChars: 100, onFull: "reject" });
    await p.warm();
    const texts = Array.from({ length: 3 }, (_, i) => mixedText(700 + i, 1500, false));
    const results = await Promise.allSettled(texts.map((t) => p.encodePrompt(t)));
    const ok = results.filter((r) => r.status === "fulfilled");
    const rejected = results.filter((r) => r.status === "rejected");
    assert.equal(ok.length, 1);
    assert.equal(rejected.length, 2);
    for (const r of rejected) {
      const e = (r as PromiseRejectedResult).reason;
      assert.ok(e instanceof TokenizerError && e.code === "overloaded", String(e));
    }
    assert.equal(p.stats().rejected, 2);
  });

  test("close rejects waiting jobs and later calls", async () => {
    const p = pool({ size: 1, maxQueue: 8, inlineMaxChars: 10 });
    await p.warm();
    const pending = [p.encodePrompt(mixedText(1, 2000, false)), p.encodePrompt(mixedText(2, 2000, false))];
    const settled = Promise.allSettled(pending);
    await p.close();
    for (const r of await settled) {
      assert.equal(r.status, "rejected");
      assert.equal(((r as PromiseRejectedResult).reason as TokenizerError).code, "closed");
    }
    await assert.rejects(
      p.encodePrompt("x"),
      (e: unknown) => e instanceof TokenizerError && e.code === "closed",
    );
    assert.equal(p.stats().workers, 0);
  });

  test("bad input is rejected before reaching a worker", async () => {
    const p = pool({ size: 1 });
    await assert.rejects(
      p.encodePrompt(5 as never),
      (e: unknown) => e instanceof TokenizerError && e.code === "bad_request",
    );
    await assert.rejects(
      p.encodeChat({ messages: [{ role: "user", content: [{ type: "image_url" }] }] }),
      (e: unknown) => e instanceof TokenizerError && e.code === "bad_request",
    );
    assert.equal(p.stats().workers, 0);
  });

  test("a crashed worker fails its job with a typed error, is counted, and is replaced", async () => {
    const registry = new Registry();
    const p = pool({ size: 1, inlineMaxChars: 10, metrics: registry, log: silentLogger() });
    await p.warm();
    const job = p.encodePrompt(mixedText(901, 3000, false));
    const settled = job.then(
      () => null,
      (e: unknown) => e,
    );
    // kill the worker under the in-flight job
    const slots = (p as unknown as { slots: Array<{ worker: { terminate(): Promise<number> } }> }).slots;
    await slots[0].worker.terminate();
    const err = await settled;
    assert.ok(err instanceof TokenizerError && err.code === "internal", String(err));
    assert.equal(p.stats().workerFailures, 1);
    // the next long encode runs inline while a replacement worker starts
    const text = mixedText(902, 500);
    assert.deepEqual(await p.encodePrompt(text), base.encodeRaw(text, true));
    assert.equal(p.stats().coldInline, 1);
    assert.equal(p.stats().workers, 1);
    await p.warm();
    const text2 = mixedText(903, 500);
    assert.deepEqual(await p.encodePrompt(text2), base.encodeRaw(text2, true));
    const metrics = await registry.getMetricsAsJSON();
    const value = (name: string, labels: Record<string, string>) =>
      metrics
        .find((m) => m.name === name)
        ?.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
    assert.equal(value("kvsync_tokenizer_worker_failures_total", { model: base.model }), 1);
    assert.equal(value("kvsync_tokenizer_encodes_total", { model: base.model, path: "worker" }), 2);
    assert.ok((value("kvsync_tokenizer_segments_total", { model: base.model, result: "miss" }) ?? 0) >= 2);
  });

  test("workers that cannot load the tokenizer are given up after 3 failures; encodes stay correct", async () => {
    // same tokenizer in this thread, but workers are pointed at a directory without tokenizer.json
    const broken = new HfTokenizer(base.model, {
      ...base.core,
      dir: join(tmpdir(), "kvsync-no-such-tokenizer"),
    });
    const p = new TokenizerPool(broken, { size: 1, inlineMaxChars: 10, log: silentLogger() });
    pools.push(p);
    for (let k = 1; k <= 3; k++) {
      const text = mixedText(950 + k, 300);
      assert.deepEqual(await p.encodePrompt(text), base.encodeRaw(text, true));
      await waitFor(`worker failure #${k}`, () => p.stats().workerFailures >= k, 20_000);
    }
    assert.equal(p.stats().workersDisabled, true);
    assert.equal(p.stats().workers, 0);
    const text = mixedText(960, 300);
    assert.deepEqual(await p.encodePrompt(text), base.encodeRaw(text, true));
    assert.equal(p.stats().workers, 0, "no more workers are started");
    await assert.rejects(p.warm(), (e: unknown) => e instanceof TokenizerError);
  });
});
