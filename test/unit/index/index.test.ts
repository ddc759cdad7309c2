import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createIndex,
  type IndexBackend,
  MAX_EXTRA_COPIES,
  type PrefixIndex,
} from "../../../src/index/index.ts";
import type { BlockClaim, NamespaceRef, StreamMatch } from "../../../src/index/types.ts";
import type { KvEvent } from "../../../src/protocol/types.ts";
import { seededRandom } from "../../../src/util/rng.ts";
import { batch, cleared, hk, removed, stored, stream, toks } from "./helpers.ts";

const NS: NamespaceRef = { model: "m", lora: null, blockSize: 4 };
const A = stream("a");
const B = stream("b");

function claims(ix: PrefixIndex, id: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const c of ix.streamBlocks(id) as BlockClaim[]) out[c.hash] = c.tiers.join(",");
  return out;
}

function matched(ix: PrefixIndex, tokens: number[], ns = NS): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of ix.match(ns, tokens)) out[m.streamId] = m.matchedBlocks;
  return out;
}

function one(ix: PrefixIndex, tokens: number[], id: string, ns = NS): StreamMatch | undefined {
  return ix.match(ns, tokens).find((m) => m.streamId === id);
}

for (const backend of ["sync", "reference"] as IndexBackend[]) {
  const mk = (o: Parameters<typeof createIndex>[0] = {}) => createIndex({ backend, ...o });
  const apply = (ix: PrefixIndex, s = A, ...evs: KvEvent[]) => ix.applyBatch(s, batch(...evs));

  describe(`index (${backend})`, () => {
    test("root chain matches leading full blocks; stops at the first missing block", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2), hk(3)], null, toks([1, 2, 3])));
      assert.deepEqual(matched(ix, toks([1, 2, 3, 9])), { a: 3 });
      assert.deepEqual(matched(ix, toks([1, 2, 7])), { a: 2 });
      assert.deepEqual(matched(ix, toks([2, 2, 3])), {});
      // trailing partial block of the prompt is ignored
      assert.deepEqual(matched(ix, [...toks([1, 2]), 1, 2]), { a: 2 });
      // continuation through a known parent in a later event
      apply(ix, A, stored([hk(4)], hk(3), toks([4])));
      assert.deepEqual(matched(ix, toks([1, 2, 3, 4])), { a: 4 });
      const m = one(ix, toks([1, 2, 3, 4]), "a")!;
      assert.deepEqual(m.tiers, { GPU: 4, CPU: 0, STORAGE: 0 });
      assert.equal(m.pod, "a");
      assert.equal(m.rank, null);
    });

    test("a hole in a stream's chain stops its match there", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2), hk(3), hk(4)], null, toks([1, 2, 3, 4])));
      apply(ix, A, removed([hk(3)]));
      assert.deepEqual(matched(ix, toks([1, 2, 3, 4])), { a: 2 });
    });

    test("long prompts: holes at and around match-chunk boundaries (16 blocks)", () => {
      const ix = mk();
      const ids = Array.from({ length: 50 }, (_, i) => i + 1);
      for (const [k, hole] of [15, 16, 17, 32, 49, 50].entries()) {
        const s = stream(`h${hole}`);
        apply(
          ix,
          s,
          stored(
            ids.map((i) => hk(1000 * k + i)),
            null,
            toks(ids),
          ),
        );
        if (hole < 50) apply(ix, s, removed([hk(1000 * k + ids[hole])]));
      }
      assert.deepEqual(matched(ix, toks(ids)), { h15: 15, h16: 16, h17: 17, h32: 32, h49: 49, h50: 50 });
      assert.deepEqual(matched(ix, toks(ids.slice(0, 33))), {
        h15: 15,
        h16: 16,
        h17: 17,
        h32: 32,
        h49: 33,
        h50: 33,
      });
    });

    test("two engine hashes of one stream on the same block: tiers are their union", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, A, stored([hk(11), hk(12)], null, toks([1, 2]), { medium: "CPU" }));
      apply(ix, A, stored([hk(13)], hk(12), toks([3]), { medium: "CPU" }));
      assert.deepEqual(one(ix, toks([1, 2, 3]), "a"), {
        streamId: "a",
        pod: "a",
        rank: null,
        matchedBlocks: 3,
        tiers: { GPU: 2, CPU: 3, STORAGE: 0 },
      });
      apply(ix, A, removed([hk(12)], "CPU"));
      assert.deepEqual(one(ix, toks([1, 2, 3]), "a")!.tiers, { GPU: 2, CPU: 1, STORAGE: 0 });
      // block 1 is still held (GPU, via hk(2)) and block 2 (CPU, via hk(13)): any-tier run is 3
      assert.equal(one(ix, toks([1, 2, 3]), "a")!.matchedBlocks, 3);
    });

    test("cross-stream isolation: one stream's BlockRemoved leaves the other's claim", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, B, stored([hk(101), hk(102)], null, toks([1, 2])));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 2, b: 2 });
      apply(ix, A, removed([hk(2)]));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 1, b: 2 });
      // B removing a hash only A holds is an unknown no-op for B
      const before = ix.stats().unknownRemovals ?? 0;
      apply(ix, B, removed([hk(1)]));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 1, b: 2 });
      assert.equal(ix.stats().unknownRemovals, before + 1);
      // same engine hash on two streams are distinct claims
      apply(ix, B, stored([hk(1)], null, toks([5])));
      apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), {});
      assert.deepEqual(Object.keys(claims(ix, "b")).sort(), [hk(1), hk(101), hk(102)].sort());
    });

    test("unknown parent: kept for removal, never matched, nor its descendants", () => {
      const ix = mk();
      apply(ix, A, stored([hk(10), hk(11)], hk(999), toks([1, 2])));
      apply(ix, A, stored([hk(12)], hk(11), toks([3])));
      assert.deepEqual(matched(ix, toks([1, 2, 3])), {});
      assert.deepEqual(claims(ix, "a"), { [hk(10)]: "GPU", [hk(11)]: "GPU", [hk(12)]: "GPU" });
      assert.equal(ix.stats().orphanStores, 1);
      // the same tokens stored as a root by another stream do match, and orphans don't interfere
      apply(ix, B, stored([hk(20)], null, toks([1])));
      assert.deepEqual(matched(ix, toks([1, 2, 3])), { b: 1 });
      apply(ix, A, removed([hk(10), hk(11), hk(12)]));
      assert.deepEqual(claims(ix, "a"), {});
      assert.equal(ix.stats().entries, 1);
    });

    test("a known parent held only as an orphan keeps the child unmatched; re-store as root heals it", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1)], hk(999), toks([1])));
      apply(ix, A, stored([hk(2)], hk(1), toks([2])));
      assert.deepEqual(matched(ix, toks([1, 2])), {});
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 2 });
      assert.equal(ix.stats().entries, 2);
    });

    test("tokenless offload store adds a tier to a known block; unknown is kept for removal only", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, A, stored([hk(1), hk(2)], null, [], { medium: "CPU" }));
      apply(ix, A, stored([hk(1)], null, [], { medium: "STORAGE" }));
      assert.deepEqual(one(ix, toks([1, 2]), "a")!.tiers, { GPU: 2, CPU: 2, STORAGE: 1 });
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "GPU,CPU,STORAGE", [hk(2)]: "GPU,CPU" });
      apply(ix, A, stored([hk(50)], null, [], { medium: "CPU" }));
      assert.deepEqual(claims(ix, "a")[hk(50)], "CPU");
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 2 });
      apply(ix, A, removed([hk(50)], "CPU"));
      assert.equal(claims(ix, "a")[hk(50)], undefined);
      // an unknown medium string maps to STORAGE
      apply(ix, A, stored([hk(2)], null, [], { medium: "FS" }));
      assert.equal(claims(ix, "a")[hk(2)], "GPU,CPU,STORAGE");
    });

    test("BlockRemoved removes only its medium's tier; the claim goes with the last tier", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, A, stored([hk(1), hk(2)], null, [], { medium: "CPU" }));
      apply(ix, A, removed([hk(1), hk(2)], null)); // null medium = GPU
      assert.deepEqual(one(ix, toks([1, 2]), "a")!.tiers, { GPU: 0, CPU: 2, STORAGE: 0 });
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 2 });
      // removing a tier the block is not on is an unknown no-op
      apply(ix, A, removed([hk(1)], "STORAGE"));
      assert.equal(ix.stats().unknownRemovals, 1);
      apply(ix, A, removed([hk(1)], "CPU"));
      assert.deepEqual(matched(ix, toks([1, 2])), {});
      assert.deepEqual(claims(ix, "a"), { [hk(2)]: "CPU" });
      // per-tier counts are leading runs
      apply(ix, B, stored([hk(1), hk(2), hk(3)], null, toks([1, 2, 3]), { medium: "CPU" }));
      apply(ix, B, stored([hk(2), hk(3)], null, [], { medium: "GPU" }));
      assert.deepEqual(one(ix, toks([1, 2, 3]), "b")!.tiers, { GPU: 0, CPU: 3, STORAGE: 0 });
      // a GPU hole after the first block ends the GPU run there, not the match
      apply(ix, B, removed([hk(3)], "CPU"));
      apply(ix, B, stored([hk(1)], null, [], { medium: "GPU" }));
      apply(ix, B, removed([hk(2)], "GPU"));
      assert.deepEqual(one(ix, toks([1, 2, 3]), "b")!.tiers, { GPU: 1, CPU: 2, STORAGE: 0 });
      assert.equal(one(ix, toks([1, 2, 3]), "b")!.matchedBlocks, 3);
    });

    test("duplicate copies (vLLM): the claim goes with the last copy's BlockRemoved", () => {
      const ix = mk({ copies: "count" });
      const t = toks([1, 2]);
      // two requests computed the same two blocks concurrently: a BlockStored per copy
      apply(ix, A, stored([hk(1), hk(2)], null, t));
      apply(ix, A, stored([hk(1), hk(2)], null, t));
      apply(ix, B, stored([hk(11), hk(12)], null, t));
      assert.equal(ix.stats().duplicateStores, 2);
      assert.equal(ix.stats().entries, 4);
      // one copy of each evicted: both still held
      apply(ix, A, removed([hk(2)]), removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "GPU", [hk(2)]: "GPU" });
      assert.deepEqual(matched(ix, t), { a: 2, b: 2 });
      // the last copy of block 2 goes: the match stops at block 1
      apply(ix, A, removed([hk(2)]));
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "GPU" });
      assert.deepEqual(matched(ix, t), { a: 1, b: 2 });
      apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), {});
      assert.deepEqual(matched(ix, t), { b: 2 });
      // one more removal is an unknown no-op; B's claims never moved
      apply(ix, A, removed([hk(1)]));
      assert.equal(ix.stats().unknownRemovals, 1);
      assert.deepEqual(claims(ix, "b"), { [hk(11)]: "GPU", [hk(12)]: "GPU" });
    });

    test("copies are counted per tier; a copy on another tier is a tier, not a copy", () => {
      const ix = mk({ copies: "count" });
      apply(ix, A, stored([hk(1)], null, toks([1])));
      apply(ix, A, stored([hk(1)], null, [], { medium: "CPU" }));
      apply(ix, A, stored([hk(1)], null, [], { medium: "CPU" }));
      assert.equal(ix.stats().duplicateStores, 1);
      apply(ix, A, removed([hk(1)], "CPU"));
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "GPU,CPU" });
      apply(ix, A, removed([hk(1)], null));
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "CPU" });
      assert.deepEqual(one(ix, toks([1]), "a")?.tiers, { GPU: 0, CPU: 1, STORAGE: 0 });
      apply(ix, A, removed([hk(1)], "CPU"));
      assert.deepEqual(claims(ix, "a"), {});
    });

    test("copies: AllBlocksCleared and dropStream reset the count", () => {
      const ix = mk({ copies: "count" });
      for (let i = 0; i < 3; i++) apply(ix, A, stored([hk(1)], null, toks([1])));
      apply(ix, A, cleared());
      apply(ix, A, stored([hk(1)], null, toks([1])));
      apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), {}, "one copy after the clear: one removal drops it");
      for (let i = 0; i < 3; i++) apply(ix, A, stored([hk(1)], null, toks([1])));
      ix.dropStream("a");
      apply(ix, A, stored([hk(1)], null, toks([1])));
      apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), {}, "one copy after the drop: one removal drops it");
      assert.equal(ix.stats().entries, 0);
    });

    test('copies saturate at 1 + MAX_EXTRA_COPIES; copies "set" drops on the first removal', () => {
      const ix = mk({ copies: "count" });
      for (let i = 0; i < MAX_EXTRA_COPIES + 4; i++) apply(ix, A, stored([hk(1)], null, toks([1])));
      for (let i = 0; i < MAX_EXTRA_COPIES; i++) apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), { [hk(1)]: "GPU" });
      apply(ix, A, removed([hk(1)]));
      assert.deepEqual(claims(ix, "a"), {});
      const set = mk({ copies: "set" });
      apply(set, A, stored([hk(1)], null, toks([1])), stored([hk(1)], null, toks([1])));
      assert.equal(set.stats().duplicateStores, 0);
      apply(set, A, removed([hk(1)]));
      assert.deepEqual(claims(set, "a"), {});
    });

    test("AllBlocksCleared clears only that stream", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, B, stored([hk(3), hk(4)], null, toks([1, 2])));
      apply(ix, A, cleared());
      assert.deepEqual(claims(ix, "a"), {});
      assert.deepEqual(matched(ix, toks([1, 2])), { b: 2 });
      assert.equal(ix.stats().entries, 2);
      assert.equal(ix.stats().streams, 2);
      // the stream keeps working after a clear
      apply(ix, A, stored([hk(1)], null, toks([1])));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 1, b: 2 });
    });

    test("dropStream forgets one stream; later parents from before the drop are unknown", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, B, stored([hk(3)], null, toks([1])));
      ix.dropStream("a");
      ix.dropStream("nope");
      assert.deepEqual(ix.streamBlocks("a"), []);
      assert.equal(ix.streamEntryCount?.("a"), 0);
      assert.deepEqual(ix.stats().streams, 1);
      assert.deepEqual(matched(ix, toks([1, 2])), { b: 1 });
      apply(ix, A, stored([hk(5)], hk(2), toks([3])));
      assert.deepEqual(matched(ix, toks([1, 2, 3])), { b: 1 });
      assert.equal(ix.streamEntryCount?.("a"), 1);
    });

    test("data-parallel ranks of one pod are separate streams", () => {
      const ix = mk();
      const r0 = stream("p#0", "m", "p", 0);
      const r1 = stream("p#1", "m", "p", 1);
      apply(ix, r0, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, r1, stored([hk(1)], null, toks([1])));
      const ms = ix.match(NS, toks([1, 2]));
      assert.deepEqual(
        ms.map((m) => [m.streamId, m.pod, m.rank, m.matchedBlocks]),
        [
          ["p#0", "p", 0, 2],
          ["p#1", "p", 1, 1],
        ],
      );
      apply(ix, r1, removed([hk(1)]));
      assert.deepEqual(matched(ix, toks([1, 2])), { "p#0": 2 });
    });

    test("namespaces: model, LoRA name, LoRA id fallback, block size", () => {
      const ix = mk();
      const M2 = stream("c", "m2");
      apply(ix, A, stored([hk(1)], null, toks([1])));
      apply(ix, A, stored([hk(2)], null, toks([1]), { loraName: "sql", loraId: 3 }));
      apply(ix, A, stored([hk(3)], null, toks([1]), { loraId: 7 }));
      apply(ix, B, stored([hk(4), hk(5)], null, toks([1], 8).concat(), { blockSize: 8 }));
      apply(ix, M2, stored([hk(6)], null, toks([1])));
      assert.deepEqual(matched(ix, toks([1])), { a: 1 });
      assert.deepEqual(matched(ix, toks([1]), { model: "m", lora: "sql", blockSize: 4 }), { a: 1 });
      assert.deepEqual(matched(ix, toks([1]), { model: "m", lora: "7", blockSize: 4 }), { a: 1 });
      assert.deepEqual(matched(ix, toks([1]), { model: "m", lora: "3", blockSize: 4 }), {});
      assert.deepEqual(matched(ix, toks([1]), { model: "m2", lora: null, blockSize: 4 }), { c: 1 });
      assert.deepEqual(matched(ix, toks([1], 8), { model: "m", lora: null, blockSize: 8 }), { b: 1 });
      assert.deepEqual(matched(ix, toks([1], 8), { model: "m", lora: null, blockSize: 0 }), {});
      // a LoRA block chained on a base-model parent never matches in either namespace
      apply(ix, A, stored([hk(9)], hk(1), toks([2]), { loraName: "sql" }));
      assert.deepEqual(matched(ix, toks([1, 2]), { model: "m", lora: "sql", blockSize: 4 }), { a: 1 });
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 1 });
    });

    test("partial tokens: only the leading full blocks are keyed, the rest kept for removal", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1), hk(2), hk(3)], null, toks([1, 2]).concat([300, 301])));
      assert.deepEqual(matched(ix, toks([1, 2, 3])), { a: 2 });
      assert.deepEqual(Object.keys(claims(ix, "a")).length, 3);
      // tokens for more blocks than hashes: extra tokens ignored
      apply(ix, B, stored([hk(1)], null, toks([1, 2])));
      assert.deepEqual(matched(ix, toks([1, 2])), { a: 2, b: 1 });
      apply(ix, A, removed([hk(3)]));
      assert.equal(ix.streamEntryCount?.("a"), 2);
    });

    test("extra keys make blocks unmatchable; other KV-cache groups are ignored", () => {
      const ix = mk();
      apply(ix, A, stored([hk(1)], null, toks([1]), { extraKeys: [["img", "abc"]] }));
      apply(ix, A, stored([hk(2)], null, toks([2]), { extraKeys: [null] }));
      apply(ix, A, stored([hk(3)], null, toks([3]), { groupIdx: 1 }));
      apply(ix, A, removed([hk(2)], "GPU", { groupIdx: 1 }));
      assert.deepEqual(matched(ix, toks([1])), {});
      assert.deepEqual(matched(ix, toks([2])), { a: 1 });
      assert.deepEqual(Object.keys(claims(ix, "a")).sort(), [hk(1), hk(2)].sort());
      assert.equal(ix.stats().ignoredEvents, 2);
    });

    test("hash forms: negative ints and byte strings round-trip through streamBlocks", () => {
      const ix = mk();
      const neg = `n${"\xff".repeat(7)}\xfe`;
      const b32 = `b${"\x01\x02\x03\x04".repeat(8)}`;
      const b16 = `b${"\xaa".repeat(16)}`;
      apply(ix, A, stored([neg, b32, b16], null, toks([1, 2, 3])));
      assert.deepEqual(claims(ix, "a"), { [neg]: "GPU", [b32]: "GPU", [b16]: "GPU" });
      assert.deepEqual(matched(ix, toks([1, 2, 3])), { a: 3 });
      apply(ix, A, removed([b32]));
      assert.deepEqual(matched(ix, toks([1, 2, 3])), { a: 1 });
      assert.deepEqual(Object.keys(claims(ix, "a")).sort(), [neg, b16].sort());
    });

    test("bad content never throws and is counted", () => {
      const ix = mk();
      const bad = [
        null,
        42,
        { type: "Nope" },
        { type: "BlockStored", blockHashes: "x" },
        {
          type: "BlockStored",
          blockHashes: [1, hk(1)],
          parentBlockHash: null,
          tokenIds: toks([1, 2]),
          blockSize: 4,
        },
        { type: "BlockStored", blockHashes: [hk(2)], parentBlockHash: null, tokenIds: null, blockSize: "4" },
        { type: "BlockRemoved", blockHashes: [null, hk(77)] },
        { type: "BlockRemoved" },
      ] as unknown as KvEvent[];
      ix.applyBatch(A, { ts: 0, events: bad, dpRank: null });
      ix.applyBatch(A, { ts: 0, events: null, dpRank: null } as unknown as never);
      const s = ix.stats();
      assert.ok((s.invalidEvents ?? 0) >= 3, JSON.stringify(s));
      assert.equal(s.ignoredEvents, 1);
      assert.ok((s.unknownRemovals ?? 0) >= 2);
      assert.deepEqual(Object.keys(claims(ix, "a")).sort(), [hk(1), hk(2)].sort());
      assert.deepEqual(matched(ix, toks([1, 2])), {});
      assert.deepEqual(ix.match(NS, []), []);
      assert.deepEqual(ix.match({ model: "zzz", lora: null, blockSize: 4 }, toks([1])), []);
    });

    test("per-stream cap evicts that stream's least-recently-touched entry", () => {
      const evicted: string[] = [];
      const ix = mk({ maxEntriesPerStream: 3, onEvict: (id, why) => evicted.push(`${id}:${why}`) });
      apply(ix, A, stored([hk(1), hk(2), hk(3)], null, toks([1, 2, 3])));
      apply(ix, B, stored([hk(9)], null, toks([1])));
      apply(ix, A, stored([hk(1)], null, [], { medium: "CPU" })); // touch 1: LRU is now 2
      apply(ix, A, stored([hk(4)], hk(3), toks([4])));
      assert.deepEqual(Object.keys(claims(ix, "a")).sort(), [hk(1), hk(3), hk(4)].sort());
      assert.deepEqual(evicted, ["a:stream"]);
      assert.equal(ix.stats().evictionsStream, 1);
      assert.equal(ix.stats().evictions, 1);
      assert.deepEqual(matched(ix, toks([1, 2, 3, 4])), { a: 1, b: 1 });
      assert.equal(ix.streamEntryCount?.("b"), 1);
    });

    test("global cap evicts the least-recently-touched entry across streams", () => {
      const evicted: string[] = [];
      const ix = mk({ maxEntries: 4, onEvict: (id, why) => evicted.push(`${id}:${why}`) });
      apply(ix, A, stored([hk(1), hk(2)], null, toks([1, 2])));
      apply(ix, B, stored([hk(3), hk(4)], null, toks([1, 2])));
      apply(ix, A, stored([hk(1)], null, toks([1]))); // touch a/1: global LRU = a/2
      apply(ix, B, stored([hk(5)], hk(4), toks([3])));
      assert.deepEqual(Object.keys(claims(ix, "a")), [hk(1)]);
      apply(ix, B, stored([hk(6)], hk(5), toks([4]))); // LRU now b/3
      assert.deepEqual(Object.keys(claims(ix, "b")).sort(), [hk(4), hk(5), hk(6)].sort());
      assert.deepEqual(evicted, ["a:global", "b:global"]);
      const s = ix.stats();
      assert.equal(s.entries, 4);
      assert.equal(s.evictionsGlobal, 2);
      assert.deepEqual(matched(ix, toks([1, 2, 3, 4])), { a: 1 });
    });

    test("a block claimed by many streams: claims grow, shrink and keep per-stream tiers", () => {
      const ix = mk();
      const ss = Array.from({ length: 70 }, (_, i) => stream(`s${i}`));
      for (const [i, s] of ss.entries())
        apply(ix, s, stored([hk(1000 + i), hk(2000 + i)], null, toks([1, 2])));
      for (const [i, s] of ss.entries())
        if (i % 3 === 0) apply(ix, s, stored([hk(1000 + i)], null, [], { medium: "CPU" }));
      for (const [i, s] of ss.entries()) if (i % 2 === 1) apply(ix, s, removed([hk(2000 + i)]));
      let ms = ix.match(NS, toks([1, 2]));
      assert.equal(ms.length, 70);
      for (const m of ms) {
        const i = Number(m.streamId.slice(1));
        assert.equal(m.matchedBlocks, i % 2 === 1 ? 1 : 2, m.streamId);
        assert.equal(m.tiers.CPU, i % 3 === 0 ? 1 : 0, m.streamId);
        assert.equal(m.tiers.GPU, m.matchedBlocks, m.streamId);
      }
      for (const [i, s] of ss.entries()) if (i > 0) apply(ix, s, cleared());
      ms = ix.match(NS, toks([1, 2]));
      assert.deepEqual(
        ms.map((m) => [m.streamId, m.matchedBlocks, m.tiers.CPU]),
        [["s0", 2, 1]],
      );
      assert.equal(ix.stats().blocks, 2);
    });

    test("growth: many entries stored and removed keep the tables consistent", () => {
      const ix = mk({ maxEntries: 50_000 });
      const n = 20_000;
      for (let i = 0; i < n; i += 10) {
        const hs = Array.from({ length: 10 }, (_, j) => hk(i + j + 1));
        const ids = Array.from({ length: 10 }, (_, j) => i + j);
        apply(ix, i % 20 === 0 ? A : B, stored(hs, null, toks(ids)));
      }
      assert.equal(ix.stats().entries, n);
      assert.equal(ix.stats().blocks, n);
      assert.deepEqual(matched(ix, toks([19990, 19991, 19992])), { b: 3 });
      for (let i = 0; i < n; i += 20) apply(ix, A, removed([hk(i + 1), hk(i + 2)]));
      assert.equal(ix.stats().entries, n - n / 10);
      assert.deepEqual(matched(ix, toks([0, 1, 2])), {});
      assert.deepEqual(matched(ix, toks([2, 3, 4])), {});
      ix.dropStream("a");
      ix.applyBatch(B, batch(cleared()));
      const s = ix.stats();
      assert.equal(s.entries, 0);
      assert.equal(s.blocks, 0);
      apply(ix, A, stored([hk(1)], null, toks([7])));
      assert.deepEqual(matched(ix, toks([7])), { a: 1 });
    });
  });
}

