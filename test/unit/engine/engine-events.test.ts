/**
 * The engine's KV events are the truth: an independent subscriber rebuilding the cache from
 * them equals /debug/kv-cache at quiescence, for random workloads (property test), with
 * eviction, the CPU tier, LoRA, resets and several DP ranks; plus replay, drops and pauses.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import type { RunningEngine } from "../../../src/engine/start.ts";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { LOCAL, open, start, startLocal } from "./local-engine.ts";
import { getJson, MirrorSubscriber, normalize, postJson } from "./mirror.ts";

function mirrors(e: RunningEngine): MirrorSubscriber[] {
  return e.eventsEndpoints.map((ep, r) => {
    const m = new MirrorSubscriber(ep!, e.replayEndpoints[r]).start();
    open.push(m);
    return m;
  });
}

async function truth(e: RunningEngine, rank: number) {
  const j = await getJson<{ blocks: Array<{ hash: string; tiers: string[] }> }>(
    `${e.httpUrl}/debug/kv-cache?rank=${rank}`,
  );
  return normalize(j.blocks);
}

async function assertMirrorsEqualTruth(e: RunningEngine, ms: MirrorSubscriber[]): Promise<void> {
  await e.engine.quiesce();
  for (let r = 0; r < ms.length; r++) {
    await ms[r].catchUp();
    assert.deepEqual(ms[r].missingSeqs, [], `rank ${r}: seqs lost`);
    assert.equal(
      ms[r].next,
      e.engine.ranks[r].publisher!.snapshot().nextSeq,
      `rank ${r}: not all batches applied`,
    );
    assert.deepEqual(
      ms[r].snapshot(),
      await truth(e, r),
      `rank ${r}: rebuilt cache differs from the engine's`,
    );
  }
}

const complete = (e: RunningEngine, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
  postJson(`${e.httpUrl}/v1/completions`, body, headers);

// ---- property test ----

interface Op {
  kind: "req" | "reset";
  prefix: number;
  suffixLen: number;
  suffixSeed: number;
  maxTokens: number;
  lora: number;
  rank: number;
}

const opArb = fc.record<Op>({
  kind: fc.constantFrom<"req" | "reset">("req", "req", "req", "req", "req", "req", "reset"),
  prefix: fc.integer({ min: 0, max: 3 }),
  suffixLen: fc.integer({ min: 0, max: 20 }),
  suffixSeed: fc.integer({ min: 0, max: 5 }),
  maxTokens: fc.integer({ min: 1, max: 9 }),
  lora: fc.integer({ min: 0, max: 2 }),
  rank: fc.integer({ min: 0, max: 1 }),
});

const coverage = { gpuEvictions: 0, cpuEvictions: 0, cpuHits: 0, resets: 0, loraBlocks: 0, preemptions: 0 };

const PREFIXES = [0, 1, 2, 3].map((p) => Array.from({ length: 6 + p * 5 }, (_, i) => 1000 + p * 100 + i));

test("property: the cache rebuilt from events equals /debug/kv-cache (eviction, CPU tier, LoRA, reset, DP)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        cpu: fc.constantFrom(0, 6, 40),
        dp: fc.constantFrom(1, 2),
        hashFormat: fc.constantFrom<"int" | "bytes">("int", "bytes"),
        eventFormat: fc.constantFrom<"map" | "array">("map", "array"),
        waves: fc.array(fc.array(opArb, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 6 }),
      }),
      async (cfg) => {
        const e = await startLocal({
          blockSize: 4,
          numGpuBlocks: 16,
          numCpuBlocks: cfg.cpu,
          dataParallelSize: cfg.dp,
          hashFormat: cfg.hashFormat,
          eventFormat: cfg.eventFormat,
          loraModules: ["sql", "chat"],
          maxNumSeqs: 3,
          maxNumBatchedTokens: 16,
          maxModelLen: 64,
        });
        const ms = mirrors(e);
        try {
          for (const wave of cfg.waves) {
            await Promise.all(
              wave.map(async (op) => {
                const rank = String(op.rank % cfg.dp);
                if (op.kind === "reset") {
                  const r = await postJson(`${e.httpUrl}/reset_prefix_cache?rank=${rank}`, {});
                  assert.ok(r.status === 200 || r.status === 409, `reset: ${r.status}`);
                  if (r.status === 200) coverage.resets++;
                  return;
                }
                const suffix = Array.from({ length: op.suffixLen }, (_, i) => 3000 + op.suffixSeed * 50 + i);
                const r = await complete(
                  e,
                  {
                    model: ["Qwen/Qwen3-0.6B", "sql", "chat"][op.lora],
                    prompt: [...PREFIXES[op.prefix], ...suffix],
                    max_tokens: op.maxTokens,
                  },
                  { "X-data-parallel-rank": rank },
                );
                assert.equal(r.status, 200, JSON.stringify(r.body));
                if (op.lora > 0) coverage.loraBlocks++;
              }),
            );
          }
          await assertMirrorsEqualTruth(e, ms);
          for (const m of ms) assert.equal(m.decodeErrors, 0);
          for (const r of e.engine.ranks) {
            const st = r.cache.stats();
            coverage.gpuEvictions += st.gpuEvictions;
            coverage.cpuEvictions += st.cpuEvictions;
            coverage.preemptions += r.scheduler.preemptions;
          }
          const text = await (await fetch(`${e.httpUrl}/metrics`)).text();
          const m = /vllm:external_prefix_cache_hits_total\{[^}]*\} (\d+)/.exec(text);
          coverage.cpuHits += m === null ? 0 : Number(m[1]);
          if (cfg.dp === 2)
            assert.deepEqual(
              [...ms[1].dpRanks].filter((x) => x !== 1),
              [],
            );
        } finally {
          for (const m of ms) await m.close();
          await e.close();
        }
      },
    ),
    {
      numRuns: 25,
      // one run that surely evicts, hits the CPU tier, uses an adapter and resets
      examples: [
        [
          {
            cpu: 40,
            dp: 1,
            hashFormat: "int",
            eventFormat: "map",
            waves: [
              [{ kind: "req", prefix: 3, suffixLen: 20, suffixSeed: 0, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "req", prefix: 2, suffixLen: 20, suffixSeed: 1, maxTokens: 4, lora: 1, rank: 0 }],
              [{ kind: "req", prefix: 1, suffixLen: 20, suffixSeed: 2, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "req", prefix: 3, suffixLen: 20, suffixSeed: 0, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "reset", prefix: 0, suffixLen: 0, suffixSeed: 0, maxTokens: 1, lora: 0, rank: 0 }],
            ],
          },
        ],
        [
          {
            cpu: 6,
            dp: 1,
            hashFormat: "int",
            eventFormat: "map",
            waves: [
              [{ kind: "req", prefix: 3, suffixLen: 20, suffixSeed: 0, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "req", prefix: 2, suffixLen: 20, suffixSeed: 1, maxTokens: 4, lora: 1, rank: 0 }],
              [{ kind: "req", prefix: 1, suffixLen: 20, suffixSeed: 2, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "req", prefix: 3, suffixLen: 20, suffixSeed: 0, maxTokens: 4, lora: 0, rank: 0 }],
              [{ kind: "reset", prefix: 0, suffixLen: 0, suffixSeed: 0, maxTokens: 1, lora: 0, rank: 0 }],
            ],
          },
        ],
        [
          {
            // found by a random run: the same prompt computed by two requests at once (two copies
            // of its blocks, a BlockStored each), then one copy evicted (its own BlockRemoved)
            cpu: 0,
            dp: 1,
            hashFormat: "int",
            eventFormat: "map",
            waves: [
              [
                { kind: "req", prefix: 0, suffixLen: 10, suffixSeed: 0, maxTokens: 6, lora: 0, rank: 0 },
                { kind: "req", prefix: 2, suffixLen: 0, suffixSeed: 0, maxTokens: 1, lora: 0, rank: 0 },
                { kind: "req", prefix: 2, suffixLen: 0, suffixSeed: 0, maxTokens: 6, lora: 0, rank: 0 },
                { kind: "req", prefix: 0, suffixLen: 3, suffixSeed: 0, maxTokens: 5, lora: 1, rank: 0 },
              ],
            ],
          },
        ],
      ],
    },
  );
  // the random workloads did exercise what they claim to
  for (const [k, v] of Object.entries(coverage))
    if (k !== "preemptions") assert.ok(v > 0, `no ${k} in any run`);
});

// ---- replay, drops, pause ----

async function fillBlocks(e: RunningEngine, n: number, base: number, headers: Record<string, string> = {}) {
  for (let i = 0; i < n; i++) {
    const r = await complete(
      e,
      { prompt: Array.from({ length: 9 }, (_, k) => base + i * 10 + k), max_tokens: 1 },
      headers,
    );
    assert.equal(r.status, 200);
  }
}

test("replay answers every buffered batch >= seq then the end marker (map era: topic frame)", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 64, replayBufferSteps: 4, topic: "kv" });
  const [m] = mirrors(e);
  await fillBlocks(e, 6, 5000);
  await e.engine.quiesce();
  const nextSeq = e.engine.ranks[0].publisher!.snapshot().nextSeq;
  assert.equal(nextSeq, 6, "one batch per request (each stores 2 blocks in one step)");
  const all = await m.replay(0);
  // buffer of 4: starts at the oldest kept batch
  assert.deepEqual(
    all.map((x) => x.seq),
    [2, 3, 4, 5, null],
  );
  for (const x of all.slice(0, -1)) {
    assert.equal(x.frames, 4);
    assert.equal(x.topic, "kv");
    const b = decodeBatch(x.payload).batch;
    assert.equal(b.events[0].type, "BlockStored");
  }
  const end = all.at(-1)!;
  assert.equal(end.topic, "");
  assert.equal(end.payload.length, 0);
  const tail = await m.replay(4);
  assert.deepEqual(
    tail.map((x) => x.seq),
    [4, 5, null],
  );
  const none = await m.replay(99);
  assert.deepEqual(
    none.map((x) => x.seq),
    [null],
  );
  await waitFor("a live message with topic kv", () => m.topics.has("kv"));
});

test("array era: replay answers in the 3-frame layout", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 64, eventFormat: "array" });
  const [m] = mirrors(e);
  await fillBlocks(e, 2, 6000);
  await e.engine.quiesce();
  const all = await m.replay(0);
  assert.deepEqual(
    all.map((x) => [x.seq, x.frames, x.topic]),
    [
      [0, 3, null],
      [1, 3, null],
      [null, 3, null],
    ],
  );
});

test("drop-event-rate leaves seq gaps that replay fills; fail-event-rate gaps it cannot", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 256, dropEventRate: 0.5, seed: 7 });
  const [m] = mirrors(e);
  await fillBlocks(e, 30, 7000);
  await e.engine.quiesce();
  const st = e.engine.ranks[0].publisher!.snapshot();
  assert.equal(st.nextSeq, 30);
  assert.ok(st.dropped >= 5 && st.dropped <= 25, `dropped ${st.dropped}`);
  await waitFor("the last sent batch to arrive live", () => m.liveSeqs.includes(st.lastSentSeq));
  const live = new Set(m.liveSeqs);
  const gaps = Array.from({ length: 30 }, (_, i) => i).filter((s) => !live.has(s));
  assert.ok(gaps.length >= st.dropped, `live seqs show the gaps (${gaps.length} missing)`);
  await assertMirrorsEqualTruth(e, [m]);

  const l = await start({ blockSize: 4, numGpuBlocks: 256, failEventRate: 0.3, seed: 3 });
  const [ml] = mirrors(l);
  await fillBlocks(l, 30, 7000);
  await l.engine.quiesce();
  await ml.catchUp();
  const lst = l.engine.ranks[0].publisher!.snapshot();
  assert.ok(lst.failed > 0);
  const replayed = await ml.replay(0);
  assert.equal(replayed.length - 1, 30 - lst.failed, "failed batches are not in the replay buffer");
  assert.ok(
    ml.missingSeqs.length >= lst.failed - 1,
    `missing ${ml.missingSeqs.length}, failed ${lst.failed}`,
  );
});

test("lose-event-rate loses batches without a trace: contiguous seqs, replay agrees, the engine's cache differs", async () => {
  const l = await start({ blockSize: 4, numGpuBlocks: 256, loseEventRate: 0.3, seed: 3 });
  const [m] = mirrors(l);
  await fillBlocks(l, 30, 7000);
  await l.engine.quiesce();
  const st = l.engine.ranks[0].publisher!.snapshot();
  assert.ok(st.lost >= 3 && st.lost <= 20, `lost ${st.lost}`);
  assert.equal(st.nextSeq, 30 - st.lost, "a lost batch gets no seq");
  await m.catchUp();
  assert.deepEqual(m.missingSeqs, [], "no seq is missing");
  assert.equal(m.next, st.nextSeq, "every published batch was applied");
  const replayed = await m.replay(0);
  assert.equal(replayed.length - 1, st.nextSeq, "the replay buffer holds every published batch, no more");
  // what the engine holds is not what its events say
  const held = (await truth(l, 0)).length;
  const mirrored = m.snapshot().length;
  assert.ok(held > mirrored, `engine holds ${held} blocks, its events tell of ${mirrored}`);
});

test("pause/resume: nothing is sent while paused; the buffered batches replay afterwards", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 256 });
  const [m] = mirrors(e);
  // wait until the subscriber is live
  let base = 8000;
  while (m.liveSeqs.length === 0) {
    await fillBlocks(e, 1, base);
    base += 10;
    await e.engine.quiesce();
    await new Promise((r) => setImmediate(r));
  }
  // every message sent so far has arrived (or was lost before the subscription was up)
  await waitFor("the warm-up messages to arrive", () =>
    m.liveSeqs.includes(e.engine.ranks[0].publisher!.snapshot().lastSentSeq),
  );
  const before = m.liveSeqs.length;
  assert.equal((await postJson(`${e.httpUrl}/admin/events/pause`, {})).status, 200);
  await fillBlocks(e, 5, 9000);
  await e.engine.quiesce();
  const st = e.engine.ranks[0].publisher!.snapshot();
  assert.equal(st.paused, true);
  assert.equal(st.pausedBatches, 5);
  assert.equal(m.liveSeqs.length, before, "no live message while paused");
  assert.equal((await postJson(`${e.httpUrl}/admin/events/resume`, {})).status, 200);
  await fillBlocks(e, 1, 9500);
  await waitFor("the subscriber to fill the paused gap by replay", () => m.next === st.nextSeq + 1);
  assert.deepEqual(m.missingSeqs, []);
  await assertMirrorsEqualTruth(e, [m]);
});

test("PUB connect mode (no wildcard): the engine connects to a bound SUB", async () => {
  const { mirror, endpoint } = await MirrorSubscriber.bound(LOCAL);
  open.push(mirror);
  const e = await start({ blockSize: 4, numGpuBlocks: 256, eventsEndpoint: endpoint });
  assert.equal(e.eventsEndpoint, endpoint);
  let base = 10_000;
  // connect mode may lose the first messages (slow joiner); a steady stream arrives
  for (let i = 0; i < 200 && mirror.liveSeqs.length < 3; i++) {
    await fillBlocks(e, 1, base);
    base += 10;
    await e.engine.quiesce();
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.ok(mirror.liveSeqs.length >= 3, "live messages reached the bound SUB");
  const ls = mirror.liveSeqs;
  for (let i = 1; i < ls.length; i++) assert.equal(ls[i], ls[i - 1] + 1, "in-order seqs once connected");
});

test("data parallel: ranks have their own caches, events and dp_rank; the header routes", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 64, dataParallelSize: 3, hashSeed: "42" });
  assert.equal(new Set(e.eventsEndpoints).size, 3);
  const ms = mirrors(e);
  const prompt = Array.from({ length: 13 }, (_, i) => 200 + i);
  const r1 = await complete(e, { prompt, max_tokens: 2 }, { "X-data-parallel-rank": "2" });
  assert.equal(r1.status, 200);
  const r2 = await complete(e, { prompt, max_tokens: 2 }, { "X-data-parallel-rank": "2" });
  assert.equal(
    (r2.body.usage as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details
      .cached_tokens,
    12,
  );
  const r3 = await complete(e, { prompt, max_tokens: 2 }, { "X-data-parallel-rank": "0" });
  assert.equal(
    (r3.body.usage as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details
      .cached_tokens,
    0,
  );
  await assertMirrorsEqualTruth(e, ms);
  assert.equal((await truth(e, 1)).length, 0);
  assert.equal((await truth(e, 2)).length, 3);
  // same seed, same tokens: same hashes on every rank
  assert.deepEqual(await truth(e, 0), await truth(e, 2));
  assert.deepEqual([...ms[2].dpRanks], [2]);
  const bad = await complete(e, { prompt, max_tokens: 1 }, { "X-data-parallel-rank": "3" });
  assert.equal(bad.status, 400);
  const noRank = await fetch(`${e.httpUrl}/debug/kv-cache`);
  assert.equal(noRank.status, 400);
  // without a header: least-loaded (ties round-robin) spreads requests over the ranks
  await Promise.all(
    Array.from({ length: 6 }, (_, i) => complete(e, { prompt: [5000 + i, 1, 2, 3, 4], max_tokens: 3 })),
  );
  await e.engine.quiesce();
  const used = e.engine.ranks.filter((r) => r.scheduler.steps > 0).length;
  assert.equal(used, 3);
});

test("eviction: a full cache evicts the least recently used prefix, seen in events and /debug/kv-cache", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 6, hashSeed: "1" });
  const [m] = mirrors(e);
  const p = (base: number) => Array.from({ length: 9 }, (_, i) => base + i);
  const hashesAfter = async (prompt: number[]) => {
    const before = new Set((await truth(e, 0)).map((b) => b.hash));
    assert.equal((await complete(e, { prompt, max_tokens: 1 })).status, 200);
    return (await truth(e, 0)).map((b) => b.hash).filter((h) => !before.has(h));
  };
  const a = await hashesAfter(p(100));
  const b = await hashesAfter(p(200));
  assert.equal(a.length, 2);
  assert.equal(b.length, 2);
  // touch a again: b becomes least recently used
  const again = await complete(e, { prompt: [...p(100), 1], max_tokens: 1 });
  assert.equal(
    (again.body.usage as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details
      .cached_tokens,
    8,
  );
  // c needs 3 blocks: the free queue's head holds b's blocks (least recently used)
  const c = await hashesAfter(p(300));
  const now = new Set((await truth(e, 0)).map((x) => x.hash));
  assert.ok(!b.some((h) => now.has(h)), "b (LRU) was evicted");
  assert.ok(
    a.every((h) => now.has(h)),
    "a (recently used) survived",
  );
  assert.ok(c.every((h) => now.has(h)));
  // d evicts a next
  await hashesAfter(p(400));
  const later = new Set((await truth(e, 0)).map((x) => x.hash));
  assert.ok(!a.some((h) => later.has(h)), "then a was evicted");
  assert.ok(
    c.every((h) => later.has(h)),
    "c (more recent) survived",
  );
  await assertMirrorsEqualTruth(e, [m]);
});

test("reset_prefix_cache emits AllBlocksCleared and clears both tiers", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 8, numCpuBlocks: 8 });
  const [m] = mirrors(e);
  await fillBlocks(e, 3, 100);
  await e.engine.quiesce();
  const t = await truth(e, 0);
  assert.ok(t.some((b) => b.tiers.includes("CPU")));
  assert.equal((await postJson(`${e.httpUrl}/reset_prefix_cache`, {})).status, 200);
  assert.deepEqual(await truth(e, 0), []);
  await assertMirrorsEqualTruth(e, [m]);
  const replayed = await m.replay(0);
  const last = replayed.at(-2)!;
  assert.deepEqual(decodeBatch(last.payload).batch.events, [{ type: "AllBlocksCleared" }]);
});

test("a tight cache preempts and recomputes, every request still completes with exact token counts", async () => {
  const e = await start({ blockSize: 4, numGpuBlocks: 12, maxNumSeqs: 4, maxNumBatchedTokens: 64 });
  const [m] = mirrors(e);
  const results = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      complete(e, { prompt: Array.from({ length: 10 }, (_, k) => 100 * (i + 1) + k), max_tokens: 14 }),
    ),
  );
  for (const r of results) {
    assert.equal(r.status, 200);
    const usage = r.body.usage as { completion_tokens: number; prompt_tokens: number };
    assert.equal(usage.completion_tokens, 14);
    assert.equal(usage.prompt_tokens, 10);
  }
  assert.ok(e.engine.ranks[0].scheduler.preemptions > 0, "the workload needed preemption");
  const metrics = await (await fetch(`${e.httpUrl}/metrics`)).text();
  assert.match(metrics, /^vllm:num_preemptions_total\{[^}]*\} [1-9]/m);
  await assertMirrorsEqualTruth(e, [m]);
});

/** n consecutive free TCP ports on 127.0.0.1 (probed by binding them). */
async function consecutivePorts(n: number): Promise<number> {
  const { createServer } = await import("node:net");
  const tryBind = (port: number) =>
    new Promise<import("node:net").Server | null>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(null));
      s.listen(port, "127.0.0.1", () => resolve(s));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    const held: import("node:net").Server[] = [];
    let ok = true;
    for (let i = 0; i < n && ok; i++) {
      const s = await tryBind(base + i);
      if (s === null) ok = false;
      else held.push(s);
    }
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    if (ok) return base;
  }
  throw new Error("no consecutive free ports found");
}

