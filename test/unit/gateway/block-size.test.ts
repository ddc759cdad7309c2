/**
 * Block sizes learned from the events: a pod that declares none still matches with its engine's
 * size, a declared size the events contradict is logged once and counted, and each candidate
 * is matched with its own size (pods of one model may run different sizes).
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import pino from "pino";
import { type RunningEngine, startEngine } from "../../../src/engine/start.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { parseMetrics } from "../../helpers/metrics.ts";
import { engineOptions, MODEL, podOf, startFleet } from "./fleet.ts";

/** 120 token ids: three full blocks of 32 can be reused (the engine always computes the last token). */
const PROMPT = Array.from({ length: 120 }, (_, i) => 1000 + i);

async function completion(url: string, prompt: number[]): Promise<{ cached: number; pod: string | null }> {
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
  });
  assert.equal(r.status, 200);
  const body = (await r.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } };
  return { cached: body.usage.prompt_tokens_details?.cached_tokens ?? 0, pod: r.headers.get("x-kvsync-pod") };
}

async function explain(adminUrl: string, prompt: number[]) {
  const r = await fetch(`${adminUrl}/admin/route/explain`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, token_ids: prompt }),
  });
  assert.equal(r.status, 200);
  return (await r.json()) as {
    blockSize: number;
    candidates: Array<{ pod: string; matchedTokens: number; matchedBlocks: number }>;
  };
}

describe("block sizes learned from the events", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it("a --block-size 32 engine listed without a block size: the index matches what the engine reports cached", async () => {
    const f = await startFleet(1, {}, { blockSize: 32 });
    cleanups.push(() => f.close());
    const first = await completion(f.gw.url, PROMPT);
    assert.equal(first.cached, 0);
    await f.engines[0]!.engine.quiesce();
    await waitFor("learned", () => f.gw.subscribers?.status("pod-0")?.blockSize === 32);
    const ex = await explain(f.gw.adminUrl!, PROMPT);
    const again = await completion(f.gw.url, PROMPT);
    assert.equal(again.cached, 96);
    assert.equal(ex.candidates[0]?.matchedTokens, 96);
    assert.equal(ex.blockSize, 32);
  });

  it("a declared size the events contradict: logged once, counted, shown in /admin/pods; matching uses the events' size", async () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
    const e = await startEngine(engineOptions({ blockSize: 32 }));
    cleanups.push(() => e.close());
    const f = await startFleet(0, { pods: [podOf("pod-x", e, { blockSize: 16 })], log });
    cleanups.push(() => f.close());
    await waitFor("live", () => f.gw.subscribers?.status("pod-x")?.state === "live");
    for (let i = 0; i < 3; i++)
      await completion(
        f.gw.url,
        PROMPT.map((t) => t + i * 500),
      );
    await e.engine.quiesce();
    await waitFor("mismatch seen", () => f.gw.subscribers?.status("pod-x")?.blockSizeMismatch === true);
    assert.equal(lines.filter((l) => l.event === "subscriber.block_size_mismatch").length, 1);
    const l = lines.find((x) => x.event === "subscriber.block_size_mismatch")!;
    assert.equal(l.declared, 16);
    assert.equal(l.events, 32);
    const m = parseMetrics(await f.gw.registry.metrics());
    // counted per batch that disagrees; the three requests' stores may share a batch under load
    assert.ok((m.get('kvsync_subscriber_block_size_mismatches_total{stream="pod-x"}') ?? 0) >= 1);
    const pods = (await (await fetch(`${f.gw.adminUrl}/admin/pods`)).json()) as Array<{
      blockSize: number;
      declaredBlockSize: number;
      warnings: Array<{ code: string }>;
    }>;
    assert.equal(pods[0]?.blockSize, 32);
    assert.equal(pods[0]?.declaredBlockSize, 16);
    assert.ok(pods[0]?.warnings.some((w) => w.code === "block_size_mismatch"));
    const again = await completion(f.gw.url, PROMPT);
    assert.equal(again.cached, 96);
    assert.equal((await explain(f.gw.adminUrl!, PROMPT)).candidates[0]?.matchedTokens, 96);
  });

  it("pods of one model with different block sizes: each candidate matched with its own", async () => {
    const engines: RunningEngine[] = [];
    for (const bs of [16, 32]) engines.push(await startEngine(engineOptions({ blockSize: bs })));
    cleanups.push(async () => {
      await Promise.all(engines.map((x) => x.close()));
    });
    const f = await startFleet(0, { pods: [podOf("bs16", engines[0]!), podOf("bs32", engines[1]!)] });
    cleanups.push(() => f.close());
    await waitFor("live", () => ["bs16", "bs32"].every((p) => f.gw.subscribers?.status(p)?.state === "live"));
    // warm both engines directly with the same prompt
    for (const e of engines) {
      const r = await fetch(`${e.httpUrl}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 2 }),
      });
      assert.equal(r.status, 200);
      await e.engine.quiesce();
    }
    await waitFor(
      "both learned",
      () =>
        f.gw.subscribers?.status("bs16")?.blockSize === 16 &&
        f.gw.subscribers?.status("bs32")?.blockSize === 32,
    );
    await waitFor("both matched", async () => {
      const ex = await explain(f.gw.adminUrl!, PROMPT);
      const by = new Map(ex.candidates.map((c) => [c.pod, c.matchedTokens]));
      return by.get("bs16") === 112 && by.get("bs32") === 96;
    });
  });
});