// pageBits 16 (one page, grown by copying), 7 (first page grown, then 128-record pages), 2 (4-record
// pages); table rebuilds of every shard at once (the default below 512k records) or per shard
// (wholeRebuildBelow 0: what a large index does)
for (const [pageBits, wholeRebuildBelow] of [
  [16, undefined],
  [7, 0],
  [2, undefined],
  [16, 0],
] as const) {
  test(`churn: 60k stores/removals over 8 streams (tombstones, table rebuilds ${wholeRebuildBelow === 0 ? "per shard" : "whole"}, vector classes, pages of 2^${pageBits}) agree with the reference`, () => {
    const fast = createIndex({
      backend: "sync",
      initialCapacity: 16,
      pageBits,
      wholeRebuildBelow,
      maxEntries: 3000,
      maxEntriesPerStream: 900,
    });
    const ref = createIndex({ backend: "reference", maxEntries: 3000, maxEntriesPerStream: 900 });
    let x = 7;
    const rnd = (n: number) => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x >>> 8) % n;
    };
    const ss = Array.from({ length: 8 }, (_, i) => stream(`s${i}`));
    let nonEmpty = 0;
    for (let k = 0; k < 6000; k++) {
      const s = ss[rnd(8)];
      const si = Number(s.streamId.slice(1));
      const chain = rnd(300);
      const len = 1 + rnd(10);
      const base = 1_000_000 * si + chain * 100;
      const ids = Array.from({ length: len }, (_, j) => (chain % 40) * 100 + j);
      const evs =
        rnd(3) === 0
          ? [
              removed(
                Array.from({ length: len }, (_, j) => hk(base + j)),
                rnd(4) === 0 ? "CPU" : "GPU",
              ),
            ]
          : rnd(5) === 0
            ? [stored([hk(base + rnd(len))], null, [], { medium: "CPU" })]
            : [
                stored(
                  Array.from({ length: len }, (_, j) => hk(base + j)),
                  null,
                  toks(ids),
                ),
              ];
      fast.applyBatch(s, batch(...evs));
      ref.applyBatch(s, batch(...evs));
      if (k % 1000 === 999) {
        for (const t of ss) {
          const a = fast
            .streamBlocks(t.streamId)
            .map((c) => `${c.hash}${c.tiers}`)
            .sort();
          const b = ref
            .streamBlocks(t.streamId)
            .map((c) => `${c.hash}${c.tiers}`)
            .sort();
          assert.deepEqual(a, b);
        }
        for (let c = 0; c < 40; c++) {
          const q = toks(Array.from({ length: 10 }, (_, j) => c * 100 + j));
          const m = fast.match(NS, q);
          assert.deepEqual(m, ref.match(NS, q));
          nonEmpty += m.length;
        }
      }
    }
    const fs = fast.stats();
    const rs = ref.stats();
    assert.deepEqual(
      [fs.entries, fs.evictions, fs.unknownRemovals],
      [rs.entries, rs.evictions, rs.unknownRemovals],
    );
    assert.ok((fs.evictions ?? 0) > 0);
    assert.ok(nonEmpty > 100, `matches seen ${nonEmpty}`);
  });
}

