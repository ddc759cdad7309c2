/**
 * The mock engine's content-only page hashes (`--flavor sglang-2025`): a block's published hash
 * is the hash of its own tokens, so repeated content repeats the hash, while the cache still keys
 * blocks by their chained digest. Applied to the index (whose aliases keep every position of a
 * repeated hash), the prediction equals the engine's prefix hit for prompts made of repeated
 * pages.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { blockDigest, extendDigests, rootDigest } from "../../../src/engine/block-hash.ts";
import { type CacheRequest, KvCache } from "../../../src/engine/kv-cache.ts";
import { createIndex } from "../../../src/index/index.ts";
import type { BlockStored } from "../../../src/protocol/types.ts";

const BS = 2;
const root = rootDigest("content");
const ST = { streamId: "s", pod: "s", rank: null, model: "m" };
const NS = { model: "m", lora: null, blockSize: BS };
const contentRoot = rootDigest("page");
const contentHash = (t: ArrayLike<number>, s: number, n: number) =>
  `b${blockDigest(contentRoot, t, s, n, "")}`;
const mk = () =>
  new KvCache({ numGpuBlocks: 512, numCpuBlocks: 0, blockSize: BS, hashOf: (d) => `b${d}`, contentHash });

function req(tokens: number[]): CacheRequest {
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

test("repeated pages publish one hash; the parent names the previous page", () => {
  const c = mk();
  const r = req([5, 7, 5, 7, 9, 9]);
  assert.ok(c.allocate(r, 6, c.lookup(r, 2), 6));
  const [ev] = c.drainEvents() as BlockStored[];
  assert.equal(ev.blockHashes[0], ev.blockHashes[1], "pages [5,7] and [5,7] share their hash");
  assert.notEqual(ev.blockHashes[1], ev.blockHashes[2]);
  assert.equal(new Set(c.snapshot().map((b) => c.hashOf(b.digest))).size, 2);
  c.free(r);
  const more = req([5, 7, 5, 7, 9, 9, 1, 2, 3]);
  assert.ok(c.allocate(more, 9, c.lookup(more, 4), 9));
  const [ev2] = c.drainEvents() as BlockStored[];
  assert.equal(ev2.parentBlockHash, ev.blockHashes[2]);
});

/**
 * One conversation that grows turn by turn (each prompt extends the last), its pages drawn from
 * three contents so they repeat: every store's parent is then the latest position of its hash,
 * which is what the index assumes. Across unrelated prompts that share pages at other positions
 * the wire format itself is ambiguous (docs/engines.md), so no such property holds there.
 */
test("property: a growing conversation of repeated pages: the index's prediction == the engine's hit", () => {
  let hits = 0;
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.constantFrom(1, 2, 3), { minLength: 1, maxLength: 9 }), {
        minLength: 1,
        maxLength: 10,
      }),
      (turns) => {
        const c = mk();
        const idx = createIndex();
        const prompts: number[][] = [];
        for (const t of turns) prompts.push([...(prompts.at(-1) ?? []), ...t]);
        for (const p of prompts) {
          if (p.length < 2) continue;
          const r = req(p);
          const max = Math.floor((p.length - 1) / BS);
          const predicted = Math.min(idx.match(NS, p)[0]?.matchedBlocks ?? 0, max);
          const hit = c.lookup(r, max);
          assert.equal(predicted, hit.gpuBlocks.length, JSON.stringify(turns));
          hits += predicted;
          assert.ok(c.allocate(r, p.length, hit, p.length));
          c.free(r);
          idx.applyBatch(ST, { ts: 0, events: c.drainEvents(), dpRank: null });
        }
      },
    ),
    { seed: 1609, numRuns: 300 },
  );
  assert.ok(hits > 100, `predicted hit blocks ${hits}`);
});