test("data parallel with fixed ports: rank r publishes and replays on port + r (vLLM's offsets)", async () => {
  const ev = await consecutivePorts(2);
  const rp = await consecutivePorts(2);
  const e = await start({
    blockSize: 4,
    dataParallelSize: 2,
    eventsEndpoint: `tcp://*:${ev}`,
    replayEndpoint: `tcp://*:${rp}`,
  });
  assert.deepEqual(
    e.eventsEndpoints.map((x) => Number(x!.split(":").at(-1))),
    [ev, ev + 1],
  );
  assert.deepEqual(
    e.replayEndpoints.map((x) => Number(x!.split(":").at(-1))),
    [rp, rp + 1],
  );
  const m1 = new MirrorSubscriber(`tcp://127.0.0.1:${ev + 1}`, `tcp://127.0.0.1:${rp + 1}`).start();
  open.push(m1);
  const r = await complete(
    e,
    { prompt: [1, 2, 3, 4, 5, 6, 7, 8, 9], max_tokens: 1 },
    { "X-data-parallel-rank": "1" },
  );
  assert.equal(r.status, 200);
  await e.engine.quiesce();
  await m1.catchUp();
  assert.deepEqual([...m1.dpRanks], [1]);
  assert.deepEqual(m1.snapshot(), await truth(e, 1));
  assert.equal(m1.blocks.size, 2);
});