test("inserts right after an eviction (the missed lookup's slot may be stale) stay findable", () => {
  // a full index: every new hash first evicts the least recently stored one, whose slot can be
  // in the new hash's probe run; the new entry / block must still be found afterwards
  const cap = 40;
  const ix = createIndex({ backend: "sync", initialCapacity: 16, maxEntries: cap });
  const s = stream("a");
  const n = 4000;
  for (let k = 0; k < n; k++) {
    ix.applyBatch(s, batch(stored([hk(k)], null, toks([k]))));
    if (k % 97 === 96 || k === n - 1) {
      const held = ix
        .streamBlocks("a")
        .map((c) => c.hash)
        .sort();
      const want = Array.from({ length: Math.min(cap, k + 1) }, (_, j) => hk(k - j)).sort();
      assert.deepEqual(held, want);
      for (let j = 0; j < Math.min(cap, k + 1); j++) {
        const m = ix.match(NS, toks([k - j]));
        assert.equal(m.length, 1, `block ${k - j} matches after ${k}`);
      }
    }
  }
  // every held hash is found by its removal: no unknown removals, nothing left
  ix.applyBatch(s, batch(removed(Array.from({ length: cap }, (_, j) => hk(n - 1 - j)))));
  const st = ix.stats();
  assert.equal(st.unknownRemovals, 0);
  assert.equal(st.entries, 0);
  assert.equal(st.blocks, 0);
  assert.equal(st.evictions, n - cap);
});

