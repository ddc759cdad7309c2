/**
 * The mock engine's hybrid mode (src/engine/hybrid-cache.ts) against the index's group layer
 * (src/index/groups.ts): random prompts sharing prefixes, prefilled in chunks through a small
 * pool (so the window group frees blocks mid-request and both pools evict), every step's events
 * applied to the index. After each request the index equals the engine per group, and for a
 * random probe the engine's prefix hit (what it reports as cached_tokens) equals the index's
 * match.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { type Digest, extendDigests, rootDigest } from "../../../src/engine/block-hash.ts";
import { FULL_GROUP, HybridKvCache, SLIDING_GROUP } from "../../../src/engine/hybrid-cache.ts";
import type { CacheRequest } from "../../../src/engine/kv-cache.ts";
import { createIndex, type GroupedIndex } from "../../../src/index/index.ts";
import type { BlockStored } from "../../../src/protocol/types.ts";

const BS = 4;
const root = rootDigest("hybrid");
const ST = { streamId: "e", pod: "e", rank: null, model: "m" };
const NS = { model: "m", lora: null, blockSize: BS };
const hashOf = (d: Digest) => `b${d}`;

function mkReq(tokens: number[]): CacheRequest {
  const r: CacheRequest = {
    tokens,
    digests: [],
    blocks: [],
    numCachedBlocks: 0,
    loraId: null,
    loraName: null,
  };
  extendDigests(r.digests, root, tokens, BS, "");
  return r;
}

/** prompt i: a shared head of `head` blocks of family f, then its own blocks */
function promptOf(f: number, head: number, own: number, tail: number): number[] {
  const out: number[] = [];
  for (let j = 0; j < head * BS; j++) out.push(1000 * f + j);
  for (let j = 0; j < own * BS + tail; j++) out.push(50_000 + 97 * own + j * 7 + tail);
  return out;
}

/** lookup, prefill in chunks of `chunk` tokens, free; the index gets each step's events */
function run(c: HybridKvCache, idx: ReturnType<typeof createIndex>, tokens: number[], chunk: number): number {
  const r = mkReq(tokens);
  const hit = c.lookup(r, Math.floor((tokens.length - 1) / BS));
  let done = hit.gpuBlocks.length * BS;
  let first = true;
  while (done < tokens.length) {
    const next = Math.min(tokens.length, done + chunk);
    assert.ok(c.allocate(r, next, first ? hit : null, next), "allocation failed");
    first = false;
    done = next;
    idx.applyBatch(ST, { ts: 0, events: c.drainEvents(), dpRank: null });
  }
  c.free(r);
  idx.applyBatch(ST, { ts: 0, events: c.drainEvents(), dpRank: null });
  return hit.gpuBlocks.length;
}

test("hybrid events: both groups tagged as vLLM tags them; the window group frees out-of-window blocks", () => {
  const c = new HybridKvCache({
    numGpuBlocks: 64,
    numCpuBlocks: 0,
    blockSize: BS,
    hashOf,
    removals: "per-copy",
    window: 9,
  });
  const r = mkReq(promptOf(1, 6, 0, 1));
  assert.ok(c.allocate(r, 25, c.lookup(r, 6), 25));
  const evs = c.drainEvents() as BlockStored[];
  assert.deepEqual(
    evs.map((e) => [e.type, e.groupIdx, e.kvCacheSpecKind, e.kvCacheSpecSlidingWindow, e.blockHashes.length]),
    [
      ["BlockStored", SLIDING_GROUP, "sliding_window", 9, 6],
      ["BlockStored", FULL_GROUP, "full_attention", null, 6],
    ],
  );
  c.free(r);
  // 25 computed tokens, window 9: blocks 0..3 (tokens < 17) were freed right after the step
  const again = mkReq(promptOf(1, 6, 0, 1));
  assert.equal(c.lookup(again, 6).gpuBlocks.length, 6);
});

test("property: engine hit == index match, and index == engine truth per group", () => {
  let total = 0;
  let windowCut = 0;
  fc.assert(
    fc.property(
      fc.array(
        fc.record({ f: fc.nat(2), head: fc.integer({ min: 1, max: 10 }), own: fc.nat(6), tail: fc.nat(3) }),
        { minLength: 1, maxLength: 25 },
      ),
      fc.integer({ min: 2, max: 20 }),
      fc.constantFrom(4, 8, 12),
      (reqs, window, chunk) => {
        const c = new HybridKvCache({
          numGpuBlocks: 24,
          numCpuBlocks: 0,
          blockSize: BS,
          hashOf,
          removals: "per-copy",
          window,
        });
        const idx = createIndex();
        let hits = 0;
        for (const q of reqs) {
          const tokens = promptOf(q.f, q.head, q.own, q.tail);
          const probe = mkReq(tokens);
          const predicted = idx.match(NS, tokens)[0]?.matchedBlocks ?? 0;
          const engineHit = c.lookup(probe, Math.floor((tokens.length - 1) / BS)).gpuBlocks.length;
          assert.equal(predicted, engineHit, `window ${window}: ${JSON.stringify(q)}`);
          hits += engineHit;
          // the full-attention group alone would have matched more: the window decided
          const fullOnly = (idx as GroupedIndex).inner.match(NS, tokens)[0]?.matchedBlocks ?? 0;
          if (Math.min(fullOnly, Math.floor((tokens.length - 1) / BS)) > engineHit) windowCut++;
          run(c, idx, tokens, chunk);
          const g = idx as GroupedIndex;
          const full = new Set(c.snapshot().map((b) => hashOf(b.digest)));
          assert.deepEqual(new Set(g.streamBlocks("e").map((b) => b.hash)), full);
          const sliding = new Set(c.slidingSnapshot().map((b) => hashOf(b.digest)));
          assert.deepEqual(new Set(g.groupBlocks("e", SLIDING_GROUP)), sliding);
        }
        total += hits;
      },
    ),
    { seed: 1608, numRuns: 150 },
  );
  assert.ok(total > 500 && windowCut > 20, `hit blocks ${total}, hits the window cut ${windowCut}`);
});
