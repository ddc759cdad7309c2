/**
 * Duplicate physical copies end to end: a mock engine that emits vLLM's per-copy BlockRemoved
 * (`removedEvents: "per-copy"`), a real index service (ZeroMQ subscriber + admin HTTP), bursts of
 * concurrent requests sharing prefixes (two requests computing the same prefix in the same step
 * get two copies of its blocks) and a GPU cache small enough to evict. At quiescence the index's
 * `/admin/pods/<name>/blocks` equals the engine's `/debug/kv-cache`. Also the pairing the defaults
 * use: the engine's `last-copy` removals (one BlockRemoved per hash) with the index's `set` copies.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { startIndexService } from "../../../src/commands/index.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { complete, engineTruth, startTestEngine, type TestEngine, writeEngines } from "../events/engines.ts";

const BS = 16;

async function indexBlocks(url: string, pod: string): Promise<Array<{ hash: string; tiers: string[] }>> {
  const r = await fetch(`${url}/admin/pods/${pod}/blocks`);
  const b = (await r.json()) as { blocks: Array<{ hash: string; tiers: string[] }> };
  return b.blocks
    .map((x) => ({ hash: x.hash, tiers: [...x.tiers].sort() }))
    .sort((a, c) => (a.hash < c.hash ? -1 : a.hash > c.hash ? 1 : 0));
}

for (const [removedEvents, copies] of [
  ["per-copy", "count"],
  ["last-copy", "set"],
] as const) {
  test(`${removedEvents} BlockRemoved, index copies "${copies}", concurrent identical prefixes: index == engine cache at quiescence`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-copies-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const engine: TestEngine = await startTestEngine("pod-c", {
      hashSeed: "seed-c",
      numGpuBlocks: 48,
      removedEvents,
      seed: 7,
      speed: 100,
    });
    t.after(() => engine.running?.close());
    const file = join(dir, "engines.json");
    writeEngines(file, [engine]);
    const svc = await startIndexService({
      discovery: { engines: file, debounceMs: 10 },
      adminPort: 0,
      index: { copies },
      tokenizers: false,
      log: silentLogger(),
      subscriber: { replayTimeoutMs: 1000, tailCheckMs: 200, reconnectMs: 20, reconnectMaxMs: 200 },
    });
    t.after(() => svc.close());
    await waitFor("the subscriber to connect", () => svc.manager.status("pod-c")?.state === "live", {
      timeoutMs: 10_000,
      describe: () => JSON.stringify(svc.manager.status("pod-c")),
    });

    // each round: a new 4-block prefix requested 4 times at once (up to 4 copies of each block)
    // and 2 prompts on the previous round's prefix; 48 GPU blocks, so older rounds' copies are
    // evicted one by one (a copy removed while others remain) and then entirely
    const prefix = (round: number) => Array.from({ length: 4 * BS }, (_, i) => 1000 + round * 500 + i);
    let evictionsSeen = 0;
    for (let round = 0; round < 8; round++) {
      const prompts: number[][] = [];
      for (let k = 0; k < 4; k++) prompts.push(prefix(round));
      for (let k = 0; k < 2; k++) {
        const suffix = Array.from({ length: 2 * BS }, (_, i) => 20_000 + round * 97 + k * 41 + i);
        prompts.push([...prefix(Math.max(0, round - 1)), ...suffix]);
      }
      const rs = await Promise.all(prompts.map((p) => complete(engine, p, 2)));
      for (const r of rs) assert.equal(r.status, 200, JSON.stringify(r.body));
      await engine.running?.engine.quiesce();
      const doc = (await (await fetch(`${engine.url}/debug/kv-cache`)).json()) as {
        stats: { gpuEvictions: number };
      };
      evictionsSeen = doc.stats.gpuEvictions;
    }
    await engine.running?.engine.quiesce();
    const truth = await engineTruth(engine);
    let mine = await indexBlocks(svc.url, "pod-c");
    const deadline = Date.now() + 10_000;
    while (JSON.stringify(mine) !== JSON.stringify(truth) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      mine = await indexBlocks(svc.url, "pod-c");
    }
    assert.deepEqual(mine, truth, "index != engine /debug/kv-cache");
    const st = svc.index.stats();
    // the history really exercised duplicate copies and per-copy removals
    if (copies === "count")
      assert.ok((st.duplicateStores ?? 0) > 0, `no duplicate copies: ${JSON.stringify(st)}`);
    assert.ok(evictionsSeen > 0, "the engine never evicted");
  });
}