test("match through adjacent records: freed and reused neighbours are never taken for the next block", () => {
  // chains stored in one event sit in adjacent block records; match tries the neighbours of the
  // previous block first. Freeing records and reusing them (descending, from the free list) for
  // other chains must not let a stale or foreign neighbour stand in for the next block
  const ix = createIndex({ backend: "sync" });
  const a = stream("a");
  const b = stream("b");
  const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);
  const chain = (s: typeof a, hashFrom: number, blockIds: number[]) =>
    ix.applyBatch(
      s,
      batch(
        stored(
          blockIds.map((_, i) => hk(hashFrom + i)),
          null,
          toks(blockIds),
        ),
      ),
    );
  chain(a, 0, ids(1, 8)); // blocks 1..8 in records 0..7
  assert.deepEqual(matched(ix, toks(ids(1, 8))), { a: 8 });
  // a drops the chain's second half: records 4..7 freed (7 first on the free list after 4)
  ix.applyBatch(a, batch(removed(ids(4, 4).map(hk))));
  assert.deepEqual(matched(ix, toks(ids(1, 8))), { a: 4 });
  // b stores another chain: it takes records 7, 6, 5, 4 (descending), then new ones
  chain(b, 100, ids(50, 6));
  assert.deepEqual(matched(ix, toks(ids(50, 6))), { b: 6 });
  assert.deepEqual(matched(ix, toks(ids(1, 8))), { a: 4 });
  // the same content as a's lost half, re-stored by b under its own chain: a still stops at 4
  chain(b, 200, ids(1, 8));
  assert.deepEqual(matched(ix, toks(ids(1, 8))), { b: 8, a: 4 });
  // a chain whose middle block goes: the match stops there even though its neighbours are live
  chain(a, 300, ids(70, 6));
  ix.applyBatch(a, batch(removed([hk(302)])));
  assert.deepEqual(matched(ix, toks(ids(70, 6))), { a: 2 });
  chain(b, 400, ids(90, 3)); // reuses the freed middle record
  assert.deepEqual(matched(ix, toks(ids(70, 6))), { a: 2 });
  assert.deepEqual(matched(ix, toks(ids(90, 3))), { b: 3 });
});

test("paged records: growth adds pages without moving records; stats count every page", () => {
  // 2^5-record pages: the first page grows 16 -> 32 by copying, then each growth adds a page
  const ix = createIndex({ backend: "sync", initialCapacity: 16, pageBits: 5 });
  const s = stream("a");
  const n = 1000;
  for (let k = 0; k < n; k++) ix.applyBatch(s, batch(stored([hk(k)], k === 0 ? null : hk(k - 1), toks([k]))));
  const prompt = toks(Array.from({ length: n }, (_, k) => k));
  assert.deepEqual(matched(ix, prompt), { a: n });
  const st = ix.stats();
  assert.equal(st.entries, n);
  // 32 pages of entries (32 B each record) and of blocks (16 B): at least their bytes
  assert.ok(st.approxBytes >= 32 * 32 * 48, `approxBytes ${st.approxBytes}`);
  assert.throws(() => createIndex({ backend: "sync", pageBits: 1 }), /pageBits/);
});

test("a block held by 20 streams (bitmap vector) where one stream holds it under two engine hashes: removals keep that stream's other claim", () => {
  const fast = createIndex({ backend: "sync" });
  const ref = createIndex({ backend: "reference" });
  const ss = Array.from({ length: 20 }, (_, i) => stream(`s${String(i).padStart(2, "0")}`));
  const both = (s: ReturnType<typeof stream>, ...evs: KvEvent[]) => {
    fast.applyBatch(s, batch(...evs));
    ref.applyBatch(s, batch(...evs));
  };
  const q = toks([1, 2]);
  for (const [i, s] of ss.entries()) both(s, stored([hk(100 + i), hk(200 + i)], null, q));
  // s00 also holds the same token blocks under other engine hashes, on CPU
  both(ss[0], stored([hk(900), hk(901)], null, q, { medium: "CPU" }));
  assert.deepEqual(fast.match(NS, q), ref.match(NS, q));
  // its GPU copies go: it still holds both blocks on CPU
  both(ss[0], removed([hk(100), hk(200)]));
  // another stream's removal takes only that stream
  both(ss[5], removed([hk(205)]));
  const m = fast.match(NS, q);
  assert.deepEqual(m, ref.match(NS, q));
  const s00 = m.find((x) => x.streamId === "s00");
  assert.deepEqual(s00?.tiers, { GPU: 0, CPU: 2, STORAGE: 0 });
  assert.equal(m.find((x) => x.streamId === "s05")?.matchedBlocks, 1);
  for (let i = 1; i < 20; i++) both(ss[i], removed([hk(100 + i), hk(200 + i)]));
  assert.deepEqual(fast.match(NS, q), ref.match(NS, q));
  assert.deepEqual(matched(fast, q), { s00: 2 });
});

test("global cap over 40 streams (re-stores, removals, clears, streams dropped and re-added): the same entries evicted as the reference", () => {
  // the fast index finds the globally least recently touched entry as the oldest stream LRU tail
  // (a heap of streams by tail stamp, re-keyed lazily); the reference keeps one global LRU order
  const cap = 300;
  const fast = createIndex({ backend: "sync", initialCapacity: 16, maxEntries: cap });
  const ref = createIndex({ backend: "reference", maxEntries: cap });
  const r = seededRandom(7);
  const ss = Array.from({ length: 40 }, (_, i) => stream(`s${i}`));
  for (let k = 0; k < 30_000; k++) {
    const s = ss[Math.floor(r() * r() * ss.length)]; // skewed: some streams much busier
    const x = r();
    const id = Math.floor(r() * 400);
    if (x < 0.002) {
      fast.dropStream(s.streamId);
      ref.dropStream(s.streamId);
      continue;
    }
    const ev: KvEvent =
      x < 0.004 ? cleared() : x < 0.25 ? removed([hk(id)]) : stored([hk(id)], null, toks([id]));
    fast.applyBatch(s, batch(ev));
    ref.applyBatch(s, batch(ev));
    if (k % 1000 === 999) {
      for (const st of ss) {
        const held = (ix: typeof fast) =>
          ix
            .streamBlocks(st.streamId)
            .map((c) => c.hash)
            .sort();
        assert.deepEqual(held(fast), held(ref), `${st.streamId} after ${k + 1} events`);
      }
      assert.equal(fast.stats().evictionsGlobal, ref.stats().evictionsGlobal);
    }
  }
  const evicted = fast.stats().evictionsGlobal ?? 0;
  assert.ok(evicted > 1000, `global evictions ${evicted}`);
});
